package mapper

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Progress is an intermediate result an agent sent before its reply
// (agent.Progress).
type Progress struct {
	Agent string          // who sent it
	Key   string          // what it measures; "" when the handler named nothing
	Value json.RawMessage // JSON
	// Seq numbers the progress of one reply from 1; a gap means some were
	// dropped (more than maxQueuedProgress waiting for the callback).
	Seq  int64
	Time time.Time // when it was sent (second resolution)
}

// OnProgress asks the agents for progress and calls f with each, in the
// order it was sent, before Request or FanOut returns the result. f runs
// on the caller's goroutine (one at a time, also in a fan-out, where
// Progress.Agent tells the agents apart); it may be slow without holding
// up other replies. Progress does not extend the deadline.
func OnProgress(f func(Progress)) CallOption { return func(c *call) { c.progress = f } }

// maxQueuedProgress bounds the progress of one request waiting for its
// callback; beyond it the newest is dropped (Seq shows the gap).
const maxQueuedProgress = 1024

type progressKey struct{}

// withProgress passes f to await through ctx.
func withProgress(ctx context.Context, f func(Progress), idle time.Duration) context.Context {
	if f == nil && idle <= 0 {
		return ctx
	}
	if f == nil {
		f = func(Progress) {}
	}
	return context.WithValue(ctx, progressKey{}, progressOpts{f, idle})
}

// progressOpts are what OnProgress and ProgressTimeout asked for.
type progressOpts struct {
	f    func(Progress)
	idle time.Duration
}

// ProgressTimeout fails a Request, a leg of a FanOut or a Stream with
// ErrTimeout when its agent sent neither progress (agent.Progress) nor
// its result for d: a long job that reports how far it got may run as
// long as the context allows, one that went quiet is given up early. It
// asks for progress (as OnProgress does). It does not extend the
// context's deadline, which travels with the request as its deadline.
func ProgressTimeout(d time.Duration) CallOption { return func(c *call) { c.progressIdle = d } }

// serialised wraps f so that the legs of a fan-out call it one at a time.
func serialised(f func(Progress)) func(Progress) {
	if f == nil {
		return nil
	}
	var mu sync.Mutex
	return func(p Progress) {
		mu.Lock()
		defer mu.Unlock()
		f(p)
	}
}

// progressQueue holds the progress of one waiter until await hands it to
// the callback. q is guarded by the mapper's mu.
type progressQueue struct {
	f    func(Progress)
	idle time.Duration // ProgressTimeout; 0: none
	q    []Progress
	sig  chan struct{} // buffered 1: something was queued
}

// watchProgress makes w take progress when ctx carries a callback, and
// marks msg as asking for it.
func watchProgress(ctx context.Context, w *waiter, msg *transport.Message) {
	o, ok := ctx.Value(progressKey{}).(progressOpts)
	if !ok {
		return
	}
	wire.AskProgress(msg)
	w.progress = &progressQueue{f: o.f, idle: o.idle, sig: make(chan struct{}, 1)}
}

// awaitProgress hands w's progress to its callback until the reply is
// there (all progress sent before it included) or ctx ends. It leaves the
// reply (its signal on w.ch) for await.
func (m *Mapper) awaitProgress(ctx context.Context, w *waiter) {
	if w.progress == nil {
		return
	}
	var quiet <-chan time.Time
	if w.progress.idle > 0 {
		t := time.NewTimer(w.progress.idle)
		defer t.Stop()
		quiet = t.C
		for {
			select {
			case <-w.progress.sig:
				m.runProgress(w)
				t.Reset(w.progress.idle)
				continue
			case <-w.ch:
				m.runProgress(w)
				w.ch <- struct{}{} // buffered 1, and answered once: room for it
				return
			case <-ctx.Done():
				return
			case <-quiet:
				m.quiet(w)
				return
			}
		}
	}
	for {
		select {
		case <-w.progress.sig:
			m.runProgress(w)
		case <-w.ch:
			m.runProgress(w)
			w.ch <- struct{}{} // buffered 1, and answered once: room for it
			return
		case <-ctx.Done():
			return
		}
	}
}

// quiet answers w with ErrTimeout after its ProgressTimeout, unless its
// reply came first.
func (m *Mapper) quiet(w *waiter) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id := w.msg.CorrelationID
	if m.pending[id] != w {
		return // answered meanwhile: the reply is in w.reply
	}
	delete(m.pending, id)
	// Nothing was sent on w.ch: whoever answers deletes it from pending
	// first, under mu.
	w.answer(&Reply{Agent: w.target, Err: fmt.Errorf("request %s to %s: %w: no progress for %v", w.path, w.target, ErrTimeout, w.progress.idle)})
}

// readProgress queues a progress message for its waiter. Progress for no
// waiter (late, or never asked for) is dropped.
func (m *Mapper) readProgress(d *transport.Delivery) {
	p, err := wire.ReadProgress(d)
	if err != nil {
		m.log.Debug("malformed progress discarded", "correlation_id", d.CorrelationID, "agent", d.AppID, "err", err)
		return
	}
	m.mu.Lock()
	w := m.pending[d.CorrelationID]
	if w == nil || w.progress == nil || !w.accepts(d.AppID) {
		m.mu.Unlock()
		return
	}
	pq := w.progress
	if len(pq.q) < maxQueuedProgress {
		pq.q = append(pq.q, Progress{Agent: d.AppID, Key: p.Key, Value: json.RawMessage(d.Body), Seq: p.Seq, Time: p.Time})
	}
	m.mu.Unlock()
	select {
	case pq.sig <- struct{}{}:
	default:
	}
}

// runProgress calls w's callback with the progress queued so far.
func (m *Mapper) runProgress(w *waiter) {
	if w.progress == nil {
		return
	}
	m.mu.Lock()
	q := w.progress.q
	w.progress.q = nil
	m.mu.Unlock()
	for _, p := range q {
		w.progress.f(p)
	}
}

// progressSignal is the channel that says w has progress queued (nil when
// it takes none: never ready).
func (w *waiter) progressSignal() <-chan struct{} {
	if w.progress == nil {
		return nil
	}
	return w.progress.sig
}
