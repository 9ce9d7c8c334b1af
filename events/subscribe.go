package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenrpc/warren/internal/backoff"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Event is one received event as a handler sees it.
type Event struct {
	Key         string          // the key it was published with
	Payload     json.RawMessage // the body, JSON
	From        string          // the publisher's identity, when it said
	ID          string          // message id
	Time        time.Time       // when it was published (second resolution)
	Redelivered bool            // the broker delivered it before
	Deadline    time.Time       // zero when the publisher set no TTL
	Headers     map[string]any
	// Stream reads the data of a streamed event (Bus.PublishStream),
	// whole and checked, of StreamSize bytes; nil for any other event. It
	// is valid until the handler returns.
	Stream     io.Reader
	StreamSize int64
}

// Decode unmarshals the payload into v.
func (e *Event) Decode(v any) error {
	if err := json.Unmarshal(e.Payload, v); err != nil {
		return fmt.Errorf("events: decode %s: %w", e.Key, err)
	}
	return nil
}

// Handler handles one event. The event is acked when it returns nil. An
// error dead-letters the event with its message (reason handler_error,
// deadline_exceeded when it wraps context.DeadlineExceeded), except
// ErrRetry, which requeues it. ctx carries the event's deadline and is
// cancelled when Close gives up waiting.
type Handler func(ctx context.Context, ev *Event) error

// ErrRetry, returned by a handler (or wrapped), puts the event back in its
// queue for this or another subscriber (Vincent's reject). A durable
// subscription dead-letters an event delivered more than its delivery
// limit; a transient one retries without bound.
var ErrRetry = errors.New("events: retry the event")

// Mode is how a subscription shares events with other subscribers.
type Mode string

// The delivery modes (see the package doc).
const (
	ModeOne  Mode = "one"
	ModeHost Mode = "host"
	ModeAll  Mode = "all"
)

// SubscribeOption tunes one Subscribe.
type SubscribeOption func(*subOpts)

type subOpts struct {
	mode          Mode
	group         string
	durable       bool
	concurrency   int
	prefetch      int
	deliveryLimit int
}

// One shares each event among the subscribers of group: one of them gets
// it (Vincent's :one). They consume one queue, warren.events.one.GROUP.
func One(group string) SubscribeOption {
	return func(o *subOpts) { o.mode, o.group = ModeOne, group }
}

// PerHost gives each event to one subscriber of group per host (Vincent's
// :host): the subscribers on one host (Config.Host) share the queue
// warren.events.host.GROUP.HOST.
func PerHost(group string) SubscribeOption {
	return func(o *subOpts) { o.mode, o.group = ModeHost, group }
}

// All gives every event to this subscriber, whoever else subscribes (the
// default). A transient one has a queue of its own named by the broker; a
// durable one the queue warren.events.all.IDENTITY, so its Bus needs a
// configured identity, and that identity has one durable All
// subscription at a time.
func All() SubscribeOption { return func(o *subOpts) { o.mode, o.group = ModeAll, "" } }

// Durable gives the subscription a quorum queue that keeps events while no
// subscriber of it runs, across broker restarts (for persistent events).
// Without it the queue is deleted with its last subscriber.
func Durable() SubscribeOption { return func(o *subOpts) { o.durable = true } }

// Concurrency runs up to n handlers at once (default 1: events are handled
// one after the other, in the order the queue delivers them).
func Concurrency(n int) SubscribeOption { return func(o *subOpts) { o.concurrency = n } }

// Prefetch bounds the events the broker sends ahead, unacked (default 16,
// at least the concurrency). The consumer's prefetch has room for 8 more:
// the heads of streamed events being assembled, each held unacked until
// its handler ran.
func Prefetch(n int) SubscribeOption { return func(o *subOpts) { o.prefetch = n } }

// DeliveryLimit dead-letters an event of a durable subscription delivered
// more than n times (a subscriber crashing on it, or ErrRetry); default 10.
func DeliveryLimit(n int) SubscribeOption { return func(o *subOpts) { o.deliveryLimit = n } }

// Subscription is one handler subscribed to a pattern. Close it to stop.
type Subscription struct {
	b       *Bus
	pattern string
	h       Handler
	o       subOpts
	queue   string // fixed name; "" for a transient All subscription

	stop           chan struct{} // closed by Close: take no more events
	stopCtx        context.Context
	cancelStop     context.CancelFunc
	done           chan struct{} // closed when the run loop ended
	handlerCtx     context.Context
	cancelHandlers context.CancelFunc
	closeOnce      sync.Once
	inflight       sync.WaitGroup
	sem            chan struct{}

	mu   sync.Mutex
	name string // the queue consumed now
	err  error  // why the subscription ended on its own

	handled, deadLettered, retried, forwarded atomic.Int64

	fwd forwarded  // collection queues declared (stream.go)
	asm assemblies // streams being assembled (stream.go)
}

// Subscribe subscribes h to the events whose key matches pattern (* is
// one word, # zero or more). It returns once the queue is declared, bound
// and consumed: every event published after that reaches it. ctx bounds
// this setup only; the subscription lasts until Close, re-subscribing
// with backoff when the connection is lost.
func (b *Bus) Subscribe(ctx context.Context, pattern string, h Handler, opts ...SubscribeOption) (*Subscription, error) {
	o := subOpts{mode: ModeAll, concurrency: 1, deliveryLimit: 10}
	for _, f := range opts {
		f(&o)
	}
	if h == nil {
		return nil, errors.New("events: nil handler")
	}
	if err := wire.CheckEventPattern(pattern); err != nil {
		return nil, err
	}
	if o.concurrency < 1 || o.prefetch < 0 || o.deliveryLimit < 1 {
		return nil, errors.New("events: concurrency and delivery limit must be at least 1, prefetch not negative")
	}
	o.prefetch = max(o.prefetch, o.concurrency)
	if o.prefetch == o.concurrency && o.prefetch < 16 {
		o.prefetch = 16
	}
	queue, err := b.queueName(o)
	if err != nil {
		return nil, err
	}
	s := &Subscription{
		b: b, pattern: pattern, h: h, o: o, queue: queue,
		stop: make(chan struct{}),
		done: make(chan struct{}),
		sem:  make(chan struct{}, o.concurrency),
	}
	s.stopCtx, s.cancelStop = context.WithCancel(context.Background())
	s.handlerCtx, s.cancelHandlers = context.WithCancel(context.Background())
	ch, cancel, err := s.setup(ctx)
	if err != nil {
		s.cancelStop()
		s.cancelHandlers()
		return nil, err
	}
	go s.run(ch, cancel)
	return s, nil
}

// queueName is the queue of a subscription with o; "" for a transient
// All one (named by the broker).
func (b *Bus) queueName(o subOpts) (string, error) {
	var name string
	switch o.mode {
	case ModeOne, ModeHost:
		if err := wire.CheckIdentity(o.group); err != nil {
			return "", fmt.Errorf("events: group: %w", err)
		}
		name = wire.EventQueuePrefix + string(o.mode) + "." + o.group
		if o.mode == ModeHost {
			name += "." + b.cfg.Host
		}
	case ModeAll:
		if !o.durable {
			return "", nil
		}
		if b.generated {
			return "", errors.New("events: a durable All subscription needs a configured identity (Config.Identity): its queue is named after it")
		}
		name = wire.EventQueuePrefix + "all." + b.cfg.Identity
	default:
		return "", fmt.Errorf("events: unknown mode %q", o.mode)
	}
	if len(name) > 255 {
		return "", fmt.Errorf("events: queue name %q: %d bytes, at most 255 (shorten the group)", name, len(name))
	}
	return name, nil
}

// Queue returns the name of the queue the subscription consumes now.
func (s *Subscription) Queue() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.name
}

// Stats are a subscription's counters.
type Stats struct {
	Handled      int64 // events acked after their handler
	DeadLettered int64 // events dead-lettered (bad input, handler error, expired)
	Retried      int64 // events requeued (ErrRetry, or Close cancelled the handler)
	Forwarded    int64 // chunks of streamed events forwarded to their assembler
}

// Stats returns the subscription's counters.
func (s *Subscription) Stats() Stats {
	return Stats{Handled: s.handled.Load(), DeadLettered: s.deadLettered.Load(), Retried: s.retried.Load(), Forwarded: s.forwarded.Load()}
}

// Done is closed when the subscription has ended: after Close, or when
// the transport was closed under it (Err says why).
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err returns why a subscription ended on its own, or nil.
func (s *Subscription) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close stops taking events, waits for the handlers in hand (up to the
// Bus's DrainTimeout, then cancels their contexts and waits for them to
// return), and cancels the consumer: events it was sent but had not
// started go back to the queue. A durable subscription's queue stays, and
// keeps what is published until it is subscribed again. Close is
// idempotent. Do not call it from the subscription's own handler: it
// waits for that handler to return.
func (s *Subscription) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.cancelStop()
	})
	t := time.NewTimer(s.b.cfg.DrainTimeout)
	defer t.Stop()
	select {
	case <-s.done:
	case <-t.C:
		s.b.log.Warn("drain timeout: cancelling the handlers in hand", "pattern", s.pattern)
		s.cancelHandlers()
		<-s.done
	}
	s.cancelHandlers()
	return nil
}

// setup declares, binds and consumes the subscription's queue. The
// consumer lives until the returned cancel.
func (s *Subscription) setup(ctx context.Context) (<-chan *transport.Delivery, context.CancelFunc, error) {
	tr := s.b.tr
	if err := declareTopology(ctx, tr); err != nil {
		return nil, nil, err
	}
	q := transport.Queue{Name: s.queue, DeadLetterExchange: wire.DeadLetterExchange}
	switch {
	case s.o.durable:
		q.Type, q.Durable, q.DeliveryLimit = transport.Quorum, true, s.o.deliveryLimit
	case s.queue == "":
		q.Exclusive, q.AutoDelete = true, true
	default:
		q.AutoDelete = true
	}
	name, err := tr.DeclareQueue(ctx, q)
	if errors.Is(err, transport.ErrPrecondition) {
		return nil, nil, fmt.Errorf("events: declare queue %s: %w (is the group subscribed with another durability elsewhere?)", s.queue, err)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("events: declare queue %s: %w", s.queue, err)
	}
	if err := tr.Bind(ctx, transport.Binding{Exchange: wire.EventExchange, Queue: name, Key: s.pattern}); err != nil {
		return nil, nil, fmt.Errorf("events: bind %s to %s: %w", name, s.pattern, err)
	}
	cctx, cancel := context.WithCancel(context.Background())
	ch, err := tr.Consume(cctx, name, transport.ConsumeOptions{Prefetch: s.o.prefetch + streamHeads})
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("events: consume %s: %w", name, err)
	}
	s.mu.Lock()
	s.name = name
	s.mu.Unlock()
	return ch, cancel, nil
}

// run consumes until Close, re-subscribing when the consumer ends on its
// own (a lost connection).
func (s *Subscription) run(ch <-chan *transport.Delivery, cancel context.CancelFunc) {
	defer close(s.done)
	bo := backoff.New()
	for {
		lost := s.consume(ch)
		// Handlers in hand finish (or are cancelled by Close) before the
		// consumer goes: what it holds unstarted is then requeued.
		s.inflight.Wait()
		cancel()
		// Wait for the consumer to end, so that Close returns with no
		// consumer left on the queue; what reached it meanwhile goes back.
		for d := range ch {
			s.settle(d, false, true)
		}
		if !lost {
			return
		}
		s.b.log.Warn("subscription consumer ended: re-subscribing", "pattern", s.pattern, "queue", s.Queue())
		for {
			if !bo.Wait(s.stopCtx) {
				return
			}
			sctx, scancel := context.WithTimeout(s.stopCtx, 30*time.Second)
			var err error
			ch, cancel, err = s.setup(sctx)
			scancel()
			if err == nil {
				break
			}
			if errors.Is(err, transport.ErrClosed) {
				s.mu.Lock()
				s.err = err
				s.mu.Unlock()
				return
			}
			s.b.log.Warn("re-subscribing failed; retrying", "pattern", s.pattern, "err", err)
		}
		bo.Reset()
		s.b.log.Info("re-subscribed", "pattern", s.pattern, "queue", s.Queue())
	}
}

// streamHeads is the room a subscription's consumer has, beyond its
// prefetch, for the heads of streamed events it assembles (each is held
// unacked until its handler returned).
const streamHeads = 8

// consume handles deliveries until Close (false) or the end of ch (true).
// Chunks of streamed events are taken at once, in this loop (stream.go);
// events go to dispatch, which runs the handlers, so that a long handler
// does not hold up the chunks that other subscribers wait for.
func (s *Subscription) consume(ch <-chan *transport.Delivery) bool {
	// Never full: the broker sends at most the consumer's prefetch unacked.
	queue := make(chan *transport.Delivery, s.o.prefetch+streamHeads+1)
	dispatched := make(chan struct{})
	go func() {
		defer close(dispatched)
		s.dispatch(queue)
	}()
	defer func() {
		close(queue)
		<-dispatched
	}()
	for {
		select {
		case <-s.stop:
			return false
		case d, ok := <-ch:
			if !ok {
				select {
				case <-s.stop:
					return false
				default:
					return true
				}
			}
			if wire.IsEventChunk(d) {
				s.chunk(d)
				continue
			}
			queue <- d
		}
	}
}

// dispatch runs the handlers of the events in queue, up to the
// concurrency at once (one: in order); after Close it requeues the rest.
func (s *Subscription) dispatch(queue <-chan *transport.Delivery) {
	for d := range queue {
		select {
		case <-s.stop:
			s.settle(d, false, true)
			continue
		default:
		}
		select {
		case s.sem <- struct{}{}:
		case <-s.stop:
			s.settle(d, false, true)
			continue
		}
		s.inflight.Add(1)
		if s.o.concurrency == 1 {
			s.handle(d)
			continue
		}
		go s.handle(d)
	}
}

// handle runs the handler for one delivery and settles it.
func (s *Subscription) handle(d *transport.Delivery) {
	defer func() { <-s.sem; s.inflight.Done() }()
	w, err := wire.ReadEvent(d)
	if err == nil {
		err = s.checkBody(d.Body)
	}
	if err != nil {
		s.deadLetter(d, wire.CodeBadRequest, err.Error())
		return
	}
	if !w.Deadline.IsZero() && !time.Now().Before(w.Deadline) {
		s.deadLetter(d, wire.CodeExpired, "deadline passed before the subscriber started the event")
		return
	}
	ev := &Event{
		Key: w.Key, Payload: json.RawMessage(d.Body), From: d.AppID, ID: d.MessageID,
		Time: d.Timestamp, Redelivered: d.Redelivered, Deadline: w.Deadline, Headers: d.Headers,
	}
	s.finish(d, w.Deadline, ev, nil)
}

// finish runs the handler on ev, the event of delivery d, and settles d by
// the outcome; it reports whether the event is done with (acked or
// dead-lettered), not requeued. beforeRequeue, when not nil, runs before
// d is requeued.
func (s *Subscription) finish(d *transport.Delivery, deadline time.Time, ev *Event, beforeRequeue func()) bool {
	hctx := s.handlerCtx
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		hctx, cancel = context.WithDeadline(hctx, deadline)
		defer cancel()
	}
	herr := call(hctx, s.h, ev)
	var pe *panicError
	switch {
	case herr == nil:
		s.handled.Add(1)
		s.settle(d, true, false)
	case errors.Is(herr, ErrRetry) || s.handlerCtx.Err() != nil:
		if !errors.Is(herr, ErrRetry) {
			// Close gave up waiting: give the event back.
			s.b.log.Warn("handler cancelled by Close: requeued", "key", ev.Key, "err", herr)
		}
		s.retried.Add(1)
		if beforeRequeue != nil {
			beforeRequeue()
		}
		s.settle(d, false, true)
		return false
	case errors.As(herr, &pe):
		s.b.log.Error("handler panicked", "key", ev.Key, "panic", pe.msg, "stack", string(pe.stack))
		s.deadLetter(d, wire.CodePanic, pe.msg)
	case errors.Is(herr, context.DeadlineExceeded):
		s.deadLetter(d, wire.CodeExpired, herr.Error())
	default:
		s.deadLetter(d, wire.CodeHandler, herr.Error())
	}
	return true
}

func (s *Subscription) checkBody(body []byte) error {
	if len(body) > s.b.cfg.MaxMessageSize {
		return fmt.Errorf("body of %d bytes is over the limit of %d", len(body), s.b.cfg.MaxMessageSize)
	}
	if err := wire.CheckDepth(body, s.b.cfg.MaxDepth); err != nil {
		return fmt.Errorf("body: %w", err)
	}
	if !json.Valid(body) {
		return errors.New("body is not valid JSON")
	}
	return nil
}

// deadLetter publishes a copy of d with the reason to warren.dlx, then
// acks d; when that fails d is rejected, and its queue's dead-letter
// exchange takes it.
func (s *Subscription) deadLetter(d *transport.Delivery, code, text string) {
	s.deadLettered.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := wire.PublishDeadLetter(ctx, s.b.tr, d, code, text, s.b.cfg.Identity); err != nil {
		s.b.log.Error("dead-letter publish failed: rejecting instead", "err", err, "reason", code)
		s.settle(d, false, false)
		return
	}
	s.b.log.Error("event dead-lettered", "reason", code, "error", text, "key", d.RoutingKey)
	s.settle(d, true, false)
}

func (s *Subscription) settle(d *transport.Delivery, ack, requeue bool) {
	var err error
	if ack {
		err = d.Ack()
	} else {
		err = d.Nack(requeue)
	}
	if err != nil {
		s.b.log.Warn("settle failed; the broker will redeliver", "err", err, "ack", ack)
	}
}

// panicError is a handler's panic; the stack is logged, not sent.
type panicError struct {
	msg   string
	stack []byte
}

func (e *panicError) Error() string { return e.msg }

func call(ctx context.Context, h Handler, ev *Event) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &panicError{fmt.Sprintf("panic: %v", r), debug.Stack()}
		}
	}()
	return h(ctx, ev)
}
