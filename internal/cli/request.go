package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// callFlags are shared by request and push.
type callFlags struct {
	brokerFlags
	Path     string   `arg:"" name:"path" help:"Service path, /actor/method."`
	Payload  string   `arg:"" optional:"" name:"payload" default:"null" help:"JSON payload (default null); @FILE reads it from FILE, - from standard input. A negative number needs no --."`
	Selector string   `name:"selector" short:"s" default:"least_loaded" help:"least_loaded, all, random, round_robin or agent:IDENTITY."`
	Tags     []string `name:"tag" help:"Only agents carrying this tag (repeatable)."`

	Park       bool `name:"park" help:"When no live agent serves the path, park the message durably in the service's shared queue until an agent for it appears, within its deadline, instead of failing with no agent (mapper.Park)."`
	Persistent bool `name:"persistent" help:"Send a persistent message, confirmed by the broker, so that it survives a broker restart in a durable queue (agents run with --durable) (mapper.Persistent)."`
}

func (c *callFlags) options(g *Globals) ([]mapper.CallOption, json.RawMessage, error) {
	if err := wire.CheckPath(c.Path); err != nil {
		return nil, nil, usageError{err}
	}
	sel, err := mapper.ParseSelector(c.Selector)
	if err != nil {
		return nil, nil, usageError{err}
	}
	payload, err := readPayload(g, c.Payload)
	if err != nil {
		return nil, nil, err
	}
	opts := []mapper.CallOption{mapper.Select(sel), mapper.WithTags(c.Tags...)}
	if c.Park {
		opts = append(opts, mapper.Park())
	}
	if c.Persistent {
		opts = append(opts, mapper.Persistent())
	}
	return opts, payload, nil
}

// withMapper dials, runs a mapper for the duration of fn, and stops it. st,
// when not nil, follows how far it got.
func withMapper(ctx context.Context, g *Globals, b brokerFlags, name string, st *callState, fn func(*mapper.Mapper) error) error {
	if st == nil {
		st = &callState{}
	}
	tr, id, plain, err := b.dialAMQP(ctx, g, name)
	if err != nil {
		return err
	}
	defer tr.Close()
	st.stage = stageStart
	st.sends.Transport = tr
	err = runMapper(ctx, g, &st.sends, id, func(m *mapper.Mapper) error {
		st.stage = stageCall
		return fn(m)
	})
	if err != nil {
		// Before Close, which ends the block.
		st.blocked = plain.Blocked()
	}
	return err
}

// runMapper runs a mapper named id ("" generates one) for fn.
func runMapper(ctx context.Context, g *Globals, tr transport.Transport, id string, fn func(*mapper.Mapper) error) error {
	m, err := mapper.New(tr, mapper.Config{Identity: id}, mapper.WithLogger(g.Logger()))
	if err != nil {
		return err
	}
	mctx, stop := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- m.Run(mctx) }()
	select {
	case <-m.Ready():
	case err := <-runErr:
		stop()
		if err == nil {
			// Run returns nil when ctx ends: before Ready, fn never ran.
			err = fmt.Errorf("mapper: stopped before it was ready: %w", context.Cause(ctx))
		}
		return err
	}
	err = fn(m)
	stop()
	if rerr := <-runErr; err == nil {
		err = rerr
	}
	return err
}

type requestCmd struct {
	callFlags
	Timeout  time.Duration `name:"timeout" default:"10s" help:"Give up after this long. It travels with the request as its deadline: an agent does not start it later. At most 1193h."`
	Retry    bool          `name:"retry-on-connection-loss" help:"When the connection to the broker drops while waiting, send the request again once reconnected, until --timeout; the handler may then run twice (mapper.RetryOnConnectionLoss)."`
	Progress bool          `name:"progress" help:"Ask for the handler's progress and print it on stderr, a line each, before the result (a fraction or {\"done\":n,\"total\":m} as a bar) (mapper.OnProgress)."`
	Quiet    time.Duration `name:"progress-timeout" placeholder:"D" help:"Fail when the handler sent neither progress nor its result for D (mapper.ProgressTimeout): with a long --timeout, a job that keeps reporting runs on, one that went quiet is given up early. Progress never extends --timeout."`
	Stream   string        `name:"stream" placeholder:"FILE" help:"Send FILE (- for standard input), of any size, as the request's data, in chunks with flow control and a checksum; the payload goes with it (a name, say). The handler reads it whole from Request.Stream (mapper.Stream)."`
	Output   string        `name:"output" short:"o" placeholder:"FILE" help:"Take a streamed result (mapper.AcceptStream) and write its data to FILE (- for standard output, the result's JSON then going to standard error)."`
}

func (c *requestCmd) Help() string {
	return `Sends a request and prints the result as JSON. With --selector all the
output is an object keyed by agent identity; agents that failed or did not
answer in time appear with {"error": {"code": ..., "message": ...}}.

  warren request /simple/echo '"hi"' --selector all --timeout 2s

With --park a request that no live agent serves waits, durably, in the
service's shared queue for the first agent that serves it, until --timeout.
--persistent and --retry-on-connection-loss ride out broker failures; see
docs/reliability.md.

Exit status 0 means a result was printed. On a failure, --timeout or SIGINT
included, the exit status is 1 and one line says how far the request got
(nothing sent, or sent and maybe run); 2 is a usage error.`
}

func (c *requestCmd) Run(g *Globals) error {
	if err := checkDuration("--timeout", c.Timeout, true); err != nil {
		return err
	}
	opts, payload, err := c.options(g)
	if err != nil {
		return err
	}
	if c.Stream != "" && (c.Selector == "all" || c.Park || c.Retry || c.Stream == "-" && c.Payload == "-") {
		return usageError{errors.New("--stream goes to one agent, without --park or --retry-on-connection-loss, and not with a payload from standard input too")}
	}
	if c.Selector == "all" && (c.Park || c.Retry) {
		return usageError{errors.New("--park and --retry-on-connection-loss apply to a request to one agent, not to --selector all")}
	}
	if c.Retry {
		opts = append(opts, mapper.RetryOnConnectionLoss())
	}
	if c.Progress {
		opts = append(opts, mapper.OnProgress(func(p mapper.Progress) { printProgress(g.ErrOut(), p) }))
	}
	if c.Quiet != 0 {
		if err := checkDuration("--progress-timeout", c.Quiet, false); err != nil {
			return err
		}
		opts = append(opts, mapper.ProgressTimeout(c.Quiet))
	}
	if c.Output != "" {
		if c.Selector == "all" {
			return usageError{errors.New("--output takes the result of one agent, not of --selector all")}
		}
		opts = append(opts, mapper.AcceptStream())
	}
	ctx, cancel := context.WithTimeout(g.Context(), c.Timeout)
	defer cancel()
	var st callState
	err = withMapper(ctx, g, c.brokerFlags, "request", &st, func(m *mapper.Mapper) error {
		if c.Selector == "all" {
			rs, err := m.FanOut(ctx, c.Path, payload, opts...)
			if err != nil {
				return err
			}
			out := map[string]any{}
			for id, r := range rs {
				out[id] = replyJSON(r)
			}
			return printJSON(g.Out(), out)
		}
		if c.Stream != "" {
			return streamRequest(ctx, g, m, c.Path, payload, c.Stream, opts)
		}
		r, err := m.Request(ctx, c.Path, payload, opts...)
		if err != nil {
			return err
		}
		if c.Output != "" {
			return writeResult(g, r, c.Output)
		}
		return printJSON(g.Out(), r.Body)
	})
	return st.explain(ctx, "request "+c.Path, "--timeout", c.Timeout, err)
}

// replyJSON is how a reply is printed: the result, or {"error": ...}.
func replyJSON(r *mapper.Reply) any {
	if r.Err == nil {
		return r.Body
	}
	var re *wire.RemoteError
	if errors.As(r.Err, &re) {
		return map[string]any{"error": map[string]string{"code": re.Code, "message": re.Message}}
	}
	return map[string]any{"error": map[string]string{"code": mapper.ErrorCode(r.Err), "message": r.Err.Error()}}
}

func printJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", escapeJSON(b))
	return err
}

type pushCmd struct {
	callFlags
	Timeout time.Duration `name:"timeout" default:"10s" help:"Give up sending after this long: connecting, finding an agent, the broker's confirm. It does not travel with the push (--ttl does)."`
	TTL     time.Duration `name:"ttl" default:"10s" help:"The push's time to live, from its sending: an agent does not start it later, and a queue dead-letters it (reason expired) when nobody took it in time (mapper.TTL). At most 1193h."`
	Stream  string        `name:"stream" placeholder:"FILE" help:"Send FILE (- for standard input), of any size, as the push's data, in chunks with flow control and a checksum; the payload goes with it (a name, say). Returns once the agent holds the whole data, checked (mapper.PushStream); --timeout then bounds the whole sending."`
}

func (c *pushCmd) Help() string {
	return `Sends a push (no result) and exits once the broker has confirmed it.
--timeout bounds the sending; --ttl is the push's own deadline:

  warren push /simple/sleep 1 --park --persistent --ttl 1h

parks the push, persistent, in the service's shared queue when no agent
serves it, where it waits up to an hour for one. With --stream FILE (- for
standard input) the data goes to one agent in chunks, and warren push
exits once that agent holds it whole and checked:

  warren push /simple/digest '"backup.tar"' --stream backup.tar --timeout 10m

Exit status 0 means the broker confirmed the push. On a failure, --timeout
or SIGINT included, the exit status is 1 and one line says how far the push
got (nothing sent, or sent without a confirm); 2 is a usage error.`
}

func (c *pushCmd) Run(g *Globals) error {
	if err := checkDuration("--timeout", c.Timeout, false); err != nil {
		return err
	}
	if err := checkDuration("--ttl", c.TTL, true); err != nil {
		return err
	}
	opts, payload, err := c.options(g)
	if err != nil {
		return err
	}
	if c.Stream != "" && (c.Selector == "all" || c.Park || c.Stream == "-" && c.Payload == "-") {
		return usageError{errors.New("--stream goes to one agent, without --park, and not with a payload from standard input too")}
	}
	opts = append(opts, mapper.TTL(c.TTL))
	// A deadline on the context would travel with the push: a timer bounds
	// the sending instead.
	ctx, cancel := context.WithCancelCause(g.Context())
	defer cancel(nil)
	t := time.AfterFunc(c.Timeout, func() { cancel(context.DeadlineExceeded) })
	defer t.Stop()
	var st callState
	err = withMapper(ctx, g, c.brokerFlags, "push", &st, func(m *mapper.Mapper) error {
		if c.Stream != "" {
			return streamPush(ctx, g, m, c.Path, payload, c.Stream, opts)
		}
		return m.Push(ctx, c.Path, payload, opts...)
	})
	return st.explain(ctx, "push "+c.Path, "--timeout", c.Timeout, err)
}

type agentsCmd struct {
	brokerFlags
	JSON bool `name:"json" help:"Print JSON."`
}

func (c *agentsCmd) Run(g *Globals) error {
	ctx, cancel := context.WithTimeout(g.Context(), 30*time.Second)
	defer cancel()
	return withMapper(ctx, g, c.brokerFlags, "agents", nil, func(m *mapper.Mapper) error {
		// Agents answer the mapper's announce within AnnounceWait.
		t := time.NewTimer(time.Second)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
		return printAgents(g.Out(), m.Agents(), c.JSON)
	})
}

func printAgents(w io.Writer, as []mapper.AgentInfo, asJSON bool) error {
	if asJSON {
		type row struct {
			Identity string    `json:"identity"`
			Services []string  `json:"services"`
			Status   any       `json:"status"`
			Tags     []string  `json:"tags"`
			LastSeen time.Time `json:"last_heartbeat"`
			InFlight *int64    `json:"in_flight,omitempty"` // absent when the agent reports none
			Handled  *int64    `json:"handled,omitempty"`
		}
		rows := []row{}
		for _, a := range as {
			// Lists are [] when empty, never null.
			r := row{Identity: a.Identity, Services: a.Services, Status: a.Status, Tags: a.Tags, LastSeen: a.LastSeen}
			if a.InFlight >= 0 {
				r.InFlight = &a.InFlight
			}
			if a.Handled >= 0 {
				r.Handled = &a.Handled
			}
			if r.Services == nil {
				r.Services = []string{}
			}
			if r.Tags == nil {
				r.Tags = []string{}
			}
			rows = append(rows, r)
		}
		return printJSON(w, rows)
	}
	fmt.Fprintf(w, "%-34s %-8s %-26s %-12s %s\n", "IDENTITY", "STATUS", "LAST HEARTBEAT", "TAGS", "SERVICES")
	for _, a := range as {
		st, _ := json.Marshal(a.Status)
		fmt.Fprintf(w, "%-34s %-8s %-26s %-12s %s\n", escape(a.Identity), escapeJSON(st), a.LastSeen.Format(time.RFC3339Nano),
			escape(fmt.Sprint(a.Tags)), escape(fmt.Sprint(a.Services)))
	}
	fmt.Fprintf(w, "%d live agent(s)\n", len(as))
	return nil
}
