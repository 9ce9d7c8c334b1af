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
	Path     string        `arg:"" name:"path" help:"Service path, /actor/method."`
	Payload  string        `arg:"" optional:"" name:"payload" default:"null" help:"JSON payload (default null)."`
	Selector string        `name:"selector" short:"s" default:"least_loaded" help:"least_loaded, all, random, round_robin or agent:IDENTITY."`
	Tags     []string      `name:"tag" help:"Only agents carrying this tag (repeatable)."`
	Timeout  time.Duration `name:"timeout" default:"10s" help:"Give up after this long; travels with the request as its deadline."`

	Park       bool `name:"park" help:"When no live agent serves the path, park the message durably in the service's shared queue until an agent for it appears, within its deadline, instead of failing with no agent (mapper.Park)."`
	Persistent bool `name:"persistent" help:"Send a persistent message, confirmed by the broker, so that it survives a broker restart in a durable queue (agents run with --durable) (mapper.Persistent)."`
}

func (c *callFlags) options() ([]mapper.CallOption, json.RawMessage, error) {
	if err := wire.CheckPath(c.Path); err != nil {
		return nil, nil, usageError{err}
	}
	if !json.Valid([]byte(c.Payload)) {
		return nil, nil, usageError{fmt.Errorf("payload %q is not JSON (quote strings: '\"hi\"')", c.Payload)}
	}
	sel, err := mapper.ParseSelector(c.Selector)
	if err != nil {
		return nil, nil, usageError{err}
	}
	if c.Timeout <= 0 {
		return nil, nil, usageError{fmt.Errorf("--timeout %v: want a positive duration", c.Timeout)}
	}
	opts := []mapper.CallOption{mapper.Select(sel), mapper.WithTags(c.Tags...)}
	if c.Park {
		opts = append(opts, mapper.Park())
	}
	if c.Persistent {
		opts = append(opts, mapper.Persistent())
	}
	return opts, json.RawMessage(c.Payload), nil
}

// withMapper dials, runs a mapper for the duration of fn, and stops it.
func withMapper(ctx context.Context, g *Globals, b brokerFlags, name string, fn func(*mapper.Mapper) error) error {
	tr, id, err := b.dialAs(ctx, g, name)
	if err != nil {
		return err
	}
	defer tr.Close()
	return runMapper(ctx, g, tr, id, fn)
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
	Retry bool `name:"retry-on-connection-loss" help:"When the connection to the broker drops while waiting, send the request again once reconnected, until --timeout; the handler may then run twice (mapper.RetryOnConnectionLoss)."`
}

func (c *requestCmd) Help() string {
	return `Sends a request and prints the result as JSON. With --selector all the
output is an object keyed by agent identity; agents that failed or did not
answer in time appear with {"error": {"code": ..., "message": ...}}.

  warren request /simple/echo '"hi"' --selector all --timeout 2s

With --park a request that no live agent serves waits, durably, in the
service's shared queue for the first agent that serves it, until --timeout.
--persistent and --retry-on-connection-loss ride out broker failures; see
docs/reliability.md.`
}

func (c *requestCmd) Run(g *Globals) error {
	opts, payload, err := c.options()
	if err != nil {
		return err
	}
	if c.Selector == "all" && (c.Park || c.Retry) {
		return usageError{errors.New("--park and --retry-on-connection-loss apply to a request to one agent, not to --selector all")}
	}
	if c.Retry {
		opts = append(opts, mapper.RetryOnConnectionLoss())
	}
	ctx, cancel := context.WithTimeout(g.Context(), c.Timeout)
	defer cancel()
	return withMapper(ctx, g, c.brokerFlags, "request", func(m *mapper.Mapper) error {
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
		r, err := m.Request(ctx, c.Path, payload, opts...)
		if err != nil {
			return err
		}
		return printJSON(g.Out(), r.Body)
	})
}

// replyJSON is how a reply is printed: the result, or {"error": ...}.
func replyJSON(r *mapper.Reply) any {
	if r.Err == nil {
		return r.Body
	}
	code := "timeout"
	var re *wire.RemoteError
	if errors.As(r.Err, &re) {
		code = re.Code
		return map[string]any{"error": map[string]string{"code": code, "message": re.Message}}
	}
	return map[string]any{"error": map[string]string{"code": code, "message": r.Err.Error()}}
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
	TTL time.Duration `name:"ttl" help:"The push's time to live, instead of --timeout, which then bounds only the sending: an agent does not start it later, and a queue dead-letters it (reason expired) when nobody took it in time (mapper.TTL)."`
}

func (c *pushCmd) Help() string {
	return `Sends a push (no result) and exits once the broker has routed it. Its
deadline is --timeout, or --ttl when given:

  warren push /simple/sleep 1 --park --persistent --ttl 1h

parks the push, persistent, in the service's shared queue when no agent
serves it, where it waits up to an hour for one.`
}

func (c *pushCmd) Run(g *Globals) error {
	opts, payload, err := c.options()
	if err != nil {
		return err
	}
	if c.TTL < 0 {
		return usageError{fmt.Errorf("--ttl %v: want a positive duration", c.TTL)}
	}
	var ctx context.Context
	var cancel context.CancelCauseFunc
	if c.TTL > 0 {
		// A deadline on the context would travel with the push and cut its
		// TTL short: a timer bounds the sending instead.
		ctx, cancel = context.WithCancelCause(g.Context())
		t := time.AfterFunc(c.Timeout, func() {
			cancel(fmt.Errorf("--timeout %v passed: %w", c.Timeout, context.DeadlineExceeded))
		})
		defer t.Stop()
		opts = append(opts, mapper.TTL(c.TTL))
	} else {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeout(g.Context(), c.Timeout)
		cancel = func(error) { stop() }
	}
	defer cancel(nil)
	err = withMapper(ctx, g, c.brokerFlags, "push", func(m *mapper.Mapper) error {
		return m.Push(ctx, c.Path, payload, opts...)
	})
	if cause := context.Cause(ctx); err != nil && errors.Is(cause, context.DeadlineExceeded) && !errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%w (%w)", err, cause)
	}
	return err
}

type agentsCmd struct {
	brokerFlags
	JSON bool `name:"json" help:"Print JSON."`
}

func (c *agentsCmd) Run(g *Globals) error {
	ctx, cancel := context.WithTimeout(g.Context(), 30*time.Second)
	defer cancel()
	return withMapper(ctx, g, c.brokerFlags, "agents", func(m *mapper.Mapper) error {
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
		}
		rows := []row{}
		for _, a := range as {
			// Lists are [] when empty, never null.
			r := row{a.Identity, a.Services, a.Status, a.Tags, a.LastSeen}
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
