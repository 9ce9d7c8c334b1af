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
	return []mapper.CallOption{mapper.Select(sel), mapper.WithTags(c.Tags...)}, json.RawMessage(c.Payload), nil
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
}

func (c *requestCmd) Help() string {
	return `Sends a request and prints the result as JSON. With --selector all the
output is an object keyed by agent identity; agents that failed or did not
answer in time appear with {"error": {"code": ..., "message": ...}}.

  warren request /simple/echo '"hi"' --selector all --timeout 2s`
}

func (c *requestCmd) Run(g *Globals) error {
	opts, payload, err := c.options()
	if err != nil {
		return err
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
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

type pushCmd struct {
	callFlags
}

func (c *pushCmd) Run(g *Globals) error {
	opts, payload, err := c.options()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(g.Context(), c.Timeout)
	defer cancel()
	return withMapper(ctx, g, c.brokerFlags, "push", func(m *mapper.Mapper) error {
		return m.Push(ctx, c.Path, payload, opts...)
	})
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
			rows = append(rows, row{a.Identity, a.Services, a.Status, a.Tags, a.LastSeen})
		}
		return printJSON(w, rows)
	}
	fmt.Fprintf(w, "%-34s %-8s %-26s %-12s %s\n", "IDENTITY", "STATUS", "LAST HEARTBEAT", "TAGS", "SERVICES")
	for _, a := range as {
		st, _ := json.Marshal(a.Status)
		fmt.Fprintf(w, "%-34s %-8s %-26s %-12s %v\n", a.Identity, st, a.LastSeen.Format(time.RFC3339Nano), fmt.Sprint(a.Tags), a.Services)
	}
	fmt.Fprintf(w, "%d live agent(s)\n", len(as))
	return nil
}
