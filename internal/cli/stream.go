package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/warrenrpc/warren/mapper"
)

// streamRequest sends the file named by arg (- for standard input) as a
// streamed request (mapper.Stream) with payload, and prints the result.
func streamRequest(ctx context.Context, g *Globals, m *mapper.Mapper, path string, payload json.RawMessage, arg string, opts []mapper.CallOption) error {
	r, closeIn, err := streamInput(g, arg)
	if err != nil {
		return err
	}
	defer closeIn()
	rep, err := m.Stream(ctx, path, payload, r, opts...)
	if err != nil {
		return err
	}
	return printJSON(g.Out(), rep.Body)
}

// streamPush sends the file named by arg (- for standard input) as a
// streamed push (mapper.PushStream) with payload.
func streamPush(ctx context.Context, g *Globals, m *mapper.Mapper, path string, payload json.RawMessage, arg string, opts []mapper.CallOption) error {
	r, closeIn, err := streamInput(g, arg)
	if err != nil {
		return err
	}
	defer closeIn()
	return m.PushStream(ctx, path, payload, r, opts...)
}

// streamInput opens the data of --stream arg: a file, or standard input
// for -.
func streamInput(g *Globals, arg string) (io.Reader, func(), error) {
	if arg == "-" {
		if g.in == nil {
			return nil, nil, usageError{errors.New("--stream -: no standard input")}
		}
		return g.in, func() {}, nil
	}
	f, err := os.Open(arg)
	if err != nil {
		return nil, nil, usageError{fmt.Errorf("--stream: %w", err)}
	}
	return f, func() { f.Close() }, nil
}

// writeResult writes the data of a streamed result to the file named by
// arg (- for standard output) and prints the result's JSON (to standard
// error when the data goes to standard output). A result that is not
// streamed is printed as usual, and the file is not written.
func writeResult(g *Globals, r *mapper.Reply, arg string) error {
	defer r.Close()
	if r.Stream == nil {
		return printJSON(g.Out(), r.Body)
	}
	if arg == "-" {
		if f, ok := g.Out().(*os.File); ok {
			if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
				// Remote bytes, raw, would drive the terminal.
				return usageError{errors.New("-o -: standard output is a terminal; write the streamed result to a file or a pipe")}
			}
		}
		if _, err := io.Copy(g.Out(), r.Stream); err != nil {
			return fmt.Errorf("write the result: %w", err)
		}
		return printJSON(g.ErrOut(), r.Body)
	}
	f, err := os.Create(arg)
	if err != nil {
		return usageError{fmt.Errorf("--output: %w", err)}
	}
	if _, err := io.Copy(f, r.Stream); err != nil {
		f.Close()
		return fmt.Errorf("--output %s: %w", arg, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("--output %s: %w", arg, err)
	}
	return printJSON(g.Out(), r.Body)
}
