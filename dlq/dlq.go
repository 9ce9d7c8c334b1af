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
package dlq

import (
	"context"
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
	Exchange  string // where it was first published
	Key       string // with this routing key
	Queue     string // the queue it died in (broker dead letters)
	Count     int64  // how often it died there (broker dead letters)
	Time      time.Time
	Body      []byte
	msg       transport.Message
}

// ErrNotFound: no dead letter has the message id asked for.
var ErrNotFound = errors.New("dlq: no dead letter with that message id")

func letterOf(d *transport.Delivery) Letter {
	h := d.Headers
	l := Letter{
		MessageID: d.MessageID,
		Reason:    wire.String(h, wire.HeaderReason),
		Error:     wire.String(h, wire.HeaderError),
		Path:      wire.String(h, wire.HeaderPath),
		From:      wire.String(h, wire.HeaderFrom),
		Agent:     wire.String(h, wire.HeaderAgent),
		Type:      d.Type,
		Exchange:  wire.String(h, "warren-original-exchange"),
		Key:       wire.String(h, "warren-original-routing-key"),
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
	return l
}

// visit consumes up to max letters (0: all) from the dead-letter queue and
// calls f for each; f settles it. It stops when the queue has had nothing
// more for idle.
func visit(ctx context.Context, tr transport.Transport, max int, f func(d *transport.Delivery, l Letter) error) error {
	const idle = 300 * time.Millisecond
	prefetch := max
	if prefetch <= 0 || prefetch > 1000 {
		prefetch = 1000
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := tr.Consume(cctx, wire.DeadLetterQueue, transport.ConsumeOptions{Prefetch: prefetch})
	if err != nil {
		return fmt.Errorf("dlq: consume %s: %w", wire.DeadLetterQueue, err)
	}
	seen := 0
	t := time.NewTimer(idle)
	defer t.Stop()
	for max <= 0 || seen < max {
		select {
		case d, ok := <-ch:
			if !ok {
				return ctx.Err()
			}
			seen++
			if err := f(d, letterOf(d)); err != nil {
				return err
			}
			t.Reset(idle)
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// List returns up to max dead letters (0: all), oldest first, leaving them
// in the queue.
func List(ctx context.Context, tr transport.Transport, max int) ([]Letter, error) {
	var out []Letter
	var held []*transport.Delivery
	err := visit(ctx, tr, max, func(d *transport.Delivery, l Letter) error {
		out = append(out, l)
		held = append(held, d)
		return nil
	})
	// Give them back only after all were read, so none is read twice.
	for _, d := range held {
		_ = d.Nack(true)
	}
	return out, err
}

// Show returns the dead letter with this message id.
func Show(ctx context.Context, tr transport.Transport, messageID string) (Letter, error) {
	ls, err := List(ctx, tr, 0)
	if err != nil {
		return Letter{}, err
	}
	for _, l := range ls {
		if l.MessageID == messageID {
			return l, nil
		}
	}
	return Letter{}, fmt.Errorf("%w %q", ErrNotFound, messageID)
}

// Replay republishes the dead letters that match (all when match is nil)
// to the exchange and routing key they were first published with, without
// the dead-letter headers, and removes them from the queue. It returns how
// many it replayed. A letter whose destination is unknown or unroutable is
// left in place and reported in the error.
func Replay(ctx context.Context, tr transport.Transport, match func(Letter) bool) (int, error) {
	n := 0
	var errs []error
	var keep []*transport.Delivery
	err := visit(ctx, tr, 0, func(d *transport.Delivery, l Letter) error {
		if match != nil && !match(l) {
			keep = append(keep, d)
			return nil
		}
		msg := l.msg
		msg.Headers = maps.Clone(msg.Headers)
		for _, k := range []string{"x-death", "x-first-death-reason", "x-first-death-queue", "x-first-death-exchange",
			"x-last-death-reason", "x-last-death-queue", "x-last-death-exchange",
			wire.HeaderReason, wire.HeaderError, wire.HeaderAgent, "warren-original-exchange", "warren-original-routing-key", "warren-attempts"} {
			delete(msg.Headers, k)
		}
		msg.Expiration = 0
		if dl, ok := wire.Deadline(msg.Headers); ok && !dl.After(time.Now()) {
			delete(msg.Headers, wire.HeaderDeadline) // a replay is a new attempt
		}
		if l.Exchange == "" && l.Key == "" {
			errs = append(errs, fmt.Errorf("dlq: %s: destination unknown", l.MessageID))
			keep = append(keep, d)
			return nil
		}
		if err := tr.Publish(ctx, l.Exchange, l.Key, msg, transport.PublishOptions{Mandatory: true}); err != nil {
			errs = append(errs, fmt.Errorf("dlq: replay %s to %q/%q: %w", l.MessageID, l.Exchange, l.Key, err))
			keep = append(keep, d)
			return nil
		}
		n++
		return d.Ack()
	})
	for _, d := range keep {
		_ = d.Nack(true)
	}
	if err != nil {
		errs = append(errs, err)
	}
	return n, errors.Join(errs...)
}

// Purge removes the dead letters that match (all when match is nil) and
// returns how many.
func Purge(ctx context.Context, tr transport.Transport, match func(Letter) bool) (int, error) {
	n := 0
	var keep []*transport.Delivery
	err := visit(ctx, tr, 0, func(d *transport.Delivery, l Letter) error {
		if match != nil && !match(l) {
			keep = append(keep, d)
			return nil
		}
		n++
		return d.Ack()
	})
	for _, d := range keep {
		_ = d.Nack(true)
	}
	return n, err
}
