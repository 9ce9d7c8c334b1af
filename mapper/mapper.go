package mapper

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenrpc/warren/internal/backoff"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Errors returned by a Mapper. Each is wrapped with the path and, where
// there is one, the agent; test with errors.Is.
var (
	// ErrNoAgent: no live agent serves the path (or none fits the selector).
	ErrNoAgent = errors.New("mapper: no agent serves this service")
	// ErrTimeout: the context ended before the agent replied. The error also
	// wraps the context's own error.
	ErrTimeout = errors.New("mapper: no reply in time")
	// ErrNotRunning: the mapper's Run has returned (calls made before Run
	// is ready wait for it, within their context).
	ErrNotRunning = errors.New("mapper: not running")
	// ErrTooLarge: the payload is over Config.MaxMessageSize or nests
	// deeper than Config.MaxDepth; nothing was sent.
	ErrTooLarge = errors.New("mapper: payload over the limit")
	// ErrFanOutLimit: the selector picked more agents than
	// Config.MaxFanOut; nothing was sent.
	ErrFanOutLimit = errors.New("mapper: more targets than the fan-out limit")
)

// Config configures a mapper. The zero value of each field means its
// default.
type Config struct {
	// Identity names the mapper in requests it sends; "" generates one.
	Identity string `yaml:"identity"`
	// PingTimeout drops an agent that has been silent this long; 0 means
	// three of the agent's own ping intervals.
	PingTimeout time.Duration `yaml:"ping_timeout"`
	// AnnounceWait is how long a mapper that has just started waits for
	// agents to answer its announce request before it says that no agent
	// serves a path; 0 means 1s.
	AnnounceWait time.Duration `yaml:"announce_wait"`
	// MaxMessageSize refuses payloads larger than this many bytes once
	// encoded; 0 means 16 MiB (what agents accept by default).
	MaxMessageSize int `yaml:"max_message_size"`
	// MaxDepth refuses payloads nested deeper than this; 0 means 64.
	MaxDepth int `yaml:"max_depth"`
	// MaxFanOut bounds how many agents one FanOut or Push reaches; 0
	// means 1000.
	MaxFanOut int `yaml:"max_fan_out"`
}

// Option sets what only Go can pass.
type Option func(*options)

type options struct {
	log    *slog.Logger
	events func(Event)
}

// WithLogger sets the logger; the default discards.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithEvents calls f for every registry change (an agent joined, left or
// expired), in order, from one goroutine the mapper owns. A slow f delays
// only later events; they are buffered and counted when dropped.
func WithEvents(f func(Event)) Option { return func(o *options) { o.events = f } }

// Mapper dispatches requests to agents. It keeps a live registry of agents
// from their heartbeats and picks targets with a Selector. Any number of
// mappers run at once, all hot. Call Run, then use Request, FanOut and Push
// from any goroutine.
type Mapper struct {
	tr  transport.Transport
	cfg Config
	log *slog.Logger
	reg *registry

	ready   chan struct{}
	readyAt time.Time
	started atomic.Bool   // Run was called; a Mapper runs once
	stopped chan struct{} // closed when Run returns
	replyQ  string

	mu      sync.Mutex
	pending map[string]*waiter
	results results       // streamed results being received (result.go)
	joined  chan struct{} // closed and replaced when an agent joins
	up      chan struct{} // closed while a session is established

	bg      sync.WaitGroup // redispatches, rescues and probes in progress
	runCtx  context.Context
	rescues map[string]chan struct{} // by agent: closed when it comes back
	probes  map[string]*probe        // by agent: liveness probes of agents with requests pending (see probe.go)

	// rescueIdleFor, when set (by tests, to hold a rescue open), replaces
	// rescueIdle. Under mu.
	rescueIdleFor time.Duration

	events  chan Event
	onEvent func(Event)

	lastJoin atomic.Int64 // UnixNano of the latest AgentJoined
	late     atomic.Int64
	foreign  atomic.Int64
	// addressed: set warren-to on requests and pushes (wire.WantsRecipient).
	addressed bool
	dropped   atomic.Int64
	// returns: the transport reports the returns of Unconfirmed publishes
	// to onReturn, while Run runs (transport.Returner).
	returns atomic.Bool
}

// New returns a mapper on tr. It does not touch the broker until Run.
func New(tr transport.Transport, cfg Config, opts ...Option) (*Mapper, error) {
	if tr == nil {
		return nil, errors.New("mapper: nil transport")
	}
	if cfg.PingTimeout < 0 || cfg.AnnounceWait < 0 || cfg.MaxMessageSize < 0 || cfg.MaxDepth < 0 || cfg.MaxFanOut < 0 {
		return nil, errors.New("mapper: ping_timeout, announce_wait, max_message_size, max_depth and max_fan_out must not be negative")
	}
	if cfg.MaxMessageSize == 0 {
		cfg.MaxMessageSize = wire.DefaultMaxMessageSize
	}
	if cfg.MaxDepth == 0 {
		cfg.MaxDepth = wire.DefaultMaxDepth
	}
	if cfg.MaxFanOut == 0 {
		cfg.MaxFanOut = wire.DefaultMaxFanOut
	}
	if cfg.Identity != "" {
		if err := wire.CheckIdentity(cfg.Identity); err != nil {
			return nil, fmt.Errorf("mapper: %w", err)
		}
	}
	if cfg.Identity == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		cfg.Identity = "mapper-" + hex.EncodeToString(b[:])
	}
	if cfg.AnnounceWait == 0 {
		cfg.AnnounceWait = time.Second
	}
	var o options
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	m := &Mapper{
		tr:        tr,
		cfg:       cfg,
		log:       o.log.With("component", "mapper", "mapper", cfg.Identity),
		ready:     make(chan struct{}),
		pending:   map[string]*waiter{},
		rescues:   map[string]chan struct{}{},
		probes:    map[string]*probe{},
		joined:    make(chan struct{}),
		up:        make(chan struct{}),
		stopped:   make(chan struct{}),
		onEvent:   o.events,
		addressed: wire.WantsRecipient(tr),
	}
	m.reg = newRegistry(func(a AgentInfo) time.Duration {
		if cfg.PingTimeout > 0 {
			return cfg.PingTimeout
		}
		if a.PingInterval <= 0 {
			return 45 * time.Second
		}
		return 3 * a.PingInterval
	})
	if m.onEvent != nil {
		m.events = make(chan Event, 1024)
	}
	return m, nil
}

// Identity returns the mapper's identity.
func (m *Mapper) Identity() string { return m.cfg.Identity }

// Ready is closed once the mapper receives heartbeats and replies, and has
// asked the agents to announce themselves.
func (m *Mapper) Ready() <-chan struct{} { return m.ready }

// Agents returns the live agents, sorted by identity.
func (m *Mapper) Agents() []AgentInfo { return m.reg.live("", time.Now()) }

// LateReplies counts replies that arrived after their caller gave up, or
// twice: they are discarded.
func (m *Mapper) LateReplies() int64 { return m.late.Load() }

// ForeignReplies counts replies discarded because their app_id names none
// of the agents the request was addressed to (in secure mode app_id is
// signed: such a reply comes from a request copied into
// another agent's queue). The call still waits for its agent. Requests
// parked in a shared queue take any agent's reply; so do, outside secure
// mode, Requests whose selector does not name their agents, from a live
// agent serving the path (a rescue moved them to the shared queue).
func (m *Mapper) ForeignReplies() int64 { return m.foreign.Load() }

// Run joins the fabric and serves until ctx ends; it returns nil then.
//
// When the connection to the broker is lost, calls in flight fail at once
// with an error wrapping transport.ErrConnectionLost (retry them, or ask
// for that with RetryOnConnectionLoss), and the mapper re-declares its
// queues, consumes again and announces itself, with backoff and jitter, so
// its registry refills. Run returns an error when the broker refuses the
// topology at start or the transport is closed under it.
func (m *Mapper) Run(ctx context.Context) error {
	if !m.started.CompareAndSwap(false, true) {
		return errors.New("mapper: Run called twice")
	}
	defer close(m.stopped)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if stop, ok := transport.NotifyReturn(m.tr, m.onReturn); ok {
		defer stop()
		m.returns.Store(true)
		defer m.returns.Store(false)
	}
	m.mu.Lock()
	m.runCtx = ctx
	m.mu.Unlock()

	var wg sync.WaitGroup
	if m.events != nil {
		wg.Go(func() { m.dispatchEvents(ctx) })
	}
	defer func() {
		cancel()
		wg.Wait()
		m.bg.Wait()
		// No call registers after this: await sees no reply queue.
		m.mu.Lock()
		m.replyQ = ""
		m.mu.Unlock()
		m.failPending(ErrNotRunning)
	}()
	sweep := time.NewTicker(250 * time.Millisecond)
	defer sweep.Stop()
	bo := backoff.New()
	first := true
	startLosses := 0
	for {
		s, err := m.startSession(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !errors.Is(err, transport.ErrConnectionLost) || (first && startLosses == backoff.StartRetries) {
				return err
			}
			if first {
				startLosses++
				m.log.Warn("connection lost while starting; starting again", "err", err, "attempt", startLosses, "of", backoff.StartRetries)
			} else {
				m.log.Warn("cannot re-establish the session; retrying", "err", err)
			}
			if !bo.Wait(ctx) {
				return nil
			}
			continue
		}
		m.mu.Lock()
		m.replyQ = s.replyQ
		close(m.up)
		m.mu.Unlock()
		if first {
			m.readyAt = time.Now()
			close(m.ready)
			first = false
			m.log.Info("mapper ready", "reply_queue", s.replyQ)
		} else {
			m.log.Warn("session re-established: queues declared, consumers restored, announced")
		}
		bo.Reset()
		lost := false
	serve:
		for {
			select {
			case <-ctx.Done():
				break serve
			case <-s.lost:
				lost = true
				break serve
			case now := <-sweep.C:
				m.emit(m.reg.sweep(now))
				m.probeAgents(now)
			}
		}
		s.stop()
		if !lost {
			return nil
		}
		m.mu.Lock()
		m.up = make(chan struct{})
		m.replyQ = ""
		m.mu.Unlock()
		m.log.Warn("connection lost: failing calls in flight and re-establishing the session")
		m.failPending(transport.ErrConnectionLost)
		if !bo.Wait(ctx) {
			return nil
		}
	}
}

// session is one life of the mapper's queues on one connection.
type session struct {
	replyQ   string
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	lost     chan struct{}
	lostOnce sync.Once
}

func (s *session) markLost() { s.lostOnce.Do(func() { close(s.lost) }) }

func (s *session) stop() {
	s.cancel()
	s.wg.Wait()
}

func (m *Mapper) startSession(parent context.Context) (*session, error) {
	ctx, cancel := context.WithCancel(parent)
	s := &session{cancel: cancel, lost: make(chan struct{})}
	fail := func(err error) (*session, error) {
		s.stop()
		return nil, err
	}
	if err := wire.Topology(ctx, m.tr); err != nil {
		return fail(fmt.Errorf("mapper: %w", err))
	}
	replyQ, err := m.tr.DeclareQueue(ctx, transport.Queue{Exclusive: true, AutoDelete: true})
	if err != nil {
		return fail(fmt.Errorf("mapper: declare reply queue: %w", err))
	}
	replyOpts := transport.ConsumeOptions{AutoAck: true, Exclusive: true}
	if fc, ok := m.tr.(transport.FuncConsumer); ok {
		// The embedded broker hands each reply to takeReply on the
		// goroutine that published it: no hop through a reader.
		done, err := fc.ConsumeFunc(ctx, replyQ, replyOpts, m.takeReply)
		if err != nil {
			return fail(fmt.Errorf("mapper: consume reply queue: %w", err))
		}
		s.wg.Go(func() {
			<-done
			if ctx.Err() == nil {
				s.markLost()
			}
		})
	} else {
		replies, err := m.tr.Consume(ctx, replyQ, replyOpts)
		if err != nil {
			return fail(fmt.Errorf("mapper: consume reply queue: %w", err))
		}
		s.wg.Go(func() { m.readReplies(ctx, replies, s) })
	}
	s.replyQ = replyQ
	hbQ, err := m.tr.DeclareQueue(ctx, transport.Queue{Exclusive: true, AutoDelete: true})
	if err != nil {
		return fail(fmt.Errorf("mapper: declare heartbeat queue: %w", err))
	}
	if err := m.tr.Bind(ctx, transport.Binding{Exchange: wire.HeartbeatExchange, Queue: hbQ}); err != nil {
		return fail(fmt.Errorf("mapper: bind heartbeat queue: %w", err))
	}
	beats, err := m.tr.Consume(ctx, hbQ, transport.ConsumeOptions{AutoAck: true, Exclusive: true})
	if err != nil {
		return fail(fmt.Errorf("mapper: consume heartbeat queue: %w", err))
	}
	s.wg.Go(func() { m.readBeats(ctx, beats, s) })
	announce := transport.Message{
		Type: wire.TypeAnnounce, AppID: m.cfg.Identity, Timestamp: time.Now(), ContentType: wire.ContentJSON,
		Body: fmt.Appendf(nil, `{"mapper":%q}`, m.cfg.Identity),
	}
	if err := m.tr.Publish(ctx, wire.ControlExchange, "", announce, transport.PublishOptions{}); err != nil {
		return fail(fmt.Errorf("mapper: announce: %w", err))
	}
	return s, nil
}

func (m *Mapper) readReplies(ctx context.Context, ch <-chan *transport.Delivery, s *session) {
	for d := range ch {
		m.takeReply(d)
	}
	if ctx.Err() == nil {
		s.markLost()
	}
}

// takeReply handles one delivery from the reply queue. Its calls come one
// at a time, in the queue's order: the reply reader's, or the embedded
// broker's (transport.FuncConsumer).
func (m *Mapper) takeReply(d *transport.Delivery) {
	switch d.Type {
	case wire.TypeProgress:
		m.readProgress(d) // not a reply: the waiter stays
		return
	case wire.TypeCredit:
		m.readCredit(d) // a stream's flow control (stream.go)
		return
	case wire.TypeChunk:
		m.readResultChunk(d) // a piece of a streamed result (result.go)
		return
	}
	agent := d.AppID
	m.mu.Lock()
	w := m.pending[d.CorrelationID]
	if w != nil && !w.accepts(agent) && m.moved(w, agent) {
		m.log.Info("request answered by another agent: another mapper moved it from the queue of its agent to the shared queue", "correlation_id", d.CorrelationID, "agent", agent, "sent_to", w.sentTo)
		w.sentTo = nil // any agent's, from now on
	}
	if w != nil && !w.accepts(agent) {
		sentTo := slices.Clone(w.sentTo)
		w.keep(replyFrom(d, w.path))
		m.mu.Unlock()
		m.foreign.Add(1)
		m.log.Debug("reply from an agent the request was not sent to discarded", "correlation_id", d.CorrelationID, "agent", agent, "sent_to", sentTo)
		return
	}
	delete(m.pending, d.CorrelationID)
	streamed := w != nil && w.msg.Headers[wire.HeaderAcceptStream] == true
	m.mu.Unlock()
	if w == nil {
		m.late.Add(1)
		m.log.Debug("late or unknown reply discarded", "correlation_id", d.CorrelationID)
		return
	}
	r := replyFrom(d, w.path)
	if streamed {
		m.finishResult(d, r, w.path) // a streamed result's data (result.go)
	}
	w.answer(r)
}

// moved reports whether a reply from agent, which w was not sent to, is
// to be taken as w's result: a mapper that dropped w's agent moved w from
// that agent's queue to the shared queue (see rescue), and agent, a live
// one serving the path, ran it there. That holds only for a Request whose
// selector chooses among whichever agents serve the path (not one that
// names its agents, whose work is never moved), and outside secure mode,
// where app_id is signed and replies from others are refused. Waiting
// instead for this mapper to drop the agent too would take it a second
// more: the drain that moved it is a consumer of the agent's queue, which
// hides the agent's death from this mapper's probes while it lasts. The
// caller holds m.mu.
func (m *Mapper) moved(w *waiter, agent string) bool {
	return !m.addressed && w.sel != nil && !targeted(w.sel) && w.target != "" && agent != "" && m.reg.serving(agent, w.path, time.Now())
}

func replyFrom(d *transport.Delivery, path string) *Reply {
	r := &Reply{Agent: d.AppID, Body: json.RawMessage(d.Body)}
	if rerr := wire.ReplyError(d, path); rerr != nil {
		r.Body = nil
		r.Err = rerr
	}
	return r
}

func (m *Mapper) readBeats(ctx context.Context, ch <-chan *transport.Delivery, s *session) {
	for d := range ch {
		hb, err := wire.ReadHeartbeat(d)
		if err != nil {
			m.log.Warn("heartbeat refused", "type", d.Type, "from", d.AppID, "err", err)
			continue
		}
		m.emit(m.reg.update(d.Type, hb, time.Now()))
	}
	if ctx.Err() == nil {
		s.markLost()
	}
}

func (m *Mapper) emit(evs []Event) {
	for _, e := range evs {
		m.log.Info("agent "+string(e.Kind), "agent", e.Agent.Identity)
		switch e.Kind {
		case AgentJoined:
			m.stopRescue(e.Agent.Identity)
			m.lastJoin.Store(time.Now().UnixNano())
			m.mu.Lock()
			close(m.joined)
			m.joined = make(chan struct{})
			m.mu.Unlock()
		case AgentLeft:
			m.redispatch(e.Agent.Identity, leftGrace)
		case AgentExpired, AgentLost:
			m.redispatch(e.Agent.Identity, 0)
		}
		if m.events == nil {
			continue
		}
		select {
		case m.events <- e:
		default:
			m.dropped.Add(1)
		}
	}
}

func (m *Mapper) dispatchEvents(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-m.events:
			m.onEvent(e)
		}
	}
}

// failPending fails every call waiting for a reply with err.
func (m *Mapper) failPending(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, w := range m.pending {
		w.answer(&Reply{Err: err})
		delete(m.pending, id)
	}
}
