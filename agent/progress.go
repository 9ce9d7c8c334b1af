package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Progress sends an intermediate result of the request ctx belongs to
// (the ctx a handler was given, or one derived from it): value, JSON, and
// an optional key naming what it measures. The caller receives each in
// order before the result, if it asked for progress; otherwise, for a
// push, or outside a handler, Progress does nothing. A value of the form
// 0.25 (a fraction) or {"done": 3, "total": 12} shows as a progress bar in
// warren request --progress.
//
// Progress does not wait for the caller: a caller that has gone loses the
// progress quietly. It waits only while progressBuffer messages are
// already queued for a broker that is slow to confirm them (until ctx
// ends: then the value is dropped). It returns an error only for a value
// that does not encode as JSON or an invalid key. Progress never extends
// the request's deadline.
func Progress(ctx context.Context, key string, value any) error {
	r, _ := ctx.Value(reporterKey{}).(*reporter)
	if r == nil {
		return nil
	}
	if err := wire.CheckProgressKey(key); err != nil {
		return err
	}
	body, err := json.Marshal(value)
	if err != nil {
		return fmt.Errorf("agent: progress value does not encode as JSON: %w", err)
	}
	r.send(ctx, key, body)
	return nil
}

// progressBuffer is how many progress messages wait for the broker before
// Progress blocks.
const progressBuffer = 64

type reporterKey struct{}

// reporter sends the progress of one request, in order, each confirmed by
// the broker before the next (publishes on several channels are not
// ordered otherwise), and all before the reply.
type reporter struct {
	a      *Agent
	d      *transport.Delivery
	to     string
	seq    atomic.Int64
	mu     sync.Mutex // serialises send: seq and queue order agree
	closed bool       // flushed: the handler has returned
	ch     chan transport.Message
	done   chan struct{}
}

// withProgress returns ctx with a reporter for d when its caller asked for
// progress, and a function that waits until what was sent is published.
func (a *Agent) withProgress(ctx context.Context, d *transport.Delivery) (context.Context, func()) {
	if !wire.WantsProgress(d) {
		return ctx, func() {}
	}
	r := &reporter{a: a, d: d, to: a.recipient(d), ch: make(chan transport.Message, progressBuffer), done: make(chan struct{})}
	go r.run()
	return context.WithValue(ctx, reporterKey{}, r), r.flush
}

func (r *reporter) send(ctx context.Context, key string, body []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return // a goroutine of the handler that outlived it
	}
	msg := wire.NewProgress(r.d, r.a.cfg.Identity, r.to, r.seq.Add(1), key, body)
	select {
	case r.ch <- msg:
	case <-ctx.Done():
		r.seq.Add(-1)
	}
}

// run publishes the progress until flush. After a failed publish it drops
// the rest: progress is not worth holding up the handler or the reply.
func (r *reporter) run() {
	failed := false
	for msg := range r.ch {
		if failed {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := r.a.tr.Publish(ctx, transport.DefaultExchange, r.d.ReplyTo, msg, transport.PublishOptions{Confirm: true})
		cancel()
		if err != nil {
			r.a.log.Warn("progress not sent; dropping the rest", "err", err, "message_id", r.d.MessageID)
			failed = true
		}
	}
	close(r.done)
}

// flush stops taking progress and waits until what was queued is
// published (or dropped), so that the reply comes after it.
func (r *reporter) flush() {
	r.mu.Lock()
	r.closed = true
	close(r.ch)
	r.mu.Unlock()
	<-r.done
}
