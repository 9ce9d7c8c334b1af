package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// session is one life of the agent's consumers on one connection.
type session struct {
	a        *Agent
	ctx      context.Context // consumers' context
	cancel   context.CancelFunc
	handlers context.Context
	control  <-chan *transport.Delivery
	lost     chan struct{}
	lostOnce sync.Once
	taking   chan struct{} // closed to stop taking new work
	// loops are the consume loops of the shared queues: they return as
	// soon as taking is closed. own is the loop of the agent's own queue,
	// which ends when ownStop is closed or the session stops, and the
	// deliveries it passes on while draining. retiring are the goroutines
	// retiring the consumers of services turned inactive: they end with
	// their handlers or when the session stops.
	loops       sync.WaitGroup
	own         sync.WaitGroup
	ownStop     chan struct{}
	ownStopOnce sync.Once
	ownIdle     chan struct{} // closed once the own loop no longer counts in inflight
	ownOnce     sync.Once
	retiring    sync.WaitGroup

	mu     sync.Mutex
	shared map[string]*sharedConsumer // consumers of shared service queues, by path
}

// startSession declares the agent's queues, starts its consumers and
// registers. The session lives on bg (its consumers must outlive runCtx
// for the drain), but its setup gives up when runCtx ends, so an agent
// stopped during a broker outage does not wait for the broker.
func (a *Agent) startSession(runCtx, bg, handlers context.Context) (*session, error) {
	ctx, cancel := context.WithCancel(bg)
	s := &session{a: a, ctx: ctx, cancel: cancel, handlers: handlers, lost: make(chan struct{}), taking: make(chan struct{}), ownStop: make(chan struct{}), ownIdle: make(chan struct{}), shared: map[string]*sharedConsumer{}}
	interrupt := context.AfterFunc(runCtx, cancel)
	err := s.declare()
	if err == nil {
		err = a.beat(ctx, wire.TypeRegister)
	}
	if !interrupt() {
		s.stop()
		return nil, runCtx.Err()
	}
	if err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

func (s *session) markLost() { s.lostOnce.Do(func() { close(s.lost) }) }

// stopTaking stops the consume loops of the shared queues from taking new
// deliveries; what they hold unacknowledged is requeued when the session
// stops, for other agents. The agent's own queue is still consumed: while
// the agent drains, serve passes what reaches it on (see decline). It
// returns at once: the consume loops wait for nothing else.
func (s *session) stopTaking() {
	close(s.taking)
	s.loops.Wait()
	<-s.ownIdle
}

// ownSwitched records that the own loop adds nothing more to the agent's
// inflight, so that the drain may wait for it.
func (s *session) ownSwitched() { s.ownOnce.Do(func() { close(s.ownIdle) }) }

// stopOwn stops consuming the agent's own queue, once the drain is over
// or timed out, and waits for what it was passing on. It may be called
// more than once.
func (s *session) stopOwn() {
	s.ownStopOnce.Do(func() { close(s.ownStop) })
	s.own.Wait()
}

// stop cancels the consumers (requeueing what was not taken) and waits for
// the consume loops and the retiring consumers.
func (s *session) stop() {
	s.cancel()
	s.loops.Wait()
	s.own.Wait()
	s.retiring.Wait()
}

func (s *session) declare() error {
	a, tr, ctx := s.a, s.a.tr, s.ctx
	if err := wire.Topology(ctx, tr); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	expires := wire.AgentQueueExpiry
	own := wire.AgentQueue(a.cfg.Identity)
	q := transport.Queue{Name: own, Expires: expires, DeadLetterExchange: wire.DeadLetterExchange}
	if a.cfg.Durable {
		q.Type, q.Durable, q.DeliveryLimit = transport.Quorum, true, a.cfg.MaxDeliveries
	}
	if _, err := tr.DeclareQueue(ctx, q); errors.Is(err, transport.ErrPrecondition) {
		if err := s.replaceOwn(q, err); err != nil {
			return err
		}
	} else if err != nil {
		return fmt.Errorf("agent: declare %s: %w", own, err)
	}
	if err := tr.Bind(ctx, transport.Binding{Exchange: wire.RequestExchange, Queue: own, Key: a.cfg.Identity}); err != nil {
		return fmt.Errorf("agent: bind %s: %w", own, err)
	}
	cq, err := tr.DeclareQueue(ctx, transport.Queue{Exclusive: true, AutoDelete: true})
	if err != nil {
		return fmt.Errorf("agent: declare control queue: %w", err)
	}
	if err := tr.Bind(ctx, transport.Binding{Exchange: wire.ControlExchange, Queue: cq}); err != nil {
		return fmt.Errorf("agent: bind control queue: %w", err)
	}
	if s.control, err = tr.Consume(ctx, cq, transport.ConsumeOptions{AutoAck: true, Exclusive: true}); err != nil {
		return fmt.Errorf("agent: consume control queue: %w", err)
	}
	// One consumer per identity (see Config.IdentityWait). RabbitMQ
	// ignores consumer exclusivity on quorum queues (durable agents), so
	// the agent counts the consumers: first before it consumes, so that
	// it takes nothing from a queue in use (what it took and gave back
	// would count as a delivery, towards a quorum queue's delivery limit).
	// After a lost connection, the consumers of this agent's lost sessions
	// may still count: a quorum queue keeps the consumer of a connection
	// whose node went down (it delivers nothing to it) until that node is
	// back, which may be never. Those are allowed, one per lost session.
	if info, err := tr.InspectQueue(ctx, own); err != nil {
		return fmt.Errorf("agent: inspect %s: %w", own, err)
	} else if info.Consumers > a.staleOwn {
		return fmt.Errorf("%w: %s has %d consumer(s)", ErrIdentityInUse, own, info.Consumers)
	}
	// Exclusively: a second agent with this identity is refused, instead
	// of sharing the queue unseen. The queue was just declared, so a
	// refusal here is another consumer.
	var (
		ch   <-chan *transport.Delivery
		feed *ownFeed
		done <-chan struct{}
	)
	ownOpts := transport.ConsumeOptions{Prefetch: a.cfg.Prefetch, Exclusive: true}
	if fc, ok := tr.(transport.FuncConsumer); ok {
		feed = &ownFeed{s: s, w: workers{s: s, work: make(chan *transport.Delivery)}}
		done, err = fc.ConsumeFunc(ctx, own, ownOpts, feed.take)
	} else {
		ch, err = tr.Consume(ctx, own, ownOpts)
	}
	if errors.Is(err, transport.ErrPrecondition) {
		return fmt.Errorf("%w: %s has another consumer: %w", ErrIdentityInUse, own, err)
	}
	if err != nil {
		return fmt.Errorf("agent: consume %s: %w", own, err)
	}
	// And after: two agents starting together both back off, and retry
	// after a jittered backoff.
	if info, err := tr.InspectQueue(ctx, own); err != nil {
		return fmt.Errorf("agent: inspect %s: %w", own, err)
	} else if other := info.Consumers - 1; other > a.staleOwn {
		return fmt.Errorf("%w: %s has %d other consumer(s)", ErrIdentityInUse, own, other)
	} else {
		if other > 0 {
			a.log.Warn("the agent's queue counts other consumers: taken to be this agent's previous connections, lost with a node the queue still waits for",
				"queue", own, "other_consumers", other)
		}
		a.staleOwn = max(other, 0)
	}
	if feed != nil {
		s.own.Go(func() { feed.run(ctx, done) })
	} else {
		s.own.Go(func() { s.consumeLoop(ctx, ch, true, s.ownStop, nil) })
	}
	if a.cfg.NoSharedQueues {
		return nil
	}
	for _, p := range a.Services() {
		name := wire.ServiceQueue(p)
		q := transport.Queue{Name: name, DeadLetterExchange: wire.DeadLetterExchange, DeliveryLimit: a.cfg.MaxDeliveries}
		if err := wire.DeclareShared(ctx, tr, q); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		if err := tr.Bind(ctx, transport.Binding{Exchange: wire.ServiceExchange, Queue: name, Key: p}); err != nil {
			return fmt.Errorf("agent: bind %s: %w", name, err)
		}
	}
	s.syncActive(ctx)
	return nil
}

// replaceOwn replaces the agent's own queue q, which exists with other
// arguments (the agent ran without Durable and now runs with it, or the
// reverse, or with another MaxDeliveries: RabbitMQ refuses the declaration,
// 406 PRECONDITION_FAILED), when it is empty and unused: it unbinds it
// from warren.request, so that nothing more is routed to it, checks it
// again, deletes it and declares it anew. A queue with consumers is
// ErrIdentityInUse (Run waits for them to go); one holding messages stays,
// and the error says what to do.
func (s *session) replaceOwn(q transport.Queue, refused error) error {
	a, tr, ctx := s.a, s.a.tr, s.ctx
	info, err := tr.InspectQueue(ctx, q.Name)
	if err != nil {
		return fmt.Errorf("agent: declare %s: %w", q.Name, refused)
	}
	if info.Consumers > 0 {
		return fmt.Errorf("%w: %s, which exists with other arguments, has %d consumer(s)", ErrIdentityInUse, q.Name, info.Consumers)
	}
	if info.Messages == 0 {
		b := transport.Binding{Exchange: wire.RequestExchange, Queue: q.Name, Key: a.cfg.Identity}
		if err := tr.Unbind(ctx, b); err != nil {
			return fmt.Errorf("agent: unbind %s to replace it: %w", q.Name, err)
		}
		info, err = tr.InspectQueue(ctx, q.Name)
		if err == nil && info.Messages == 0 && info.Consumers == 0 {
			if err := tr.DeleteQueue(ctx, q.Name); err != nil {
				return fmt.Errorf("agent: delete %s to replace it: %w", q.Name, err)
			}
			if _, err := tr.DeclareQueue(ctx, q); err != nil {
				return fmt.Errorf("agent: declare %s: %w", q.Name, err)
			}
			a.log.Warn("the agent's queue existed with other arguments (the agent ran with or without durable, or another max deliveries); it was empty and unused, so it was replaced",
				"queue", q.Name, "durable", a.cfg.Durable)
			return nil
		}
		// Something arrived, or came to consume, before the unbinding:
		// the queue stays as it was.
		if err := tr.Bind(ctx, b); err != nil {
			return fmt.Errorf("agent: bind %s back: %w", q.Name, err)
		}
		if err != nil {
			return fmt.Errorf("agent: inspect %s: %w", q.Name, err)
		}
		if info.Consumers > 0 {
			return fmt.Errorf("%w: %s, which exists with other arguments, has %d consumer(s)", ErrIdentityInUse, q.Name, info.Consumers)
		}
	}
	return fmt.Errorf("agent: %s exists with other arguments (the agent ran without durable, or with it, or with another max deliveries) "+
		"and holds %d message(s), which replacing it would lose: run the agent as it ran before to serve them, "+
		"or delete the queue (rabbitmqctl delete_queue %s; its messages are lost), or wait until it expires (unused for %v): %w",
		q.Name, info.Messages, q.Name, wire.AgentQueueExpiry, refused)
}

// syncActive consumes the shared queue of every active service and stops
// consuming those whose Active predicate turned false.
func (s *session) syncActive(ctx context.Context) {
	if s.a.cfg.NoSharedQueues {
		return
	}
	for _, p := range s.a.Services() {
		svc := s.a.service(p)
		active := svc.isActive()
		s.mu.Lock()
		sc, consuming := s.shared[p]
		s.mu.Unlock()
		switch {
		case active && !consuming:
			cctx, cancel := context.WithCancel(s.ctx)
			ch, err := s.a.tr.Consume(cctx, wire.ServiceQueue(p), transport.ConsumeOptions{Prefetch: svc.prefetch})
			if err != nil {
				cancel()
				s.a.log.Warn("consume shared queue failed", "service", p, "err", err)
				if retryable(err) {
					s.markLost()
				}
				continue
			}
			sc := &sharedConsumer{cancel: cancel, stop: make(chan struct{}), loopDone: make(chan struct{})}
			s.mu.Lock()
			s.shared[p] = sc
			s.mu.Unlock()
			s.loops.Go(func() {
				defer close(sc.loopDone)
				s.consumeLoop(cctx, ch, false, sc.stop, &sc.handlers)
			})
		case !active && consuming:
			s.a.log.Info("service inactive: not consuming its shared queue", "service", p)
			s.mu.Lock()
			delete(s.shared, p)
			s.mu.Unlock()
			// Stop taking, let the work in hand finish and be acked, and
			// only then cancel the consumer: cancelling requeues what it
			// holds unacknowledged, which another agent would run again.
			close(sc.stop)
			// Not in s.loops: stopTaking must not wait for this, as
			// these handlers end only with the drain.
			s.retiring.Go(func() {
				<-sc.loopDone // no handler starts after this
				finished := make(chan struct{})
				go func() { sc.handlers.Wait(); close(finished) }()
				select {
				case <-finished:
				case <-s.ctx.Done(): // the session ends anyway
				}
				sc.cancel()
			})
		}
	}
}

// consumeLoop takes deliveries from src until the session stops taking
// work, serving each on a goroutine of its own (see workers); the prefetch
// bounds how many run at once. A source that closes while its context is live means the
// connection was lost.
//
// own (the agent's own queue) keeps it taking after the session stopped
// taking work, until stop: what is addressed to a draining agent is passed
// on (serve declines it) rather than left waiting in its queue. Those
// deliveries are counted in s.own, not in the agent's inflight, which the
// drain is waiting for. stop, when not nil, also stops it (a service
// turned inactive, or the drain is over); handlers, when not nil, counts
// the work it started.
func (s *session) consumeLoop(ctx context.Context, src <-chan *transport.Delivery, own bool, stop <-chan struct{}, handlers *sync.WaitGroup) {
	taking := s.taking
	if own {
		defer s.ownSwitched()
	}
	w := workers{s: s, handlers: handlers, work: make(chan *transport.Delivery)}
	defer close(w.work) // only this loop sends on it: the idle workers end
	for {
		d, ok, got := poll(taking, stop, src)
		if !got {
			select {
			case <-taking:
				if own {
					taking = nil // from now on serve passes it on
					s.ownSwitched()
					continue
				}
				return
			case <-stop:
				return
			case d, ok = <-src:
			}
		}
		if !ok {
			if ctx.Err() == nil {
				s.markLost()
			}
			return
		}
		if own && taking == nil {
			s.own.Go(func() { s.a.serve(s.handlers, d) })
			continue
		}
		s.a.inflight.Add(1)
		if handlers != nil {
			handlers.Add(1)
		}
		w.start(d)
	}
}

// poll is consumeLoop's common case, without a select's locking of every
// channel in it (taking and stop are shared, and a select locks them all
// even when src is ready): neither taking nor stop closed, and a delivery
// waiting in src. A receive with default that finds its channel open and
// empty, or nil, takes no lock. got is false when consumeLoop is to select.
func poll(taking, stop <-chan struct{}, src <-chan *transport.Delivery) (d *transport.Delivery, ok, got bool) {
	select {
	case <-taking:
		return nil, false, false
	default:
	}
	select {
	case <-stop:
		return nil, false, false
	default:
	}
	select {
	case d, ok = <-src:
		return d, ok, true
	default:
		return nil, false, false
	}
}

// ownFeed does for the agent's own queue on the embedded broker what
// consumeLoop does with a channel's deliveries, without its goroutine: the
// broker hands each delivery to take on the goroutine that published it
// (or settled the one before), and take hands it to an idle worker, one
// goroutine hand-off per request instead of two. run follows the session
// as consumeLoop does and sets the state that take reads: until run
// starts, deliveries wait in held (a session that fails to start cancels
// the consumer: they are requeued); while the session takes work they are
// counted in the agent's inflight and served; once it stops taking, they
// are passed on (serve declines them), counted in s.own; once stopped, they
// are left unsettled, requeued when the session cancels the consumer.
type ownFeed struct {
	s     *session
	w     workers
	mu    sync.Mutex
	state ownState
	held  []*transport.Delivery
}

type ownState int

const (
	ownHeld ownState = iota
	ownTaking
	ownPassing
	ownStopped
)

// take is the consumer's callback; its calls come one at a time.
func (f *ownFeed) take(d *transport.Delivery) {
	s := f.s
	f.mu.Lock()
	defer f.mu.Unlock()
	switch f.state {
	case ownHeld:
		f.held = append(f.held, d)
	case ownTaking:
		s.a.inflight.Add(1)
		f.w.start(d)
	case ownPassing:
		s.own.Go(func() { s.a.serve(s.handlers, d) })
	}
}

// run is consumeLoop's part for an ownFeed: it starts the feed, switches
// it to passing on when the session stops taking work (then the drain may
// wait for the agent's inflight: take adds to it no more), and stops it
// at ownStop or when the consumer ends (done), which is a lost connection
// while ctx lives.
func (f *ownFeed) run(ctx context.Context, done <-chan struct{}) {
	s := f.s
	defer s.ownSwitched()
	f.set(ownTaking)
	ended := false
	select {
	case <-s.taking:
		f.set(ownPassing)
		s.ownSwitched()
		select {
		case <-s.ownStop:
		case <-done:
			ended = true
		}
	case <-s.ownStop:
	case <-done:
		ended = true
	}
	if ended && ctx.Err() == nil {
		s.markLost()
	}
	f.set(ownStopped)
}

// set moves the feed to state; entering ownTaking it serves what was held,
// entering ownStopped it ends the idle workers.
func (f *ownFeed) set(state ownState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state = state
	switch state {
	case ownTaking:
		for _, d := range f.held {
			f.s.a.inflight.Add(1)
			f.w.start(d)
		}
		f.held = nil
	case ownStopped:
		close(f.w.work)
	}
}

// workers serve the deliveries of one consume loop, each on a goroutine
// of its own as they arrive, but reusing the goroutines of requests that
// have finished: a new goroutine per request starts on a small stack that
// the serve path (handler, reply, publish) grows on every request, which
// on the embedded broker cost about a seventh of the CPU of a round trip.
// There are never more goroutines than requests served at once at the
// busiest, and the idle ones end with the loop.
type workers struct {
	s        *session
	handlers *sync.WaitGroup
	work     chan *transport.Delivery // to an idle worker; closed when the loop returns
}

// start serves d on an idle worker, or on a new one if none is idle. The
// delivery is already counted in the agent's inflight (and handlers).
func (w *workers) start(d *transport.Delivery) {
	select {
	case w.work <- d:
	default:
		go w.run(d)
	}
}

func (w *workers) run(d *transport.Delivery) {
	for ok := true; ok; d, ok = <-w.work {
		w.serve(d)
	}
}

func (w *workers) serve(d *transport.Delivery) {
	defer w.s.a.inflight.Done()
	if w.handlers != nil {
		defer w.handlers.Done()
	}
	w.s.a.serve(w.s.handlers, d)
}

// sharedConsumer is the consumer of one service's shared queue.
type sharedConsumer struct {
	cancel   context.CancelFunc
	stop     chan struct{}  // closed when the service turns inactive
	loopDone chan struct{}  // closed when its consume loop has returned
	handlers sync.WaitGroup // requests it started
}
