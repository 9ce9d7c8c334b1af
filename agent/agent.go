package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenrpc/warren/internal/backoff"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Config configures an agent. The zero value of each field means its
// default. It is what a YAML file can say; Go collaborators are Options.
type Config struct {
	// Identity names the agent ("fred"); "" generates a random one.
	Identity string `yaml:"identity"`
	// Tags are free-form labels mappers can select on.
	Tags []string `yaml:"tags"`
	// PingInterval is how often the agent sends its status; 0 means 15s.
	// Mappers drop an agent after three missed pings unless they set their
	// own timeout.
	PingInterval time.Duration `yaml:"ping_interval"`
	// Prefetch bounds how many requests the agent works on at once from
	// each of its queues; 0 means 64.
	Prefetch int `yaml:"prefetch"`
	// DrainTimeout bounds how long a stopping agent waits for requests in
	// hand; what is not finished by then is requeued. 0 means 30s.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// Durable makes the agent's own queue a durable quorum queue with a
	// delivery limit: requests addressed to it survive a broker restart,
	// and one that keeps crashing the agent is dead-lettered after
	// MaxDeliveries. Mappers should then send with mapper.Persistent().
	Durable bool `yaml:"durable"`
	// MaxDeliveries bounds how often one message is delivered (quorum
	// queues' delivery limit) or declined and passed on, before it is
	// dead-lettered with reason delivery_limit. 0 means 5.
	MaxDeliveries int `yaml:"max_deliveries"`
	// MaxMessageSize refuses bodies larger than this many bytes (code
	// bad_request); 0 means 16 MiB.
	MaxMessageSize int `yaml:"max_message_size"`
	// MaxDepth refuses JSON bodies nested deeper than this (code
	// bad_request) before any handler decodes them; 0 means 64.
	MaxDepth int `yaml:"max_depth"`
	// NoSharedQueues stops the agent from consuming the shared queue of
	// each of its services, so it serves only requests addressed to it.
	NoSharedQueues bool `yaml:"no_shared_queues"`
}

func (c *Config) setDefaults() {
	if c.Identity == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		c.Identity = hex.EncodeToString(b[:])
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 15 * time.Second
	}
	if c.Prefetch <= 0 {
		c.Prefetch = 64
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 30 * time.Second
	}
	if c.MaxDeliveries <= 0 {
		c.MaxDeliveries = 5
	}
	if c.MaxMessageSize <= 0 {
		c.MaxMessageSize = wire.DefaultMaxMessageSize
	}
	if c.MaxDepth <= 0 {
		c.MaxDepth = wire.DefaultMaxDepth
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	for _, r := range c.Identity {
		if r <= ' ' || r == '/' {
			return fmt.Errorf("agent: identity %q: no spaces, control characters or slashes", c.Identity)
		}
	}
	if c.PingInterval < 0 || c.Prefetch < 0 || c.DrainTimeout < 0 || c.MaxDeliveries < 0 || c.MaxMessageSize < 0 || c.MaxDepth < 0 {
		return errors.New("agent: ping_interval, prefetch, drain_timeout, max_deliveries, max_message_size and max_depth must not be negative")
	}
	return nil
}

// Option sets what only Go can pass.
type Option func(*options)

type options struct {
	log    *slog.Logger
	status func() any
}

// WithLogger sets the logger; the default discards.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithStatus sets the function whose value the agent advertises with every
// ping. Any JSON value works; least_loaded dispatch picks the smallest.
// The default is the 1-minute load average.
func WithStatus(f func() any) Option { return func(o *options) { o.status = f } }

// Agent hosts actors and serves their methods as /actor/method. Register
// handlers with Handle or Expose, then call Run.
type Agent struct {
	tr      transport.Transport
	cfg     Config
	log     *slog.Logger
	status  func() any
	started time.Time

	mu       sync.Mutex
	handlers map[string]*service
	running  bool

	addressed bool // set warren-to on replies (wire.WantsRecipient)

	ready    chan struct{}
	inflight sync.WaitGroup
	handled  atomic.Int64
	// draining is set when Run's context ended: every service is then
	// advertised as inactive and what reaches the agent is passed on.
	draining atomic.Bool
}

// New returns an agent on tr. It does not touch the broker until Run.
func New(tr transport.Transport, cfg Config, opts ...Option) (*Agent, error) {
	if tr == nil {
		return nil, errors.New("agent: nil transport")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	cfg.Tags = slices.Clone(cfg.Tags)
	o := options{}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	if o.status == nil {
		o.status = func() any {
			l, err := LoadAverage()
			if err != nil {
				return 0.0
			}
			return l
		}
	}
	return &Agent{
		tr:        tr,
		cfg:       cfg,
		log:       o.log.With("component", "agent", "agent", cfg.Identity),
		status:    o.status,
		handlers:  map[string]*service{},
		addressed: wire.WantsRecipient(tr),
		ready:     make(chan struct{}),
	}, nil
}

// Identity returns the agent's identity.
func (a *Agent) Identity() string { return a.cfg.Identity }

// Ready is closed once the agent consumes its queues and has registered.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Handled returns how many requests and pushes the agent has settled.
func (a *Agent) Handled() int64 { return a.handled.Load() }

// HandlerOption tunes how one service is served.
type HandlerOption func(*service)

// service is one path the agent serves.
type service struct {
	path     string
	h        Handler
	prefetch int         // 0: the agent's Prefetch
	active   func() bool // nil: always active
	durable  bool
	sem      chan struct{} // bounds concurrent requests from the agent queue
}

// Prefetch bounds how many requests of this service the agent works on at
// once (the prefetch of its shared queue, and a limit on requests taken from
// the agent's own queue). 0 means the agent's Prefetch.
func Prefetch(n int) HandlerOption { return func(s *service) { s.prefetch = n } }

// Active sets a predicate (Vincent's :active): while it returns false the
// agent advertises the service as inactive, so mappers do not select it for
// this service, stops consuming the service's shared queue, and declines
// requests that reach it anyway; they go to another agent. It is called at
// every ping and for every request, so it must be quick.
func Active(pred func() bool) HandlerOption { return func(s *service) { s.active = pred } }

// Durable makes the service's shared queue a durable quorum queue with a
// delivery limit (Config.MaxDeliveries), so work parked there survives a
// broker restart and a message that keeps crashing agents is dead-lettered
// instead of looping. Every agent serving the path must agree.
func Durable() HandlerOption { return func(s *service) { s.durable = true } }

func (s *service) isActive() bool { return s.active == nil || s.active() }

// Handle serves path ("/actor/method") with h. Call it before Run.
func (a *Agent) Handle(path string, h Handler, opts ...HandlerOption) error {
	if err := wire.CheckPath(path); err != nil {
		return err
	}
	if h == nil {
		return fmt.Errorf("agent: nil handler for %s", path)
	}
	s := &service{path: path, h: h}
	for _, o := range opts {
		if o != nil {
			o(s)
		}
	}
	if s.prefetch < 0 {
		return fmt.Errorf("agent: %s: negative prefetch", path)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.running {
		return fmt.Errorf("agent: Handle(%s) after Run", path)
	}
	if _, dup := a.handlers[path]; dup {
		return fmt.Errorf("agent: %s registered twice", path)
	}
	if s.prefetch == 0 {
		s.prefetch = a.cfg.Prefetch
	}
	s.sem = make(chan struct{}, s.prefetch)
	a.handlers[path] = s
	return nil
}

// Expose serves the exported methods of v as /actor/<method>, method names
// in snake_case (GetLoad → get_load), each with opts. A method must look
// like
//
//	func(ctx context.Context, in In) (Out, error)
//
// where the In argument and the Out result are optional and In may be
// *Request for the raw request. Other methods are skipped.
func (a *Agent) Expose(actor string, v any, opts ...HandlerOption) error {
	hs, err := methodHandlers(v)
	if err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(hs)) {
		if err := a.Handle("/"+actor+"/"+name, hs[name], opts...); err != nil {
			return err
		}
	}
	return nil
}

// Services returns the paths the agent serves, sorted.
func (a *Agent) Services() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Sorted(maps.Keys(a.handlers))
}

func (a *Agent) service(path string) *service {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.handlers[path]
}

// Run declares the agent's queues, registers with the mappers, serves until
// ctx ends, then drains: it stops taking work, finishes what is in hand
// (up to DrainTimeout), unregisters and returns nil.
//
// When the connection to the broker is lost (the transport reports
// ErrConnectionLost or a consumer ends without being asked), the agent
// re-declares its queues, consumes again and re-registers, with backoff and
// jitter, until ctx ends. Requests in hand when the connection dropped are
// redelivered by the broker. Run returns an error when the transport is
// closed under it or the broker refuses the topology.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	if a.running {
		a.mu.Unlock()
		return errors.New("agent: Run called twice")
	}
	if len(a.handlers) == 0 {
		a.mu.Unlock()
		return errors.New("agent: no handlers: call Handle or Expose before Run")
	}
	a.running = true
	a.mu.Unlock()
	a.started = time.Now()

	// handlerCtx is cancelled when the drain times out.
	handlerCtx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()
	// bg outlives ctx, for the drain's acks and the unregister.
	bg := context.WithoutCancel(ctx)

	bo := backoff.New()
	first := true
	for {
		s, err := a.startSession(ctx, bg, handlerCtx)
		if err != nil && ctx.Err() != nil {
			// Stopped while (re)connecting: nothing of this session runs.
			if !first {
				a.drain(cancelHandlers)
			}
			break
		}
		if err != nil {
			if first || !retryable(err) {
				if !first {
					a.drain(cancelHandlers)
				}
				return err
			}
			a.log.Warn("cannot re-establish the session; retrying", "err", err)
			if !bo.Wait(ctx) {
				break
			}
			continue
		}
		if first {
			a.log.Info("agent registered", "services", a.Services(), "tags", a.cfg.Tags)
			close(a.ready)
			first = false
		} else {
			a.log.Warn("session re-established: queues declared, consumers restored, registered")
		}
		bo.Reset()
		lost := a.serveSession(ctx, bg, s)
		if !lost {
			// ctx ended: tell the mappers to stop selecting this agent,
			// drain this session, then unregister. Unregistering only at
			// the end keeps mappers from re-sending the work in hand
			// elsewhere, which would run it twice.
			a.draining.Store(true)
			if err := a.beatWithin(bg, wire.TypePing); err != nil {
				a.log.Warn("draining ping failed", "err", err)
			}
			s.stopTaking()
			stopPings := a.pingWhileDraining(bg)
			// At the drain timeout the own queue is no longer read
			// before the handlers are cancelled: the requests they
			// requeue wait there for the mappers (which re-send what
			// they wait for when the agent unregisters), instead of
			// coming straight back to be passed on.
			a.drain(func() { s.stopOwn(); cancelHandlers() })
			s.stopOwn()
			stopPings()
			s.stop()
			uctx, cancel := context.WithTimeout(bg, 5*time.Second)
			if err := a.beat(uctx, wire.TypeUnregister); err != nil {
				a.log.Warn("unregister failed", "err", err)
			}
			cancel()
			break
		}
		a.log.Warn("connection lost: re-establishing the session")
		s.stop()
		if !bo.Wait(ctx) {
			a.drain(cancelHandlers)
			break
		}
	}
	a.log.Info("agent stopped", "handled", a.handled.Load())
	return nil
}

// drain waits for the requests in hand, cancelling their contexts after the
// drain timeout.
func (a *Agent) drain(cancelHandlers func()) {
	done := make(chan struct{})
	go func() { a.inflight.Wait(); close(done) }()
	t := time.NewTimer(a.cfg.DrainTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		a.log.Warn("drain timeout: cancelling handlers; their requests are requeued")
		cancelHandlers()
		// A handler that ignores its context must not hold the agent
		// forever: its request is requeued when the consumers stop.
		grace := time.NewTimer(drainGrace)
		defer grace.Stop()
		select {
		case <-done:
		case <-grace.C:
			a.log.Error("handlers ignore cancellation: stopping without them", "grace", drainGrace)
		}
	}
}

// drainGrace is how long a stopping agent waits, after the drain timeout,
// for handlers to honour their cancelled context.
const drainGrace = 5 * time.Second

// pingWhileDraining keeps pinging (every service inactive) during the
// drain, so that mappers neither select the agent nor drop it as silent,
// which would make them re-send its requests in hand to another agent. The
// function returned stops the pings and waits for the last one.
func (a *Agent) pingWhileDraining(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(a.cfg.PingInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := a.beatWithin(ctx, wire.TypePing); err != nil && ctx.Err() == nil {
					a.log.Warn("draining ping failed", "err", err)
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

// serveSession pings and answers announces until ctx ends (false) or the
// session's connection is lost (true).
func (a *Agent) serveSession(ctx, bg context.Context, s *session) bool {
	ticker := time.NewTicker(a.cfg.PingInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-s.lost:
			return true
		case <-ticker.C:
			s.syncActive(bg)
			if err := a.beatWithin(ctx, wire.TypePing); err != nil {
				a.log.Warn("ping failed", "err", err)
				if retryable(err) {
					return true
				}
			}
		case d, ok := <-s.control:
			if !ok {
				return true
			}
			if d.Type == wire.TypeAnnounce {
				if err := a.beatWithin(ctx, wire.TypePing); err != nil {
					a.log.Warn("announce reply failed", "err", err)
				}
			}
		}
	}
}

// retryable reports whether an error may go away by reconnecting.
func retryable(err error) bool {
	return errors.Is(err, transport.ErrConnectionLost)
}

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
	if _, err := tr.DeclareQueue(ctx, q); err != nil {
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
	ch, err := tr.Consume(ctx, own, transport.ConsumeOptions{Prefetch: a.cfg.Prefetch})
	if err != nil {
		return fmt.Errorf("agent: consume %s: %w", own, err)
	}
	s.own.Go(func() { s.consumeLoop(ctx, ch, true, s.ownStop, nil) })
	if a.cfg.NoSharedQueues {
		return nil
	}
	for _, p := range a.Services() {
		svc := a.service(p)
		name := wire.ServiceQueue(p)
		q := transport.Queue{Name: name, Durable: true, DeadLetterExchange: wire.DeadLetterExchange}
		if svc.durable {
			q.Type, q.DeliveryLimit = transport.Quorum, a.cfg.MaxDeliveries
		}
		if _, err := tr.DeclareQueue(ctx, q); err != nil {
			return fmt.Errorf("agent: declare %s: %w", name, err)
		}
		if err := tr.Bind(ctx, transport.Binding{Exchange: wire.ServiceExchange, Queue: name, Key: p}); err != nil {
			return fmt.Errorf("agent: bind %s: %w", name, err)
		}
	}
	s.syncActive(ctx)
	return nil
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
// work, starting one goroutine per delivery; the prefetch bounds how many
// run at once. A source that closes while its context is live means the
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
	for {
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
		case d, ok := <-src:
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
			go func() {
				defer s.a.inflight.Done()
				if handlers != nil {
					defer handlers.Done()
				}
				s.a.serve(s.handlers, d)
			}()
		}
	}
}

// sharedConsumer is the consumer of one service's shared queue.
type sharedConsumer struct {
	cancel   context.CancelFunc
	stop     chan struct{}  // closed when the service turns inactive
	loopDone chan struct{}  // closed when its consume loop has returned
	handlers sync.WaitGroup // requests it started
}

// heartbeat returns this agent's heartbeat record.
func (a *Agent) heartbeat() wire.Heartbeat {
	return wire.Heartbeat{
		Identity:     a.cfg.Identity,
		Queue:        wire.AgentQueue(a.cfg.Identity),
		Services:     a.Services(),
		Tags:         a.cfg.Tags,
		Status:       a.status(),
		PingInterval: a.cfg.PingInterval.Milliseconds(),
		Inactive:     a.inactive(),
		Started:      a.started.UTC(),
	}
}

// inactive lists the services whose Active predicate is false: every
// service while the agent drains.
func (a *Agent) inactive() []string {
	if a.draining.Load() {
		return a.Services()
	}
	var out []string
	for _, p := range a.Services() {
		if !a.service(p).isActive() {
			out = append(out, p)
		}
	}
	return out
}

// beatWithin sends a heartbeat, giving up after a ping interval or when ctx
// ends, so that a broker outage does not hold up the serve loop.
func (a *Agent) beatWithin(ctx context.Context, typ string) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.PingInterval)
	defer cancel()
	return a.beat(ctx, typ)
}

func (a *Agent) beat(ctx context.Context, typ string) error {
	body, err := json.Marshal(a.heartbeat())
	if err != nil {
		return fmt.Errorf("agent: encode heartbeat (is the status JSON?): %w", err)
	}
	msg := transport.Message{
		Body:        body,
		ContentType: wire.ContentJSON,
		Type:        typ,
		AppID:       a.cfg.Identity,
		Timestamp:   time.Now(),
		Headers:     map[string]any{wire.HeaderVersion: int64(wire.Version)},
	}
	if err := a.tr.Publish(ctx, wire.HeartbeatExchange, "", msg, transport.PublishOptions{}); err != nil {
		return fmt.Errorf("agent: %s: %w", typ, err)
	}
	return nil
}

// serve handles one delivery from start to settlement.
func (a *Agent) serve(ctx context.Context, d *transport.Delivery) {
	defer a.handled.Add(1)
	// Logger.With allocates even when nothing is logged: only when it is.
	log := a.log
	if log.Enabled(ctx, slog.LevelError) {
		log = log.With("message_id", d.MessageID, "correlation_id", d.CorrelationID)
	}
	req, code, err := a.parse(d)
	if err != nil {
		log.Warn("bad message", "err", err, "code", code, "routing_key", d.RoutingKey)
		a.fail(ctx, d, req, code, err.Error())
		return
	}
	if log != a.log {
		log = log.With("service", req.Path)
	}
	if expired(req) {
		a.expire(ctx, log, d, req)
		return
	}
	svc := a.service(req.Path)
	if svc == nil {
		log.Warn("no such service")
		a.fail(ctx, d, req, wire.CodeNoSuchService, fmt.Sprintf("agent %s does not serve %s", a.cfg.Identity, req.Path))
		return
	}
	if a.passOn(ctx, log, svc, d, req) {
		return
	}
	// Waiting for the semaphore can take long: give up at the deadline,
	// and check the deadline and the service again once acquired. (A free
	// slot is taken without the timer: that is the common case.)
	select {
	case svc.sem <- struct{}{}:
	default:
		var deadline <-chan time.Time
		if !req.Deadline.IsZero() {
			t := time.NewTimer(time.Until(req.Deadline))
			defer t.Stop()
			deadline = t.C
		}
		select {
		case svc.sem <- struct{}{}:
		case <-deadline:
			a.expire(ctx, log, d, req)
			return
		case <-ctx.Done():
			a.settle(d, false, true)
			return
		}
		if expired(req) {
			<-svc.sem
			a.expire(ctx, log, d, req)
			return
		}
		if a.passOn(ctx, log, svc, d, req) {
			<-svc.sem
			return
		}
	}
	defer func() { <-svc.sem }()
	// The variadic arguments of a log call are allocated even when the
	// level is off: this is the hot path.
	debug := log.Enabled(ctx, slog.LevelDebug)
	if debug {
		log.Debug("handler started", "push", req.Push)
	}
	hctx := ctx
	if !req.Deadline.IsZero() {
		var cancel context.CancelFunc
		hctx, cancel = context.WithDeadline(ctx, req.Deadline)
		defer cancel()
	}
	result, herr := call(hctx, svc.h, req)
	if debug {
		log.Debug("handler returned", "push", req.Push, "err", herr)
	}
	if errors.Is(herr, ErrDecline) {
		log.Info("handler declined the request")
		a.decline(ctx, d, req)
		return
	}
	if ctx.Err() != nil && herr != nil {
		// The drain timed out under the handler: give the work back.
		log.Warn("handler cancelled by shutdown: requeued", "err", herr)
		a.settle(d, false, true)
		return
	}
	var pe *panicError
	if errors.As(herr, &pe) {
		log.Error("handler panicked", "panic", pe.err.Message, "stack", string(pe.stack))
	}
	if herr != nil {
		code := codeOf(herr)
		log.Info("handler failed", "code", code, "err", herr)
		a.fail(ctx, d, req, code, messageOf(herr))
		return
	}
	if d.ReplyTo == "" {
		a.settle(d, true, false)
		return
	}
	body, err := json.Marshal(result)
	if err != nil {
		a.fail(ctx, d, req, wire.CodeHandler, "result does not encode as JSON: "+err.Error())
		return
	}
	a.reply(ctx, d, transport.Message{Body: body}) // no headers: a success
}

// expired reports whether req's deadline has passed.
func expired(req *Request) bool {
	return !req.Deadline.IsZero() && !time.Now().Before(req.Deadline)
}

// expire fails a request whose deadline passed before its handler started.
func (a *Agent) expire(ctx context.Context, log *slog.Logger, d *transport.Delivery, req *Request) {
	log.Warn("deadline passed before start: not executed")
	a.fail(ctx, d, req, wire.CodeExpired, "deadline passed before the agent started the request")
}

// passOn declines req, and reports true, when its service is inactive or
// the agent is draining.
func (a *Agent) passOn(ctx context.Context, log *slog.Logger, svc *service, d *transport.Delivery, req *Request) bool {
	switch {
	case a.draining.Load():
		log.Info("agent draining: passing the request on")
	case !svc.isActive():
		log.Info("service inactive: declining")
	default:
		return false
	}
	a.decline(ctx, d, req)
	return true
}

// panicError is a handler's panic; the stack is logged, not sent.
type panicError struct {
	err   *Error
	stack []byte
}

func (e *panicError) Error() string { return e.err.Error() }
func (e *panicError) Unwrap() error { return e.err }

// call runs the handler, turning a panic into an error.
func call(ctx context.Context, h Handler, req *Request) (res any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &panicError{&Error{Code: wire.CodePanic, Message: fmt.Sprintf("panic: %v", r)}, debug.Stack()}
		}
	}()
	return h.Serve(ctx, req)
}

// parse checks a delivery and builds the handler's request. On failure it
// returns the error code to report, and a request with what could be read.
func (a *Agent) parse(d *transport.Delivery) (*Request, string, error) {
	req := &Request{
		Path:        wire.String(d.Headers, wire.HeaderPath),
		Payload:     d.Body,
		ContentType: d.ContentType,
		From:        d.AppID,
		MessageID:   d.MessageID,
		Redelivered: d.Redelivered,
		Headers:     d.Headers,
		Push:        d.ReplyTo == "",
	}
	if dl, ok := wire.Deadline(d.Headers); ok {
		req.Deadline = dl
	}
	switch d.Type {
	case wire.TypeRequest, wire.TypePush, "":
	default:
		return req, wire.CodeBadRequest, fmt.Errorf("unknown message type %q", d.Type)
	}
	if req.Path == "" && d.Exchange == wire.ServiceExchange {
		req.Path = d.RoutingKey
	}
	if err := wire.CheckPath(req.Path); err != nil {
		return req, wire.CodeBadRequest, fmt.Errorf("header %s: %w", wire.HeaderPath, err)
	}
	if d.ContentType != "" && d.ContentType != wire.ContentJSON {
		return req, wire.CodeBadRequest, fmt.Errorf("content type %q: want %s", d.ContentType, wire.ContentJSON)
	}
	if len(d.Body) > a.cfg.MaxMessageSize {
		return req, wire.CodeBadRequest, fmt.Errorf("body of %d bytes is over the limit of %d", len(d.Body), a.cfg.MaxMessageSize)
	}
	if err := wire.CheckDepth(d.Body, a.cfg.MaxDepth); err != nil {
		return req, wire.CodeBadRequest, fmt.Errorf("body: %w", err)
	}
	if len(d.Body) > 0 && !json.Valid(d.Body) {
		return req, wire.CodeBadRequest, errors.New("body is not valid JSON")
	}
	return req, "", nil
}

// fail reports an error: as an error reply when the sender waits for one,
// else as a dead letter carrying the reason.
func (a *Agent) fail(ctx context.Context, d *transport.Delivery, req *Request, code, message string) {
	if d.ReplyTo != "" {
		a.reply(ctx, d, transport.Message{Headers: map[string]any{
			wire.HeaderStatus: wire.StatusError,
			wire.HeaderCode:   code,
			wire.HeaderError:  message,
		}})
		return
	}
	a.deadLetter(ctx, d, req, code, message)
}

// deadLetter publishes a copy of d to the dead-letter exchange with the
// reason, then acks d. If that publish fails or no queue takes it, d is
// rejected, which dead-letters it through the queue's own dead-letter
// exchange.
func (a *Agent) deadLetter(ctx context.Context, d *transport.Delivery, req *Request, code, message string) {
	msg := d.Message
	msg.Headers = maps.Clone(d.Headers)
	if msg.Headers == nil {
		msg.Headers = map[string]any{}
	}
	msg.Headers[wire.HeaderReason] = code
	msg.Headers[wire.HeaderError] = message
	msg.Headers[wire.HeaderAgent] = a.cfg.Identity
	msg.Headers["warren-original-routing-key"] = d.RoutingKey
	msg.Headers["warren-original-exchange"] = d.Exchange
	msg.Expiration = 0
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	// Mandatory: with no queue bound to the dead-letter exchange the
	// letter would be dropped while the original is acked.
	if err := a.tr.Publish(pctx, wire.DeadLetterExchange, d.RoutingKey, msg, transport.PublishOptions{Confirm: true, Mandatory: true}); err != nil {
		a.log.Error("dead-letter publish failed: rejecting instead", "err", err, "reason", code)
		a.settle(d, false, false)
		return
	}
	a.log.Error("message dead-lettered", "reason", code, "error", message, "service", req.Path)
	a.settle(d, true, false)
}

// reply sends msg to d's reply-to queue, then acks d. When the reply cannot
// be sent, d is requeued so that the request is not lost.
func (a *Agent) reply(ctx context.Context, d *transport.Delivery, msg transport.Message) {
	msg.Type = wire.TypeReply
	msg.CorrelationID = d.CorrelationID
	if msg.CorrelationID == "" {
		msg.CorrelationID = d.MessageID
	}
	msg.ContentType = wire.ContentJSON
	msg.AppID = a.cfg.Identity
	msg.Timestamp = time.Now()
	if p := wire.String(d.Headers, wire.HeaderPath); p != "" && msg.Headers[wire.HeaderStatus] == wire.StatusError {
		msg.Headers[wire.HeaderPath] = p
	}
	if d.AppID != "" && a.addressed {
		if msg.Headers == nil {
			msg.Headers = map[string]any{}
		}
		msg.Headers[wire.HeaderTo] = d.AppID
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := a.tr.Publish(pctx, transport.DefaultExchange, d.ReplyTo, msg, transport.PublishOptions{}); err != nil {
		a.log.Warn("reply failed: requeueing the request", "err", err)
		a.settle(d, false, true)
		return
	}
	a.settle(d, true, false)
}

func (a *Agent) settle(d *transport.Delivery, ack, requeue bool) {
	var err error
	if ack {
		err = d.Ack()
	} else {
		err = d.Nack(requeue)
	}
	if err != nil {
		a.log.Warn("settle failed; the broker will redeliver", "err", err, "ack", ack)
	}
}

// ErrDecline, returned by a handler, declines the request (Vincent's
// reject): it is passed on to another agent instead of failing. A request
// declined MaxDeliveries times is dead-lettered with reason
// delivery_limit.
var ErrDecline = errors.New("agent: request declined")

// HeaderAttempts counts how often a message was declined and passed on.
// The agent reads it clamped to 0..MaxDeliveries, so a negative or huge
// value from a sender cannot make a message bounce for ever.
const HeaderAttempts = "warren-attempts"

// attempts returns HeaderAttempts of h clamped to 0..limit; a missing or
// non-integer header is 0.
func attempts(h map[string]any, limit int) int64 {
	n, _ := wire.Int(h, HeaderAttempts)
	return min(max(n, 0), int64(limit))
}

// decline passes a request on. A request addressed to this agent by a
// waiting mapper gets a declined reply, and the mapper re-sends it to
// another agent. Anything else is republished to the service's shared
// queue for another agent to take, counting attempts.
func (a *Agent) decline(ctx context.Context, d *transport.Delivery, req *Request) {
	if d.ReplyTo != "" && d.Exchange != wire.ServiceExchange {
		a.fail(ctx, d, req, wire.CodeDeclined, fmt.Sprintf("agent %s declined %s", a.cfg.Identity, req.Path))
		return
	}
	n := attempts(d.Headers, a.cfg.MaxDeliveries)
	if n+1 >= int64(a.cfg.MaxDeliveries) {
		a.deadLetter(ctx, d, req, wire.CodeDeliveryLimit, fmt.Sprintf("declined %d times", n+1))
		return
	}
	msg := d.Message
	msg.Headers = maps.Clone(d.Headers)
	if msg.Headers == nil {
		msg.Headers = map[string]any{}
	}
	msg.Headers[HeaderAttempts] = n + 1
	msg.Headers[wire.HeaderPath] = req.Path
	delete(msg.Headers, wire.HeaderTo)
	if !req.Deadline.IsZero() {
		msg.Expiration = max(time.Until(req.Deadline), time.Millisecond)
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := a.tr.Publish(pctx, wire.ServiceExchange, req.Path, msg, transport.PublishOptions{Mandatory: true}); err != nil {
		a.deadLetter(ctx, d, req, wire.CodeDeclined, "declined, and no shared queue to pass it on: "+err.Error())
		return
	}
	a.settle(d, true, false)
}
