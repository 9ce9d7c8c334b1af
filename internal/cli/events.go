package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/warrenrpc/warren/events"
	"github.com/warrenrpc/warren/wire"
)

type publishCmd struct {
	brokerFlags
	Key        string        `arg:"" name:"key" help:"Event key: dot-separated words, e.g. file.encrypt."`
	Payload    string        `arg:"" optional:"" name:"payload" default:"null" help:"JSON payload (default null)."`
	Persistent bool          `name:"persistent" help:"Publish persistent, so that the event survives a broker restart in a durable subscription's queue (events.Persistent)."`
	Mandatory  bool          `name:"mandatory" help:"Fail (exit 1) when no subscription takes the event, instead of dropping it (events.Mandatory)."`
	TTL        time.Duration `name:"ttl" help:"The event's time to live: not handled later, dead-lettered when nobody took it in time (events.TTL). Default: none; at most 1193h."`
	Timeout    time.Duration `name:"timeout" default:"10s" help:"Give up publishing after this long (it does not bound the event's life)."`
	Identity   string        `name:"identity" help:"The publisher's identity (app_id); default generated."`
	Stream     string        `name:"stream" placeholder:"FILE" help:"Publish FILE (- for standard input), of any size, as the event's data, in chunks with a checksum; the payload goes with it (a name, say). Each subscription's handler reads it whole from Event.Stream (events.Bus.PublishStream); --timeout then bounds the whole publishing."`
}

func (c *publishCmd) Help() string {
	return `Publishes an event to the topic exchange warren.events and exits once the
broker confirmed it. An event nobody subscribes to is dropped by design (exit 0),
unless --mandatory:

  warren publish file.encrypt '{"file": "/gfs1/file.dat"}' --persistent

With --stream FILE (- for standard input) the event carries FILE's data, of any
size, streamed in chunks (docs/streams.md):

  warren publish file.uploaded '"backup.tar"' --stream backup.tar --timeout 10m`
}

func (c *publishCmd) Run(g *Globals) error {
	if err := wire.CheckEventKey(c.Key); err != nil {
		return usageError{err}
	}
	if !json.Valid([]byte(c.Payload)) {
		return usageError{fmt.Errorf("payload %q is not JSON (quote strings: '\"hi\"')", c.Payload)}
	}
	if c.TTL != 0 {
		if err := checkDuration("--ttl", c.TTL, true); err != nil {
			return err
		}
	}
	if err := checkDuration("--timeout", c.Timeout, false); err != nil {
		return err
	}
	var data io.Reader
	if c.Stream != "" {
		r, closeIn, err := streamInput(g, c.Stream)
		if err != nil {
			return err
		}
		defer closeIn()
		data = r
	}
	ctx, cancel := context.WithTimeout(g.Context(), c.Timeout)
	defer cancel()
	tr, id, err := c.dialAs(ctx, g, "publish")
	if err != nil {
		return err
	}
	defer tr.Close()
	if c.Identity != "" {
		id = c.Identity
	}
	b, err := events.New(tr, events.Config{Identity: id}, events.WithLogger(g.Logger()))
	if err != nil {
		return usageError{err}
	}
	var opts []events.PublishOption
	if c.Persistent {
		opts = append(opts, events.Persistent())
	}
	if c.Mandatory {
		opts = append(opts, events.Mandatory())
	}
	if c.TTL > 0 {
		opts = append(opts, events.TTL(c.TTL))
	}
	if data != nil {
		return b.PublishStream(ctx, c.Key, json.RawMessage(c.Payload), data, opts...)
	}
	return b.Publish(ctx, c.Key, json.RawMessage(c.Payload), opts...)
}

type subscribeCmd struct {
	brokerFlags
	Pattern  string `arg:"" name:"pattern" help:"Pattern: event key words, * for one word, # for zero or more (file.*, log.#)."`
	Mode     string `name:"mode" default:"all" enum:"all,one,host" help:"Delivery: all (every event, to this subscriber), one (one subscriber of --group gets each event), host (one per host of --group)."`
	Group    string `name:"group" help:"Group of subscribers sharing a queue (--mode one or host)."`
	Durable  bool   `name:"durable" help:"A durable subscription: its queue keeps events while nobody subscribes (--mode all then needs --identity)."`
	Identity string `name:"identity" help:"This subscriber's identity (names the queue of a durable --mode all subscription)."`
	Host     string `name:"host" help:"This host's name for --mode host (default: the host name)."`
	Count    int    `name:"count" short:"n" help:"Exit after this many events (default: until interrupted)."`
}

func (c *subscribeCmd) Help() string {
	return `Tails events as JSON lines, one per event, until interrupted (or --count):

  {"key":"file.encrypt","payload":{"file":"f.dat"},"from":"web-1","id":"...","time":"...","redelivered":false}

A --mode one or host group shares one queue, bound to the patterns of all
its subscribers, and a --durable queue keeps its bindings after they go:
each line's key says which event came. Each event is acked once its line is
written. Strings are JSON-escaped, and control characters are never printed
raw. A streamed event's line has its payload and "stream_size", the size of
its data, which is not printed.

  warren subscribe 'file.*'
  warren subscribe 'log.#' --mode one --group auditors --durable`
}

// eventLine is one line of warren subscribe.
type eventLine struct {
	Key         string          `json:"key"`
	Payload     json.RawMessage `json:"payload"`
	From        string          `json:"from,omitempty"`
	ID          string          `json:"id,omitempty"`
	Time        time.Time       `json:"time,omitzero"`
	Redelivered bool            `json:"redelivered"`
	// StreamSize is the size of a streamed event's data (not printed).
	StreamSize *int64 `json:"stream_size,omitempty"`
}

func (c *subscribeCmd) Run(g *Globals) error {
	if err := wire.CheckEventPattern(c.Pattern); err != nil {
		return usageError{err}
	}
	var mode events.SubscribeOption
	switch c.Mode {
	case "one":
		mode = events.One(c.Group)
	case "host":
		mode = events.PerHost(c.Group)
	default:
		if c.Group != "" {
			return usageError{errors.New("--group goes with --mode one or host")}
		}
		mode = events.All()
	}
	if c.Mode != "all" && c.Group == "" {
		return usageError{fmt.Errorf("--mode %s needs --group", c.Mode)}
	}
	if c.Count < 0 {
		return usageError{errors.New("--count must not be negative")}
	}
	for _, f := range []struct{ flag, v string }{{"--group", c.Group}, {"--identity", c.Identity}, {"--host", c.Host}} {
		if f.v != "" {
			if err := wire.CheckIdentity(f.v); err != nil {
				return usageError{fmt.Errorf("%s: %w", f.flag, err)}
			}
		}
	}
	if c.Mode == "all" && c.Durable && c.Identity == "" && c.Secure.Cert == "" {
		return usageError{errors.New("--durable --mode all needs --identity (or --secure-cert): it names the subscription's queue, warren.events.all.IDENTITY, which keeps the events until this identity subscribes again")}
	}
	ctx, cancel := context.WithCancel(g.Context())
	defer cancel()
	dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
	defer dcancel()
	tr, id, err := c.dialAs(dctx, g, "subscribe")
	if err != nil {
		return err
	}
	defer tr.Close()
	if c.Identity != "" {
		id = c.Identity
	}
	b, err := events.New(tr, events.Config{Identity: id, Host: c.Host, DrainTimeout: time.Second}, events.WithLogger(g.Logger()))
	if err != nil {
		return usageError{err}
	}
	opts := []events.SubscribeOption{mode}
	if c.Durable {
		opts = append(opts, events.Durable())
	}
	var (
		mu      sync.Mutex
		n       int
		failure error
	)
	sub, err := b.Subscribe(dctx, c.Pattern, func(hctx context.Context, ev *events.Event) error {
		mu.Lock()
		defer mu.Unlock()
		if failure != nil || (c.Count > 0 && n >= c.Count) {
			// Not ours to take: hold it until Close gives up on it
			// (DrainTimeout), and it goes back to the queue. Returned
			// at once, it would come straight back, again and again.
			mu.Unlock()
			<-hctx.Done()
			mu.Lock()
			return events.ErrRetry
		}
		el := eventLine{ev.Key, ev.Payload, ev.From, ev.ID, ev.Time, ev.Redelivered, nil}
		if ev.Stream != nil {
			el.StreamSize = &ev.StreamSize
		}
		line, err := json.Marshal(el)
		if err == nil {
			_, err = fmt.Fprintf(g.Out(), "%s\n", escapeJSON(line))
		}
		if err != nil {
			// Not written (a closed pipe): another subscriber, or a
			// later one, may have it.
			failure = fmt.Errorf("write event: %w", err)
			cancel()
			return events.ErrRetry
		}
		n++
		if c.Count > 0 && n == c.Count {
			cancel()
		}
		return nil
	}, opts...)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-sub.Done():
	}
	sub.Close()
	mu.Lock()
	defer mu.Unlock()
	if failure != nil {
		return failure
	}
	if err := sub.Err(); err != nil {
		return fmt.Errorf("subscription ended: %w", err)
	}
	return nil
}
