package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/warrenrpc/warren/discovery"
	"github.com/warrenrpc/warren/wire"
)

// servicesCmd is NATS's `nats micro ls|info|stats` for Warren: discovery
// questions on the fabric (package discovery), answered by every service
// instance, an actor on one agent.
type servicesCmd struct {
	Ls    servicesLsCmd    `cmd:"" help:"List the service instances (actors on agents) that answer PING: name, id (agent), version."`
	Info  servicesInfoCmd  `cmd:"" help:"Show each service instance's endpoints (INFO): method, path, shared queue."`
	Stats servicesStatsCmd `cmd:"" help:"Show each endpoint's requests, errors and handler time (STATS) since its agent started."`
}

// servicesQuery are the flags and arguments every services command takes.
type servicesQuery struct {
	brokerFlags
	Name string        `arg:"" optional:"" help:"Only the service (actor) of this name."`
	ID   string        `arg:"" optional:"" help:"Only the instance on the agent of this identity."`
	JSON bool          `name:"json" help:"Print the answers as a JSON array, in NATS micro's schema."`
	Wait time.Duration `name:"wait" default:"1s" help:"How long to collect answers."`
}

type servicesLsCmd struct{ servicesQuery }
type servicesInfoCmd struct{ servicesQuery }
type servicesStatsCmd struct{ servicesQuery }

func (c *servicesLsCmd) Run(g *Globals) error {
	return c.ask(g, wire.VerbPing, func(w io.Writer, raw []json.RawMessage) error {
		fmt.Fprintf(w, "%-20s %-34s %-10s %s\n", "NAME", "ID", "VERSION", "TAGS")
		for _, r := range raw {
			var p wire.ServicePing
			if err := json.Unmarshal(r, &p); err != nil {
				return err
			}
			fmt.Fprintf(w, "%-20s %-34s %-10s %s\n", escape(p.Name), escape(p.ID), escape(p.Version), escape(p.Metadata["warren.tags"]))
		}
		fmt.Fprintf(w, "%d service instance(s)\n", len(raw))
		return nil
	})
}

func (c *servicesInfoCmd) Run(g *Globals) error {
	return c.ask(g, wire.VerbInfo, func(w io.Writer, raw []json.RawMessage) error {
		for i, r := range raw {
			var s wire.ServiceInfo
			if err := json.Unmarshal(r, &s); err != nil {
				return err
			}
			if i > 0 {
				fmt.Fprintln(w)
			}
			fmt.Fprintf(w, "%s %s (version %s)\n", escape(s.Name), escape(s.ID), escape(s.Version))
			fmt.Fprintf(w, "  %-16s %-32s %-8s %s\n", "ENDPOINT", "PATH", "ACTIVE", "QUEUE GROUP")
			for _, e := range s.Endpoints {
				active := "yes"
				if e.Metadata["warren.inactive"] == "true" {
					active = "no"
				}
				fmt.Fprintf(w, "  %-16s %-32s %-8s %s\n", escape(e.Name), escape(e.Subject), active, escape(e.QueueGroup))
			}
		}
		fmt.Fprintf(w, "%d service instance(s)\n", len(raw))
		return nil
	})
}

func (c *servicesStatsCmd) Run(g *Globals) error {
	return c.ask(g, wire.VerbStats, func(w io.Writer, raw []json.RawMessage) error {
		fmt.Fprintf(w, "%-20s %-24s %-24s %9s %7s %12s %12s %s\n", "NAME", "ID", "ENDPOINT", "REQUESTS", "ERRORS", "TIME", "AVERAGE", "LAST ERROR")
		for _, r := range raw {
			var s wire.ServiceStats
			if err := json.Unmarshal(r, &s); err != nil {
				return err
			}
			for _, e := range s.Endpoints {
				fmt.Fprintf(w, "%-20s %-24s %-24s %9d %7d %12s %12s %s\n", escape(s.Name), escape(s.ID), escape(e.Name),
					e.NumRequests, e.NumErrors, e.ProcessingTime.Round(time.Microsecond), e.AverageProcessingTime.Round(time.Microsecond), escape(e.LastError))
			}
		}
		fmt.Fprintf(w, "%d service instance(s)\n", len(raw))
		return nil
	})
}

// ask sends verb and prints the answers, as JSON or with table.
func (c *servicesQuery) ask(g *Globals, verb string, table func(io.Writer, []json.RawMessage) error) error {
	if c.Wait <= 0 {
		return usageError{fmt.Errorf("--wait %v: want a positive duration", c.Wait)}
	}
	ctx, cancel := context.WithTimeout(g.Context(), c.Wait+30*time.Second)
	defer cancel()
	tr, id, err := c.dialAs(ctx, g, "services")
	if err != nil {
		return err
	}
	defer tr.Close()
	raw, err := discovery.Ask(ctx, tr, verb, discovery.Query{Name: c.Name, ID: c.ID, Wait: c.Wait, From: id})
	if err != nil {
		return err
	}
	if c.JSON {
		return printJSON(g.Out(), raw)
	}
	return table(g.Out(), raw)
}
