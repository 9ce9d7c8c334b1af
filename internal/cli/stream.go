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
	var r io.Reader
	if arg == "-" {
		if g.in == nil {
			return usageError{errors.New("--stream -: no standard input")}
		}
		r = g.in
	} else {
		f, err := os.Open(arg)
		if err != nil {
			return usageError{fmt.Errorf("--stream: %w", err)}
		}
		defer f.Close()
		r = f
	}
	rep, err := m.Stream(ctx, path, payload, r, opts...)
	if err != nil {
		return err
	}
	return printJSON(g.Out(), rep.Body)
}
