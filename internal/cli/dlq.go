package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/warrenrpc/warren/dlq"
	"github.com/warrenrpc/warren/transport"
)

type dlqCmd struct {
	List   dlqListCmd   `cmd:"" help:"List dead letters with their reasons (they stay in the queue)."`
	Show   dlqShowCmd   `cmd:"" help:"Show one dead letter, body included."`
	Replay dlqReplayCmd `cmd:"" help:"Republish dead letters where they were first sent, and remove them."`
	Purge  dlqPurgeCmd  `cmd:"" help:"Remove dead letters."`
}

// dlqFilter selects dead letters.
type dlqFilter struct {
	IDs    []string `arg:"" optional:"" name:"message-id" help:"Message ids to act on."`
	All    bool     `name:"all" help:"Act on every dead letter that matches --path and --reason."`
	Path   string   `name:"path" help:"Only dead letters for this service path."`
	Reason string   `name:"reason" help:"Only dead letters with this reason (bad_request, expired, rejected, delivery_limit, ...)."`
}

func (f dlqFilter) match() (func(dlq.Letter) bool, error) {
	if len(f.IDs) == 0 && !f.All {
		return nil, usageError{errors.New("name message ids, or pass --all (with --path/--reason to narrow it)")}
	}
	return func(l dlq.Letter) bool {
		return (len(f.IDs) == 0 || slices.Contains(f.IDs, l.MessageID)) &&
			(f.Path == "" || l.Path == f.Path) && (f.Reason == "" || l.Reason == f.Reason)
	}, nil
}

// dlqTimeout bounds a dlq command, so that a broker lost mid-command (the
// transport waits for it to come back) does not hang it.
const dlqTimeout = 2 * time.Minute

func withBroker(g *Globals, b brokerFlags, fn func(ctx context.Context, tr transport.Transport) error) error {
	ctx, cancel := context.WithTimeout(g.Context(), dlqTimeout)
	defer cancel()
	tr, err := b.dial(ctx, g, "dlq")
	if err != nil {
		return err
	}
	defer tr.Close()
	return fn(ctx, tr)
}

type dlqListCmd struct {
	brokerFlags
	Max    int    `name:"max" default:"100" help:"List at most this many (at most 1000)."`
	Path   string `name:"path" help:"Only dead letters for this service path."`
	Reason string `name:"reason" help:"Only dead letters with this reason."`
	JSON   bool   `name:"json" help:"Print JSON."`
}

type letterJSON struct {
	MessageID string    `json:"message_id"`
	Reason    string    `json:"reason"`
	Error     string    `json:"error,omitempty"`
	Path      string    `json:"path,omitempty"`
	From      string    `json:"from,omitempty"`
	Agent     string    `json:"agent,omitempty"`
	Exchange  string    `json:"exchange"`
	Key       string    `json:"routing_key"`
	Queue     string    `json:"queue,omitempty"`
	Count     int64     `json:"count,omitempty"`
	Time      time.Time `json:"time"`
	Body      string    `json:"body,omitempty"`
}

func toJSON(l dlq.Letter, body bool) letterJSON {
	j := letterJSON{l.MessageID, l.Reason, l.Error, l.Path, l.From, l.Agent, l.Exchange, l.Key, l.Queue, l.Count, l.Time, ""}
	if body {
		j.Body = string(l.Body)
	}
	return j
}

func (c *dlqListCmd) Run(g *Globals) error {
	if c.Max < 1 || c.Max > 1000 {
		return usageError{errors.New("--max must be 1 to 1000")}
	}
	return withBroker(g, c.brokerFlags, func(ctx context.Context, tr transport.Transport) error {
		ls, err := dlq.List(ctx, tr, c.Max)
		if err != nil {
			return err
		}
		ls = slices.DeleteFunc(ls, func(l dlq.Letter) bool {
			return (c.Path != "" && l.Path != c.Path) || (c.Reason != "" && l.Reason != c.Reason)
		})
		if c.JSON {
			out := []letterJSON{}
			for _, l := range ls {
				out = append(out, toJSON(l, false))
			}
			return printJSON(g.Out(), out)
		}
		fmt.Fprintf(g.Out(), "%-34s %-18s %-24s %-20s %s\n", "MESSAGE ID", "REASON", "PATH", "FROM", "ERROR")
		for _, l := range ls {
			errLine, _, _ := strings.Cut(l.Error, "\n")
			fmt.Fprintf(g.Out(), "%-34s %-18s %-24s %-20s %s\n", l.MessageID, l.Reason, l.Path, l.From, errLine)
		}
		fmt.Fprintf(g.Out(), "%d dead letter(s)\n", len(ls))
		return nil
	})
}

type dlqShowCmd struct {
	brokerFlags
	ID string `arg:"" name:"message-id" help:"The dead letter's message id."`
}

func (c *dlqShowCmd) Run(g *Globals) error {
	return withBroker(g, c.brokerFlags, func(ctx context.Context, tr transport.Transport) error {
		l, err := dlq.Show(ctx, tr, c.ID)
		if err != nil {
			return err
		}
		return printJSON(g.Out(), toJSON(l, true))
	})
}

type dlqReplayCmd struct {
	brokerFlags
	dlqFilter
}

func (c *dlqReplayCmd) Run(g *Globals) error {
	match, err := c.match()
	if err != nil {
		return err
	}
	return withBroker(g, c.brokerFlags, func(ctx context.Context, tr transport.Transport) error {
		n, err := dlq.Replay(ctx, tr, match)
		fmt.Fprintf(g.Out(), "replayed %d dead letter(s)\n", n)
		return err
	})
}

type dlqPurgeCmd struct {
	brokerFlags
	dlqFilter
}

func (c *dlqPurgeCmd) Run(g *Globals) error {
	match, err := c.match()
	if err != nil {
		return err
	}
	return withBroker(g, c.brokerFlags, func(ctx context.Context, tr transport.Transport) error {
		n, err := dlq.Purge(ctx, tr, match)
		fmt.Fprintf(g.Out(), "purged %d dead letter(s)\n", n)
		return err
	})
}
