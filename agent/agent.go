package agent

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

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
	// PingInterval is how often the agent sends its status; 0 means 15s,
	// else wire.MinPingInterval to wire.MaxPingInterval (10ms to 1h).
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
	// IdentityWait is how long Run, when it starts, waits for another
	// consumer of the agent's own queue to go before it fails with
	// ErrIdentityInUse (the agent consumes its queue exclusively). That
	// consumer is another agent with the same identity, a mapper moving
	// what a dropped agent left in its queue (a minute at most), or this
	// agent's previous connection that the broker has not closed yet (a
	// crashed host: two heartbeats). 0 means 30s. After a reconnection the
	// agent waits as long as it takes, logging an error each time.
	IdentityWait time.Duration `yaml:"identity_wait"`
	// Version is the version of the actors the agent hosts, as discovery
	// reports it (SemVer, like NATS micro's); "" means 0.0.0.
	Version string `yaml:"version"`
}

// ErrIdentityInUse is returned by Run when the agent's own queue kept
// another consumer for IdentityWait: another agent with this identity is
// running.
var ErrIdentityInUse = errors.New("agent: identity in use")

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
	if c.IdentityWait <= 0 {
		c.IdentityWait = 30 * time.Second
	}
	if c.Version == "" {
		c.Version = "0.0.0"
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	if c.Identity != "" {
		if err := wire.CheckIdentity(c.Identity); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
	}
	if c.PingInterval < 0 || c.Prefetch < 0 || c.DrainTimeout < 0 || c.MaxDeliveries < 0 || c.MaxMessageSize < 0 || c.MaxDepth < 0 || c.IdentityWait < 0 {
		return errors.New("agent: ping_interval, prefetch, drain_timeout, max_deliveries, max_message_size, max_depth and identity_wait must not be negative")
	}
	if c.Version != "" && !semver.MatchString(c.Version) {
		return fmt.Errorf("agent: version %q: want SemVer (1.2.3)", c.Version)
	}
	if c.PingInterval != 0 && (c.PingInterval < wire.MinPingInterval || c.PingInterval > wire.MaxPingInterval) {
		return fmt.Errorf("agent: ping_interval %v: want %v to %v", c.PingInterval, wire.MinPingInterval, wire.MaxPingInterval)
	}
	return nil
}

// Option sets what only Go can pass.
type Option func(*options)

type options struct {
	log    *slog.Logger
	status func() any
	stream StreamConfig
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
	inFlight atomic.Int64 // deliveries in serve
	// draining is set when Run's context ended: every service is then
	// advertised as inactive and what reaches the agent is passed on.
	draining atomic.Bool
	// staleOwn is how many consumers of the agent's own queue may be its
	// own lost sessions' (Run's goroutine only): a quorum queue (durable
	// agent) keeps counting the consumer of a connection whose node went
	// down until that node returns.
	staleOwn int
	streams  streamTable // streamed requests being received (stream.go)
	// replyCtx is the context replies are published with (see
	// replyContext).
	replyCtx atomic.Pointer[replyCtx]
	sending  senders // streamed results being sent (result.go)
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
		streams:   streamTable{cfg: o.stream},
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
	prefetch int           // 0: the agent's Prefetch
	active   func() bool   // nil: always active
	sem      chan struct{} // bounds concurrent requests from the agent queue
	stats    endpointStats // for discovery (discovery.go)
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

// Durable once made the service's shared queue a durable quorum queue with
// a delivery limit (Config.MaxDeliveries). Every shared queue is now
// declared that way (wire.DeclareShared), so it does nothing.
//
// Deprecated: shared queues are always quorum queues; drop the option.
func Durable() HandlerOption { return func(*service) {} }

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
