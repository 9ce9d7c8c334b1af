// Package dlq inspects and replays Warren's dead letters: the messages in
// the warren.dead queue, put there by agents (with the reason in the
// warren-dead-reason header) or by the broker (expired, rejected, over a
// queue's length or a quorum queue's delivery limit, with RabbitMQ's x-death
// header).
//
// It works through the transport interface alone: listing consumes the
// queue with a prefetch and gives every message back unacknowledged, which
// returns it to its place; replay republishes a message where it was first
// published and only then acknowledges it, so a crash in between duplicates
// a dead letter but never loses one.
//
// Each operation visits the letters that were in the queue when it began,
// each at most once: it appends a marker message (type warren.dlq-end) to
// the queue and stops when the marker comes back, so a replayed letter that
// dies again, or a new dead letter, waits for the next operation. One
// that has what it wants before the marker (Show found its letter, List
// has max) still reads on to the marker, holding what comes before it, so
// that the marker leaves the queue with it; only an operation that cannot
// reach it (Hold, a lost connection, a crash) leaves its marker, which the
// next operations pass over and drop once its deadline is past. An
// operation holds the letters it reads, or leaves in place, unacknowledged
// (Hold bounds how many, 1000 by default); letters it replays or purges are
// settled as it goes. One that would need to hold more stops and returns an
// error wrapping ErrIncomplete that says how far it got, never a silently
// partial result. The tool's user needs, besides read on the queue, write on
// amq.default for the marker.
package dlq

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Letter is one dead letter.
type Letter struct {
	MessageID string
	Reason    string // warren-dead-reason, else x-first-death-reason, else x-death's
	Error     string // warren-error, when an agent said why
	Path      string // the service path
	From      string // the sender's identity
	Agent     string // the agent that dead-lettered it, if one did
	Type      string
	Exchange  string    // where it was first published
	Key       string    // with this routing key
	Queue     string    // the queue it died in (broker dead letters)
	Count     int64     // how often it died there (broker dead letters)
	Time      time.Time // when it died (x-death), else when it was published; zero when neither is known
	// Malformed says which headers the transport could not read and
	// removed (transport.HeaderMalformed); such a letter is not replayed.
	Malformed string
	Body      []byte
	msg       transport.Message
}

// ReasonMalformed is the reason of a letter that came with headers the
// transport could not read and had no other reason.
const ReasonMalformed = "malformed"

// ErrNotFound: no dead letter has the message id asked for.
var ErrNotFound = errors.New("dlq: no dead letter with that message id")

func letterOf(d *transport.Delivery) Letter {
	h := d.Headers
	l := Letter{
		MessageID: d.MessageID,
		Reason:    wire.String(h, wire.HeaderReason),
		Error:     wire.String(h, wire.HeaderError),
		Path:      wire.String(h, wire.HeaderPath),
		From:      d.AppID,
		Agent:     wire.String(h, wire.HeaderAgent),
		Type:      d.Type,
		Exchange:  wire.String(h, wire.HeaderOriginalExchange),
		Key:       wire.String(h, wire.HeaderOriginalRoutingKey),
		Time:      d.Timestamp,
		Body:      d.Body,
		msg:       d.Message,
	}
	if deaths, ok := h["x-death"].([]any); ok && len(deaths) > 0 {
		if first, ok := deaths[len(deaths)-1].(map[string]any); ok {
			if l.Reason == "" {
				l.Reason = wire.String(first, "reason")
			}
			l.Queue = wire.String(first, "queue")
			l.Count, _ = wire.Int(first, "count")
			if l.Exchange == "" && l.Key == "" {
				l.Exchange = wire.String(first, "exchange")
				if keys, ok := first["routing-keys"].([]any); ok && len(keys) > 0 {
					l.Key, _ = keys[0].(string)
				}
			}
			if t, ok := first["time"].(time.Time); ok {
				l.Time = t
			}
		}
	}
	if r := wire.String(h, "x-first-death-reason"); l.Reason == "" {
		l.Reason = r
	}
	if l.Exchange == "" && l.Key == "" {
		l.Exchange = wire.String(h, "x-first-death-exchange")
	}
	if why, ok := h[transport.HeaderMalformed].(string); ok {
		l.Malformed = why
		if l.Reason == "" {
			l.Reason = ReasonMalformed
		}
		if l.Error == "" {
			l.Error = "malformed message: " + why
		}
	}
	return l
}

// DefaultHold is how many dead letters one operation holds at most, unless
// Hold says otherwise.
const DefaultHold = 1000

// ErrIncomplete is wrapped by the error of an operation that stopped before
// it had seen every dead letter that was in the queue when it began: it
// held as many letters as Hold allows, or another consumer of the queue
// kept the end from coming back. What it did until then stands (the error
// says how far it got); the letters it did not reach are untouched.
var ErrIncomplete = errors.New("dlq: stopped before the end of the queue")

// Option tunes List, Show, Replay and Purge.
type Option func(*config)

type config struct {
	queue string
	hold  int
}

// Hold bounds how many dead letters one operation holds unacknowledged at
// once: the ones List and Show read, and those Replay and Purge leave in
// place because they do not match (letters they replay or purge are settled
// as they go and do not count). It is the consumer's prefetch, so 1 to
// 65534; the default is DefaultHold. An operation that needs more stops
// with ErrIncomplete.
func Hold(n int) Option { return func(c *config) { c.hold = n } }

// Queue makes the operation work on the dead-letter queue name instead of
// warren.dead.
func Queue(name string) Option { return func(c *config) { c.queue = name } }

func configure(opts []Option) (config, error) {
	c := config{queue: wire.DeadLetterQueue, hold: DefaultHold}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if c.hold < 1 || c.hold > 65534 {
		return c, fmt.Errorf("dlq: hold %d: want 1 to 65534", c.hold)
	}
	if c.queue == "" {
		return c, errors.New("dlq: no queue named")
	}
	return c, nil
}

// markerType is the type of the message an operation appends to the queue
// to know where the letters that were there when it began end.
const markerType = "warren.dlq-end"

// markerTTL bounds how long a marker can outlive the operation that sent it
// (one that crashed): the queue drops it when it expires.
func markerTTL(ctx context.Context) time.Duration {
	ttl := time.Hour
	if dl, ok := ctx.Deadline(); ok {
		ttl = min(ttl, time.Until(dl)+time.Minute)
	}
	return max(ttl, time.Second)
}

// awaitReturned waits, up to returnWait, until queue holds at least want
// ready letters: the broker puts back what a closed consumer held
// asynchronously, after the close, and the next operation (a script's
// `warren dlq purge` right after `replay`) must find them in place.
func awaitReturned(ctx context.Context, tr transport.Transport, queue string, want int) {
	deadline := time.Now().Add(returnWait)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		info, err := tr.InspectQueue(ctx, queue)
		if err != nil || info.Messages >= want {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// returnWait bounds awaitReturned.
const returnWait = 2 * time.Second

// quiet is how long visit waits for the next delivery before it concludes
// that its end marker is not coming back (another consumer holds or took it).
const quiet = 3 * time.Second

// action is what visit's callback did with a delivery.
type action int

const (
	settled action = iota // acknowledged: it left the queue
	held                  // left unsettled; visit gives it back at the end
	done                  // held, and nothing more is wanted: visit reads on only to take its marker
)

// visit calls f, in queue order, for each dead letter that was in the queue
// when it began. It bounds the walk with a marker message published to the
// queue after it started consuming: everything ahead of the marker was
// there before, everything behind it (a letter replayed and dead-lettered
// again, a new dead letter) arrived later and is not visited. Letters f
// holds are given back, to their places in the queue, when visit returns.
// It returns how many letters f saw.
//
// Only settling callbacks (Replay's, Purge's) are given a letter once Hold
// letters are held, since theirs may leave the queue; for the others visit
// stops there.
func visit(ctx context.Context, tr transport.Transport, c config, settling bool, f func(d *transport.Delivery, l Letter) (action, error)) (seen int, err error) {
	cctx, cancel := context.WithCancel(ctx)
	// Prefetch one more than may be held, so that the marker can still come
	// when exactly Hold letters are held.
	ch, err := tr.Consume(cctx, c.queue, transport.ConsumeOptions{Prefetch: c.hold + 1})
	if err != nil {
		cancel()
		return 0, fmt.Errorf("dlq: consume %s: %w", c.queue, err)
	}
	var hold []*transport.Delivery
	defer func() {
		// Ending the consumer gives back what it holds, each to its place;
		// nacking first would deliver them to it again. Its channel is
		// closed once that is done.
		ready := -1
		if len(hold) > 0 {
			if info, err := tr.InspectQueue(ctx, c.queue); err == nil {
				ready = info.Messages
			}
		}
		cancel()
		for range ch {
		}
		if ready >= 0 {
			awaitReturned(ctx, tr, c.queue, ready+len(hold))
		}
	}()
	ttl := markerTTL(ctx)
	marker := transport.Message{Type: markerType, MessageID: "warren-dlq-end-" + newID(), Timestamp: time.Now()}
	wire.SetDeadline(&marker, time.Now().Add(ttl))
	if err := tr.Publish(ctx, transport.DefaultExchange, c.queue, marker, transport.PublishOptions{Mandatory: true}); err != nil {
		return 0, fmt.Errorf("dlq: mark the end of %s: %w", c.queue, err)
	}
	t := time.NewTimer(quiet)
	defer t.Stop()
	// finished: f wants nothing more. visit still reads on to its marker,
	// holding what comes before it, to take the marker out of the queue
	// (else it would stay there, and be moved along by later operations,
	// until its deadline); it gives up, leaving the marker, when that
	// would hold more than Hold letters or the queue goes quiet.
	finished := false
	for {
		select {
		case d, ok := <-ch:
			if !ok {
				if finished {
					return seen, nil
				}
				if ctx.Err() != nil {
					return seen, fmt.Errorf("dlq: %s after %d dead letter(s): %w", c.queue, seen, ctx.Err())
				}
				return seen, fmt.Errorf("%w: %s: the consumer ended after %d dead letter(s) (connection lost?)", ErrIncomplete, c.queue, seen)
			}
			t.Reset(quiet)
			if d.Type == markerType {
				if d.MessageID == marker.MessageID {
					_ = d.Ack()
					return seen, nil
				}
				// Another operation's, still running or not (it stopped early,
				// or crashed). Move it behind ours, so that it holds no place
				// in our prefetch (its operation, if running, visits a few
				// more letters); or drop it once its time is up.
				if dl, ok := wire.Deadline(d.Headers); ok && dl.After(time.Now()) {
					m := d.Message
					m.Expiration = max(time.Until(dl), time.Millisecond)
					if err := tr.Publish(ctx, transport.DefaultExchange, c.queue, m, transport.PublishOptions{Confirm: true}); err != nil {
						hold = append(hold, d)
						continue
					}
				}
				_ = d.Ack()
				continue
			}
			if finished {
				hold = append(hold, d)
				if len(hold) > c.hold {
					return seen, nil
				}
				continue
			}
			if len(hold) >= c.hold && !settling {
				hold = append(hold, d)
				return seen, fmt.Errorf("%w: %s: stopped after %d dead letter(s), as many as it may hold", ErrIncomplete, c.queue, seen)
			}
			seen++
			a, err := f(d, letterOf(d))
			if a != settled {
				hold = append(hold, d)
			}
			if err != nil {
				return seen, err
			}
			if a == done {
				finished = true
				continue
			}
			if len(hold) > c.hold {
				return seen, fmt.Errorf("%w: %s: stopped after %d dead letter(s): it may leave at most %d in place", ErrIncomplete, c.queue, seen, c.hold)
			}
		case <-t.C:
			if finished {
				return seen, nil
			}
			return seen, fmt.Errorf("%w: %s: nothing more came for %v after %d dead letter(s), and not the end marker: another consumer holds or took letters", ErrIncomplete, c.queue, quiet, seen)
		case <-ctx.Done():
			if finished {
				return seen, nil
			}
			return seen, fmt.Errorf("dlq: %s after %d dead letter(s): %w", c.queue, seen, ctx.Err())
		}
	}
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// List returns, oldest first, up to max (0: all) of the dead letters that
// match (all when match is nil), leaving every letter in the queue. It
// reads at most Hold letters; when the queue holds more and fewer than max
// matched among them, it returns those with an error wrapping
// ErrIncomplete.
func List(ctx context.Context, tr transport.Transport, max int, match func(Letter) bool, opts ...Option) ([]Letter, error) {
	c, err := configure(opts)
	if err != nil {
		return nil, err
	}
	var out []Letter
	_, err = visit(ctx, tr, c, false, func(d *transport.Delivery, l Letter) (action, error) {
		if match != nil && !match(l) {
			return held, nil
		}
		out = append(out, l)
		if max > 0 && len(out) >= max {
			return done, nil
		}
		return held, nil
	})
	return out, err
}

// Show returns the first dead letter with this message id, leaving it in
// the queue. It is ErrNotFound when no letter has it, and wraps
// ErrIncomplete when none of the first Hold letters has it but the queue
// holds more.
//
// A letter that another consumer held while Show walked the queue (another
// List or Show: a Tower page refreshing) was not seen: when Show finds
// nothing, it waits for the queue's other consumers to go (up to showWait)
// and walks it once more.
func Show(ctx context.Context, tr transport.Transport, messageID string, opts ...Option) (Letter, error) {
	c, err := configure(opts)
	if err != nil {
		return Letter{}, err
	}
	l, err := show(ctx, tr, c, messageID)
	if err == nil || !(errors.Is(err, ErrNotFound) || errors.Is(err, ErrIncomplete)) {
		return l, err
	}
	if !alone(ctx, tr, c.queue) {
		return l, err
	}
	return show(ctx, tr, c, messageID)
}

func show(ctx context.Context, tr transport.Transport, c config, messageID string) (Letter, error) {
	var found *Letter
	seen, err := visit(ctx, tr, c, false, func(d *transport.Delivery, l Letter) (action, error) {
		if l.MessageID == messageID {
			found = &l
			return done, nil
		}
		return held, nil
	})
	switch {
	case found != nil:
		return *found, nil
	case errors.Is(err, ErrIncomplete):
		return Letter{}, fmt.Errorf("dlq: no dead letter %q among the %d examined: %w", messageID, seen, err)
	case err != nil:
		return Letter{}, err
	}
	return Letter{}, fmt.Errorf("%w %q", ErrNotFound, messageID)
}

// showWait bounds how long Show waits for other consumers of the queue to
// go before it looks again.
const showWait = 5 * time.Second

// alone waits, up to showWait, until queue has no consumer, so that what
// other consumers held is back in place, and reports whether it came to
// that.
func alone(ctx context.Context, tr transport.Transport, queue string) bool {
	deadline := time.Now().Add(showWait)
	for ctx.Err() == nil {
		info, err := tr.InspectQueue(ctx, queue)
		if err != nil {
			return false
		}
		if info.Consumers == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// Replay republishes the dead letters that match (all when match is nil)
// to the exchange and routing key they were first published with, without
// the dead-letter headers, and removes them from the queue. It returns how
// many it replayed. A letter whose destination is unknown or unroutable is
// left in place and reported in the error.
//
// Replay visits the letters that were in the queue when it began, each
// once: a replayed letter that is dead-lettered again goes behind them and
// waits for the next replay. Within one replay a message id is replayed at
// most once; another letter with the same id (a duplicate) stays in place.
func Replay(ctx context.Context, tr transport.Transport, match func(Letter) bool, opts ...Option) (int, error) {
	c, err := configure(opts)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	replayed := map[string]bool{}
	_, err = visit(ctx, tr, c, true, func(d *transport.Delivery, l Letter) (action, error) {
		if match != nil && !match(l) || l.MessageID != "" && replayed[l.MessageID] {
			return held, nil
		}
		if l.Malformed != "" {
			// What it was is lost; sent again it would only die again.
			errs = append(errs, fmt.Errorf("dlq: %s: not replayed: malformed (%s); purge it", l.MessageID, l.Malformed))
			return held, nil
		}
		if l.msg.Type == wire.TypeChunk {
			// The head of a streamed event: its data chunks went with
			// their collection queue; alone it would only break again.
			errs = append(errs, fmt.Errorf("dlq: %s: not replayed: a chunk of a stream whose data is gone; publish the stream again, then purge it", l.MessageID))
			return held, nil
		}
		msg := l.msg
		msg.Headers = maps.Clone(msg.Headers)
		for _, k := range []string{"x-death", "x-first-death-reason", "x-first-death-queue", "x-first-death-exchange",
			"x-last-death-reason", "x-last-death-queue", "x-last-death-exchange",
			wire.HeaderReason, wire.HeaderError, wire.HeaderAgent, wire.HeaderOriginalExchange, wire.HeaderOriginalRoutingKey, wire.HeaderAttempts} {
			delete(msg.Headers, k)
		}
		msg.Expiration = 0
		if dl, ok := wire.Deadline(msg.Headers); ok && !dl.After(time.Now()) {
			delete(msg.Headers, wire.HeaderDeadline) // a replay is a new attempt
		}
		if l.Exchange == "" && l.Key == "" {
			errs = append(errs, fmt.Errorf("dlq: %s: destination unknown", l.MessageID))
			return held, nil
		}
		if err := tr.Publish(ctx, l.Exchange, l.Key, msg, transport.PublishOptions{Mandatory: true}); err != nil {
			errs = append(errs, fmt.Errorf("dlq: replay %s to %q/%q: %w", l.MessageID, l.Exchange, l.Key, err))
			return held, nil
		}
		n++
		replayed[l.MessageID] = true
		if err := d.Ack(); err != nil {
			return held, fmt.Errorf("dlq: %s replayed, but not removed (it will be replayed again): %w", l.MessageID, err)
		}
		return settled, nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	return n, errors.Join(errs...)
}

// Purge removes the dead letters that match (all when match is nil) and
// returns how many. Like Replay, it visits the letters that were in the
// queue when it began, each once.
func Purge(ctx context.Context, tr transport.Transport, match func(Letter) bool, opts ...Option) (int, error) {
	c, err := configure(opts)
	if err != nil {
		return 0, err
	}
	n := 0
	_, err = visit(ctx, tr, c, true, func(d *transport.Delivery, l Letter) (action, error) {
		if match != nil && !match(l) {
			return held, nil
		}
		if err := d.Ack(); err != nil {
			return held, fmt.Errorf("dlq: purge %s: %w", l.MessageID, err)
		}
		n++
		return settled, nil
	})
	return n, err
}
