// Package cli implements the warren command line: one kong command struct
// per subcommand, each with a Run method. Main is the whole program minus
// os.Exit and signal handling, so tests drive it with buffers.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/alecthomas/kong"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Globals are flags every subcommand accepts.
type Globals struct {
	LogLevel  string `name:"log-level" env:"WARREN_LOG_LEVEL" default:"warn" enum:"debug,info,warn,error" help:"Log level (${enum})."`
	LogFormat string `name:"log-format" env:"WARREN_LOG_FORMAT" default:"text" enum:"text,json" help:"Log format (${enum})."`

	ctx    context.Context
	in     io.Reader // standard input, for payloads given as -
	out    io.Writer
	errOut io.Writer
	// brokerOnCommandLine: --broker was given as a flag, not through
	// WARREN_BROKER or its default; brokerWarning warns about a password
	// in it once.
	brokerOnCommandLine bool
	brokerWarning       sync.Once
	// tracer is the tracer provider of the OTEL_* variables (nil: off),
	// made by the first dial (tracing.go).
	tracerOnce sync.Once
	tracer     *sdktrace.TracerProvider
	tracerErr  error
}

// Context is the command's context: cancelled on SIGINT/SIGTERM.
func (g *Globals) Context() context.Context { return g.ctx }

// Out is where a command writes its results.
func (g *Globals) Out() io.Writer { return g.out }

// ErrOut is where a command writes diagnostics.
func (g *Globals) ErrOut() io.Writer { return g.errOut }

// Logger returns the logger configured by --log-level and --log-format,
// writing to ErrOut.
func (g *Globals) Logger() *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(g.LogLevel))
	o := &slog.HandlerOptions{Level: lvl}
	if g.LogFormat == "json" {
		// slog's JSON leaves DEL, C1 controls and bidi characters of
		// remote values (an identity in a refused heartbeat) raw; its
		// text handler quotes them.
		return slog.New(slog.NewJSONHandler(jsonLines{g.errOut}, o))
	}
	return slog.New(slog.NewTextHandler(g.errOut, o))
}

// serialized returns w made safe for the goroutines of a command, which
// log through handlers of their own (Globals.Logger) to the same writer.
// An *os.File is already, and stays one (terminal checks look for it).
func serialized(w io.Writer) io.Writer {
	if _, ok := w.(*os.File); ok {
		return w
	}
	return &syncWriter{w: w}
}

// syncWriter serializes the writes to w: a log record is one write.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// root is the command tree. Each subcommand lives in its own file.
type root struct {
	Globals
	commands
	Version kong.VersionFlag `name:"version" help:"Print Warren's version, commit and commit time, and exit."`
}

// usageError marks errors that are the user's: exit code 2.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// Main runs the warren command line with args (without the program name)
// and returns the process exit code: 0 ok, 1 failure, 2 usage.
func Main(ctx context.Context, args []string, out, errOut io.Writer) int {
	var r root
	secrets := secretValues(args, os.Environ())
	out, errOut = serialized(out), serialized(errOut)
	errOut = newScrubber(errOut, secrets)
	r.ctx, r.in, r.out, r.errOut = ctx, os.Stdin, out, errOut
	exited := false
	code := 0
	parser, err := kong.New(&r,
		kong.Name("warren"),
		kong.Description("Warren: a self-assembling fabric of Go service daemons over RabbitMQ."),
		kong.UsageOnError(),
		kong.Writers(out, errOut),
		kong.Exit(func(c int) { exited, code = true, c }),
		kong.Bind(&r.Globals),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
		kong.Vars{"version": versionLine()},
	)
	if err != nil {
		fmt.Fprintf(errOut, "warren: %v\n", err)
		return 1
	}
	for i, a := range args {
		if !utf8.ValidString(a) {
			// kong would turn the bad bytes into U+FFFD.
			fmt.Fprintf(errOut, "warren: argument %d %s is not valid UTF-8\n", i+1, escape(a))
			return 2
		}
	}
	kctx, err := parser.Parse(negativePayloads(parser.Model, args))
	if exited {
		return code
	}
	if err != nil {
		fmt.Fprintf(errOut, "warren: %s\n", escapeLines(secretParseError(err.Error(), secrets)))
		return 2
	}
	for _, p := range kctx.Path {
		if p.Flag != nil && p.Flag.Name == "broker" {
			r.brokerOnCommandLine = true
		}
	}
	defer r.shutdownTracing()
	if err := kctx.Run(&r.Globals); err != nil {
		msg := strings.TrimPrefix(err.Error(), "warren: ")
		// Errors may quote remote strings (an agent's error message, a
		// dead letter's id): escaped, as all remote data printed.
		fmt.Fprintf(errOut, "warren: %s\n", escapeLines(msg))
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	if exited {
		return code
	}
	return 0
}
