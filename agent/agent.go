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
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	for _, r := range c.Identity {
		if r <= ' ' || r == '/' {
			return fmt.Errorf("agent: identity %q: no spaces, control characters or slashes", c.Identity)
		}
	}
	if c.PingInterval < 0 || c.Prefetch < 0 || c.DrainTimeout < 0 {
		return errors.New("agent: ping_interval, prefetch and drain_timeout must not be negative")
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
	handlers map[string]Handler
	running  bool

	ready    chan struct{}
	inflight sync.WaitGroup
	handled  atomic.Int64
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
		tr:       tr,
		cfg:      cfg,
		log:      o.log.With("component", "agent", "agent", cfg.Identity),
		status:   o.status,
		handlers: map[string]Handler{},
		ready:    make(chan struct{}),
	}, nil
}

// Identity returns the agent's identity.
func (a *Agent) Identity() string { return a.cfg.Identity }

// Ready is closed once the agent consumes its queues and has registered.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Handled returns how many requests and pushes the agent has settled.
func (a *Agent) Handled() int64 { return a.handled.Load() }

// Handle serves path ("/actor/method") with h. Call it before Run.
func (a *Agent) Handle(path string, h Handler) error {
	if err := wire.CheckPath(path); err != nil {
		return err
	}
	if h == nil {
		return fmt.Errorf("agent: nil handler for %s", path)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.running {
		return fmt.Errorf("agent: Handle(%s) after Run", path)
	}
	if _, dup := a.handlers[path]; dup {
		return fmt.Errorf("agent: %s registered twice", path)
	}
	a.handlers[path] = h
	return nil
}

// Expose serves the exported methods of v as /actor/<method>, method names
// in snake_case (GetLoad → get_load). A method must look like
//
//	func(ctx context.Context, in In) (Out, error)
//
// where the In argument and the Out result are optional and In may be
// *Request for the raw request. Other methods are skipped.
func (a *Agent) Expose(actor string, v any) error {
	hs, err := methodHandlers(v)
	if err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(hs)) {
		if err := a.Handle("/"+actor+"/"+name, hs[name]); err != nil {
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

// Run declares the agent's queues, registers with the mappers, serves until
// ctx ends, then drains: it stops taking work, finishes what is in hand
// (up to DrainTimeout), unregisters and returns nil. It returns an error when
// the broker refuses the topology or the transport fails.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	if a.running {
		a.mu.Unlock()
		return errors.New("agent: Run called twice")
	}
	a.running = true
	a.mu.Unlock()
	if len(a.handlers) == 0 {
		return errors.New("agent: no handlers: call Handle or Expose before Run")
	}
	a.started = time.Now()

	// consumeCtx outlives ctx during the drain, so that work in hand can
	// still be acknowledged; cancelling it requeues whatever was not taken.
	consumeCtx, stopConsumers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopConsumers()
	// handlerCtx is cancelled when the drain times out.
	handlerCtx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()

	sources, control, err := a.declare(consumeCtx)
	if err != nil {
		return err
	}
	draining := make(chan struct{})
	var loops sync.WaitGroup
	for _, src := range sources {
		loops.Go(func() { a.consumeLoop(handlerCtx, src, draining) })
	}
	if err := a.beat(consumeCtx, wire.TypeRegister); err != nil {
		stopConsumers()
		loops.Wait()
		return err
	}
	a.log.Info("agent registered", "services", a.Services(), "tags", a.cfg.Tags)
	close(a.ready)

	ticker := time.NewTicker(a.cfg.PingInterval)
	defer ticker.Stop()
	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-ticker.C:
			if err := a.beat(consumeCtx, wire.TypePing); err != nil {
				a.log.Warn("ping failed", "err", err)
			}
		case d, ok := <-control:
			if !ok {
				runErr = errors.New("agent: control queue closed by the broker")
				break loop
			}
			if d.Type == wire.TypeAnnounce {
				if err := a.beat(consumeCtx, wire.TypePing); err != nil {
					a.log.Warn("announce reply failed", "err", err)
				}
			}
		}
	}

	// Drain: stop taking work, finish what is in hand, then unregister.
	close(draining)
	loops.Wait()
	done := make(chan struct{})
	go func() { a.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(a.cfg.DrainTimeout):
		a.log.Warn("drain timeout: cancelling handlers; their requests are requeued")
		cancelHandlers()
		<-done
	}
	uctx, cancel := context.WithTimeout(consumeCtx, 5*time.Second)
	if err := a.beat(uctx, wire.TypeUnregister); err != nil && runErr == nil {
		a.log.Warn("unregister failed", "err", err)
	}
	cancel()
	a.log.Info("agent stopped", "handled", a.handled.Load())
	return runErr
}

// declare creates the agent's queues and starts its consumers. It returns
// the request sources and the control channel.
func (a *Agent) declare(ctx context.Context) ([]<-chan *transport.Delivery, <-chan *transport.Delivery, error) {
	tr := a.tr
	if err := wire.Topology(ctx, tr); err != nil {
		return nil, nil, fmt.Errorf("agent: %w", err)
	}
	expires := max(10*a.cfg.PingInterval, time.Minute)
	own := wire.AgentQueue(a.cfg.Identity)
	if _, err := tr.DeclareQueue(ctx, transport.Queue{Name: own, Expires: expires, DeadLetterExchange: wire.DeadLetterExchange}); err != nil {
		return nil, nil, fmt.Errorf("agent: declare %s: %w", own, err)
	}
	if err := tr.Bind(ctx, transport.Binding{Exchange: wire.RequestExchange, Queue: own, Key: a.cfg.Identity}); err != nil {
		return nil, nil, fmt.Errorf("agent: bind %s: %w", own, err)
	}
	queues := []string{own}
	if !a.cfg.NoSharedQueues {
		for _, p := range a.Services() {
			q := wire.ServiceQueue(p)
			if _, err := tr.DeclareQueue(ctx, transport.Queue{Name: q, Durable: true, DeadLetterExchange: wire.DeadLetterExchange}); err != nil {
				return nil, nil, fmt.Errorf("agent: declare %s: %w", q, err)
			}
			if err := tr.Bind(ctx, transport.Binding{Exchange: wire.ServiceExchange, Queue: q, Key: p}); err != nil {
				return nil, nil, fmt.Errorf("agent: bind %s: %w", q, err)
			}
			queues = append(queues, q)
		}
	}
	cq, err := tr.DeclareQueue(ctx, transport.Queue{Exclusive: true, AutoDelete: true})
	if err != nil {
		return nil, nil, fmt.Errorf("agent: declare control queue: %w", err)
	}
	if err := tr.Bind(ctx, transport.Binding{Exchange: wire.ControlExchange, Queue: cq}); err != nil {
		return nil, nil, fmt.Errorf("agent: bind control queue: %w", err)
	}
	control, err := tr.Consume(ctx, cq, transport.ConsumeOptions{AutoAck: true, Exclusive: true})
	if err != nil {
		return nil, nil, fmt.Errorf("agent: consume control queue: %w", err)
	}
	var sources []<-chan *transport.Delivery
	for _, q := range queues {
		ch, err := tr.Consume(ctx, q, transport.ConsumeOptions{Prefetch: a.cfg.Prefetch})
		if err != nil {
			return nil, nil, fmt.Errorf("agent: consume %s: %w", q, err)
		}
		sources = append(sources, ch)
	}
	return sources, control, nil
}

// consumeLoop takes deliveries from src until draining is closed, starting
// one goroutine per delivery; the prefetch bounds how many run at once.
func (a *Agent) consumeLoop(ctx context.Context, src <-chan *transport.Delivery, draining <-chan struct{}) {
	for {
		select {
		case <-draining:
			return
		case d, ok := <-src:
			if !ok {
				return
			}
			a.inflight.Add(1)
			go func() {
				defer a.inflight.Done()
				a.serve(ctx, d)
			}()
		}
	}
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
		Started:      a.started.UTC(),
	}
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
		AppID:       "warren",
		Timestamp:   time.Now(),
		Headers:     map[string]any{wire.HeaderFrom: a.cfg.Identity, wire.HeaderVersion: int64(wire.Version)},
	}
	if err := a.tr.Publish(ctx, wire.HeartbeatExchange, "", msg, transport.PublishOptions{}); err != nil {
		return fmt.Errorf("agent: %s: %w", typ, err)
	}
	return nil
}

// serve handles one delivery from start to settlement.
func (a *Agent) serve(ctx context.Context, d *transport.Delivery) {
	defer a.handled.Add(1)
	log := a.log.With("message_id", d.MessageID, "correlation_id", d.CorrelationID)
	req, code, err := a.parse(d)
	if err != nil {
		log.Warn("bad message", "err", err, "code", code, "routing_key", d.RoutingKey)
		a.fail(ctx, d, req, code, err.Error())
		return
	}
	log = log.With("service", req.Path)
	if !req.Deadline.IsZero() && !time.Now().Before(req.Deadline) {
		log.Warn("deadline passed before start: not executed")
		a.fail(ctx, d, req, wire.CodeExpired, "deadline passed before the agent started the request")
		return
	}
	a.mu.Lock()
	h := a.handlers[req.Path]
	a.mu.Unlock()
	if h == nil {
		log.Warn("no such service")
		a.fail(ctx, d, req, wire.CodeNoSuchService, fmt.Sprintf("agent %s does not serve %s", a.cfg.Identity, req.Path))
		return
	}
	hctx := ctx
	if !req.Deadline.IsZero() {
		var cancel context.CancelFunc
		hctx, cancel = context.WithDeadline(ctx, req.Deadline)
		defer cancel()
	}
	result, herr := call(hctx, h, req)
	if ctx.Err() != nil && herr != nil {
		// The drain timed out under the handler: give the work back.
		log.Warn("handler cancelled by shutdown: requeued", "err", herr)
		a.settle(d, false, true)
		return
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
	a.reply(ctx, d, transport.Message{Body: body, Headers: map[string]any{wire.HeaderStatus: wire.StatusOK}})
}

// call runs the handler, turning a panic into an error.
func call(ctx context.Context, h Handler, req *Request) (res any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &Error{Code: wire.CodePanic, Message: fmt.Sprintf("panic: %v\n%s", r, debug.Stack())}
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
		From:        wire.String(d.Headers, wire.HeaderFrom),
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
// reason, then acks d. If that publish fails, d is rejected, which
// dead-letters it through the queue's own dead-letter exchange.
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
	if err := a.tr.Publish(pctx, wire.DeadLetterExchange, d.RoutingKey, msg, transport.PublishOptions{Confirm: true}); err != nil {
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
	msg.AppID = "warren"
	msg.Timestamp = time.Now()
	msg.Headers[wire.HeaderAgent] = a.cfg.Identity
	if p := wire.String(d.Headers, wire.HeaderPath); p != "" {
		msg.Headers[wire.HeaderPath] = p
	}
	if from := wire.String(d.Headers, wire.HeaderFrom); from != "" {
		msg.Headers[wire.HeaderTo] = from
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
