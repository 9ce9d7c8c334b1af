package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
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

// dlqHold bounds how many dead letters a command holds at once.
type dlqHold struct {
	Hold int `name:"hold" default:"1000" help:"Hold at most this many dead letters at once (1 to 65534): those read, and those left in place because they do not match. A command that needs more stops and says how far it got."`
}

func (h dlqHold) options() ([]dlq.Option, error) {
	if h.Hold < 1 || h.Hold > 65534 {
		return nil, usageError{errors.New("--hold must be 1 to 65534")}
	}
	return []dlq.Option{dlq.Hold(h.Hold)}, nil
}

// incomplete adds what to do about a command stopped by --hold.
func incomplete(err error) error {
	if errors.Is(err, dlq.ErrIncomplete) {
		return fmt.Errorf("%w (--hold is the limit)", err)
	}
	return err
}

// dlqFilter selects dead letters.
type dlqFilter struct {
	dlqHold
	IDs    []string `arg:"" optional:"" name:"message-id" help:"Message ids to act on."`
	All    bool     `name:"all" help:"Act on every dead letter that matches --path and --reason."`
	Path   string   `name:"path" help:"Only dead letters for this service path."`
	Reason string   `name:"reason" help:"Only dead letters with this reason (bad_request, expired, rejected, delivery_limit, ...)."`
}

// match returns the filter, and a function that says which of the message
// ids named were not matched once the command has run.
func (f dlqFilter) match() (func(dlq.Letter) bool, func() error, error) {
	if len(f.IDs) == 0 && !f.All {
		return nil, nil, usageError{errors.New("name message ids, or pass --all (with --path/--reason to narrow it)")}
	}
	found := map[string]bool{}
	match := func(l dlq.Letter) bool {
		ok := (len(f.IDs) == 0 || slices.Contains(f.IDs, l.MessageID)) &&
			(f.Path == "" || l.Path == f.Path) && (f.Reason == "" || l.Reason == f.Reason)
		if ok {
			found[l.MessageID] = true
		}
		return ok
	}
	missing := func() error {
		var errs []error
		for _, id := range f.IDs {
			if !found[id] {
				errs = append(errs, fmt.Errorf("%w %q%s", dlq.ErrNotFound, id, f.narrowed()))
			}
		}
		return errors.Join(errs...)
	}
	return match, missing, nil
}

// narrowed says what --path and --reason added to a message id.
func (f dlqFilter) narrowed() string {
	var s []string
	if f.Path != "" {
		s = append(s, "--path "+f.Path)
	}
	if f.Reason != "" {
		s = append(s, "--reason "+f.Reason)
	}
	if len(s) == 0 {
		return ""
	}
	return " that matches " + strings.Join(s, " and ")
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
	dlqHold
	Max    int    `name:"max" default:"100" help:"List at most this many of the dead letters that match."`
	Path   string `name:"path" help:"Only dead letters for this service path."`
	Reason string `name:"reason" help:"Only dead letters with this reason."`
	JSON   bool   `name:"json" help:"Print JSON."`
}

// letterJSON is a dead letter as --json prints it. Time is null when the
// letter says neither when it died nor when it was published (a letter
// from a publisher that set no timestamp, dead-lettered by an agent).
type letterJSON struct {
	MessageID string     `json:"message_id"`
	Reason    string     `json:"reason"`
	Error     string     `json:"error,omitempty"`
	Path      string     `json:"path,omitempty"`
	From      string     `json:"from,omitempty"`
	Agent     string     `json:"agent,omitempty"`
	Exchange  string     `json:"exchange"`
	Key       string     `json:"routing_key"`
	Queue     string     `json:"queue,omitempty"`
	Count     int64      `json:"count,omitempty"`
	Time      *time.Time `json:"time"`
	Body      string     `json:"body,omitempty"`
}

func toJSON(l dlq.Letter, body bool) letterJSON {
	j := letterJSON{l.MessageID, l.Reason, l.Error, l.Path, l.From, l.Agent, l.Exchange, l.Key, l.Queue, l.Count, nil, ""}
	if !l.Time.IsZero() {
		t := l.Time
		j.Time = &t
	}
	if body {
		j.Body = string(l.Body)
	}
	return j
}

// letterTime is a letter's time as text.
func letterTime(t time.Time) string {
	if t.IsZero() {
		return "unknown"
	}
	return t.UTC().Format(time.RFC3339)
}

func (c *dlqListCmd) Run(g *Globals) error {
	if c.Max < 1 {
		return usageError{errors.New("--max must be at least 1")}
	}
	opts, err := c.options()
	if err != nil {
		return err
	}
	return withBroker(g, c.brokerFlags, func(ctx context.Context, tr transport.Transport) error {
		// Filter, then cap: --max counts the letters that match.
		ls, err := dlq.List(ctx, tr, c.Max, func(l dlq.Letter) bool {
			return (c.Path == "" || l.Path == c.Path) && (c.Reason == "" || l.Reason == c.Reason)
		}, opts...)
		if err != nil && !errors.Is(err, dlq.ErrIncomplete) {
			return err
		}
		// Stopped short: print what was found, then say so.
		if c.JSON {
			out := []letterJSON{}
			for _, l := range ls {
				out = append(out, toJSON(l, false))
			}
			if perr := printJSON(g.Out(), out); perr != nil {
				return perr
			}
			return incomplete(err)
		}
		// Every field is remote data: anyone who may publish to warren.dlx
		// wrote it.
		fmt.Fprintf(g.Out(), "%-34s %-18s %-24s %-20s %-20s %s\n", "MESSAGE ID", "REASON", "PATH", "FROM", "TIME", "ERROR")
		for _, l := range ls {
			errLine, _, _ := strings.Cut(l.Error, "\n")
			fmt.Fprintf(g.Out(), "%-34s %-18s %-24s %-20s %-20s %s\n", escape(l.MessageID), escape(l.Reason), escape(l.Path), escape(l.From), letterTime(l.Time), escape(errLine))
		}
		fmt.Fprintf(g.Out(), "%d dead letter(s)\n", len(ls))
		return incomplete(err)
	})
}

type dlqShowCmd struct {
	brokerFlags
	dlqHold
	ID   string `arg:"" name:"message-id" help:"The dead letter's message id."`
	JSON bool   `name:"json" help:"Print JSON (the fields of dlq list --json, and the body)."`
}

func (c *dlqShowCmd) Run(g *Globals) error {
	opts, err := c.options()
	if err != nil {
		return err
	}
	return withBroker(g, c.brokerFlags, func(ctx context.Context, tr transport.Transport) error {
		l, err := dlq.Show(ctx, tr, c.ID, opts...)
		if err != nil {
			return incomplete(err)
		}
		if c.JSON {
			return printJSON(g.Out(), toJSON(l, true))
		}
		return printLetter(g.Out(), l)
	})
}

// printLetter prints one dead letter as text, one field a line, the body
// last. Every field is escaped; the body keeps its newlines.
func printLetter(w io.Writer, l dlq.Letter) error {
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%-12s %s\n", k+":", escape(v))
		}
	}
	row("message id", l.MessageID)
	row("reason", l.Reason)
	row("path", l.Path)
	row("from", l.From)
	row("agent", l.Agent)
	row("type", l.Type)
	row("exchange", l.Exchange)
	row("routing key", l.Key)
	row("queue", l.Queue)
	if l.Count > 0 {
		row("count", fmt.Sprint(l.Count))
	}
	row("time", letterTime(l.Time))
	if l.Error != "" {
		fmt.Fprintf(w, "error:\n%s\n", escapeLines(strings.TrimRight(l.Error, "\n")))
	}
	_, err := fmt.Fprintf(w, "body (%d bytes):\n%s\n", len(l.Body), escapeLines(string(l.Body)))
	return err
}

type dlqReplayCmd struct {
	brokerFlags
	dlqFilter
}

func (c *dlqReplayCmd) Run(g *Globals) error {
	match, missing, err := c.match()
	if err != nil {
		return err
	}
	opts, err := c.options()
	if err != nil {
		return err
	}
	return withBroker(g, c.brokerFlags, func(ctx context.Context, tr transport.Transport) error {
		n, err := dlq.Replay(ctx, tr, match, opts...)
		fmt.Fprintf(g.Out(), "replayed %d dead letter(s)\n", n)
		if err != nil {
			return incomplete(err)
		}
		// Named ids that were not there: the work asked for was not done.
		return missing()
	})
}

type dlqPurgeCmd struct {
	brokerFlags
	dlqFilter
}

func (c *dlqPurgeCmd) Run(g *Globals) error {
	match, missing, err := c.match()
	if err != nil {
		return err
	}
	opts, err := c.options()
	if err != nil {
		return err
	}
	return withBroker(g, c.brokerFlags, func(ctx context.Context, tr transport.Transport) error {
		n, err := dlq.Purge(ctx, tr, match, opts...)
		fmt.Fprintf(g.Out(), "purged %d dead letter(s)\n", n)
		if err != nil {
			return incomplete(err)
		}
		// Named ids that were not there: the work asked for was not done.
		return missing()
	})
}
