package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/alecthomas/kong"

	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/wire"
)

// What request and push promise (docs/operations.md, "Exit status"): exit
// status 0 from request means a result was printed; from push, that the
// broker confirmed the push. Every other outcome, a --timeout or a SIGINT
// included, exits non-zero with one line that says how far the call got,
// so whether anything was sent.

// stage is how far a request or push got.
type stage int

const (
	stageConnect stage = iota // dialling the broker
	stageStart                // starting the mapper: its queues, its announce
	stageCall                 // finding an agent, sending, waiting for the reply
)

// callState follows one request or push, for its error line.
type callState struct {
	stage stage
	// blocked is the broker's block on publishing (a *amqp.BlockedError)
	// when the call failed, nil if none.
	blocked error
	sends   sendWatch // what the mapper published
}

// sendWatch is the transport a request's or push's mapper uses: it counts
// the requests and pushes handed to the broker, and those it confirmed
// (the mapper publishes them all mandatory, hence confirmed).
type sendWatch struct {
	transport.Transport
	sent, confirmed atomic.Int64
}

func (w *sendWatch) Publish(ctx context.Context, exchange, key string, msg transport.Message, opts transport.PublishOptions) error {
	work := msg.Type == wire.TypeRequest || msg.Type == wire.TypePush
	if work {
		w.sent.Add(1)
	}
	err := w.Transport.Publish(ctx, exchange, key, msg, opts)
	if work && err == nil && (opts.Confirm || opts.Mandatory) {
		w.confirmed.Add(1)
	}
	return err
}

// explain turns err, the failure of a request or push ("request" or
// "push") bounded by ctx, into the line that says why it stopped and what
// became of the message. timeoutFlag names the flag whose time ran out.
func (st *callState) explain(ctx context.Context, what, timeoutFlag string, timeout time.Duration, err error) error {
	if err == nil {
		return nil
	}
	var why string
	if dl, ok := ctx.Deadline(); ok && ctx.Err() == nil && !time.Now().Before(dl) {
		// The deadline passed, and made a socket deadline fire, before
		// ctx's own timer ran.
		why = fmt.Sprintf("%s %v passed", timeoutFlag, timeout)
	} else if ctx.Err() != nil {
		cause := context.Cause(ctx)
		switch {
		case errors.Is(cause, context.DeadlineExceeded):
			why = fmt.Sprintf("%s %v passed", timeoutFlag, timeout)
		case cause == context.Canceled:
			why = "interrupted"
		default:
			// signal.NotifyContext's: "interrupt signal received".
			why = "interrupted (" + cause.Error() + ")"
		}
	}
	var where, fate string
	sent, confirmed := st.sends.sent.Load(), st.sends.confirmed.Load()
	switch {
	case st.stage == stageConnect:
		where, fate = "while connecting to the broker", "nothing was sent"
	case st.stage == stageStart:
		where, fate = "while starting the mapper", "nothing was sent"
	case sent == 0 && errors.Is(err, mapper.ErrNoAgent):
		where, fate = "before an agent serving the path was heard from (a new mapper hears from the agents within about 100ms of starting)", "nothing was sent"
	case sent == 0:
		where, fate = "before sending", "nothing was sent"
	case confirmed < sent:
		where, fate = "while sending", "the broker did not confirm it: it may or may not have been delivered"
	case strings.HasPrefix(what, "push"):
		where, fate = "after sending", "the broker confirmed the push"
	default:
		where, fate = "while waiting for the reply", "the broker took the request: it may have run"
	}
	blocked := st.blocked
	var amqpBlocked *amqp.BlockedError
	if errors.As(err, &amqpBlocked) {
		blocked = nil // err says it already
	}
	switch {
	case why != "" && blocked != nil:
		return fmt.Errorf("%s: %s %s; %w; %s: %w", what, why, where, blocked, fate, err)
	case why != "":
		return fmt.Errorf("%s: %s %s; %s: %w", what, why, where, fate, err)
	case blocked != nil:
		return fmt.Errorf("%w; %s: %w", blocked, fate, err)
	}
	return err
}

// maxDeadline bounds --timeout of request and --ttl of push: they travel as
// the message's expiration, which RabbitMQ refuses above 2^32-1 ms.
const maxDeadline = amqp.MaxExpiration

// checkDuration refuses a flag's duration that is not positive or, when
// bounded, over maxDeadline.
func checkDuration(flag string, d time.Duration, bounded bool) error {
	if d <= 0 {
		return usageError{fmt.Errorf("%s %v: want a positive duration", flag, d)}
	}
	if bounded && d > maxDeadline {
		return usageError{fmt.Errorf("%s %v: at most %v (RabbitMQ refuses a message expiration over 2^32-1 ms, about 49 days)", flag, d, maxDeadline)}
	}
	return nil
}

// readPayload returns the payload argument's JSON: the argument itself,
// the content of FILE for @FILE, standard input for -. A payload read from
// a file or stdin is bounded by the mapper's message size limit.
func readPayload(g *Globals, arg string) (json.RawMessage, error) {
	var (
		r    io.Reader
		from string
	)
	switch {
	case arg == "-":
		r, from = g.in, "standard input"
	case strings.HasPrefix(arg, "@"):
		f, err := os.Open(arg[1:])
		if err != nil {
			return nil, usageError{fmt.Errorf("payload %s: %w", arg, err)}
		}
		defer f.Close()
		r, from = f, arg[1:]
	default:
		if !json.Valid([]byte(arg)) {
			return nil, usageError{fmt.Errorf("payload %q is not JSON (quote strings: '\"hi\"'; @FILE reads a file, - standard input)", arg)}
		}
		return json.RawMessage(arg), nil
	}
	if r == nil {
		return nil, usageError{errors.New("payload -: no standard input")}
	}
	limit := int64(wire.DefaultMaxMessageSize)
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, usageError{fmt.Errorf("payload from %s: %w", from, err)}
	}
	if int64(len(b)) > limit {
		return nil, usageError{fmt.Errorf("payload from %s: over the limit of %d bytes", from, limit)}
	}
	b = bytes.TrimSpace(b)
	if !json.Valid(b) {
		return nil, usageError{fmt.Errorf("payload from %s (%d bytes) is not JSON", from, len(b))}
	}
	return json.RawMessage(b), nil
}

// negativeNumber is a JSON number with a minus sign: a payload, never a
// flag (no warren flag is a digit).
var negativeNumber = regexp.MustCompile(`^-(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$`)

// negativePayloads lets request and push take a negative number as their
// payload without "--" (kong reads "-5" as the short flag -5): such an
// argument, unless it is the value of the flag before it, moves behind a
// "--" at the end. The payload is the last positional argument, so the
// order of the arguments is kept.
func negativePayloads(app *kong.Application, args []string) []string {
	if slices.Contains(args, "--") {
		return args
	}
	// The command is the first argument that is neither a flag nor a
	// flag's value.
	cmd := -1
	for i, a := range args {
		if !strings.HasPrefix(a, "-") && !flagValue(app, nil, args[:i]) {
			cmd = i
			break
		}
	}
	if cmd < 0 || (args[cmd] != "request" && args[cmd] != "push") {
		return args
	}
	var node *kong.Node
	for _, n := range app.Children {
		if n.Name == args[cmd] {
			node = n
		}
	}
	var kept, moved []string
	kept = append(kept, args[:cmd+1]...)
	for i := cmd + 1; i < len(args); i++ {
		if negativeNumber.MatchString(args[i]) && !flagValue(app, node, args[:i]) {
			moved = append(moved, args[i])
			continue
		}
		kept = append(kept, args[i])
	}
	if len(moved) == 0 {
		return args
	}
	return append(append(kept, "--"), moved...)
}

// flagValue reports whether the argument after before is the value of the
// flag that ends before: a flag of node (or of the application when node
// is nil) that takes a value and was not given one with "=".
func flagValue(app *kong.Application, node *kong.Node, before []string) bool {
	if len(before) == 0 {
		return false
	}
	prev := before[len(before)-1]
	var long string
	var short rune
	switch {
	case strings.HasPrefix(prev, "--") && !strings.Contains(prev, "="):
		long = prev[2:]
	case len(prev) == 2 && prev[0] == '-' && prev[1] != '-':
		short = rune(prev[1])
	default:
		return false
	}
	if node == nil {
		node = app.Node
	}
	for _, group := range node.AllFlags(false) {
		for _, f := range group {
			if (long != "" && f.Name == long) || (short != 0 && f.Short == short) {
				return !f.IsBool() && !f.IsCounter()
			}
		}
	}
	return false
}
