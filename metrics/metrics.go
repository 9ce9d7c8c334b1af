// Package metrics gives agents and mappers Prometheus metrics, as an
// option: wrap the transport an agent or a mapper runs on, and register
// the mapper's registry gauges.
//
//	reg := prometheus.NewRegistry()
//	tr, err := metrics.Agent(tr, reg)       // before agent.New(tr, ...)
//	tr, err := metrics.Mapper(tr, reg)      // before mapper.New(tr, ...)
//	err = metrics.Registry(m, reg)          // the mapper's live agents
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// The wrappers read the messages that pass with package wire's readers,
// so they count what the agent or mapper actually received and sent: an
// agent's requests and pushes by path, its error replies by code, its
// dead letters by reason, redeliveries, the time from delivery to
// acknowledgement and the deliveries in hand; a mapper's requests and
// pushes by path, the time from a request to each reply, error replies by
// code, replies that never came, late replies and requests awaiting a
// reply. Wrap outside secure mode (metrics.Agent(secure.Wrap(...))) so
// that they see the messages in clear. Paths become labels only up to
// MaxPaths distinct paths per process; later ones count as "other".
//
// Connection adds an AMQP transport's reconnections and blocking, Daemon
// a daemon's plugin workers (restarts, calls), BERT a BERT-RPC server's
// statistics. docs/operations.md lists the metrics.
package metrics

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// MaxPaths bounds the distinct path labels of one wrapper.
const MaxPaths = 200

// buckets of the latency histograms: 0.5ms to 16s, doubling.
var buckets = prometheus.ExponentialBuckets(0.0005, 2, 16)

// paths turns paths into bounded labels.
type paths struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (p *paths) label(path string) string {
	if path == "" {
		return "unknown"
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.seen == nil {
		p.seen = map[string]bool{}
	}
	if p.seen[path] {
		return path
	}
	if len(p.seen) >= MaxPaths {
		return "other"
	}
	p.seen[path] = true
	return path
}

func kind(typ string) string {
	if typ == wire.TypePush {
		return "push"
	}
	return "request"
}

// agentTransport counts an agent's work.
type agentTransport struct {
	transport.Transport
	paths    paths
	confirms *prometheus.CounterVec   // result
	requests *prometheus.CounterVec   // path, kind
	errors   *prometheus.CounterVec   // path, code
	dead     *prometheus.CounterVec   // path, reason
	redeliv  *prometheus.CounterVec   // path
	duration *prometheus.HistogramVec // path, kind
	inFlight prometheus.Gauge

	mu      sync.Mutex
	replyTo map[string]string // correlation id -> path, of requests in hand
}

// Agent returns tr counting the work of the agent that runs on it, with
// its metrics registered in reg (warren_agent_*).
func Agent(tr transport.Transport, reg prometheus.Registerer) (transport.Transport, error) {
	a := &agentTransport{
		Transport: tr,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_agent_requests_total",
			Help: "Requests and pushes delivered to the agent, by service path and kind (request, push).",
		}, []string{"path", "kind"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_agent_request_errors_total",
			Help: "Error replies the agent sent, by path and error code.",
		}, []string{"path", "code"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_agent_dead_letters_total",
			Help: "Messages the agent dead-lettered, by path and reason.",
		}, []string{"path", "reason"}),
		redeliv: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_agent_redeliveries_total",
			Help: "Deliveries marked redelivered by the broker (delivered before, not acknowledged), by path.",
		}, []string{"path"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "warren_agent_request_duration_seconds",
			Help:    "Time from the delivery of a request or push to its acknowledgement (handler and reply included), by path and kind.",
			Buckets: buckets,
		}, []string{"path", "kind"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_agent_requests_in_flight",
			Help: "Requests and pushes delivered to the agent and not yet acknowledged.",
		}),
		replyTo:  map[string]string{},
		confirms: confirmsVec("warren_agent_publish_confirms_total"),
	}
	for _, c := range []prometheus.Collector{a.requests, a.errors, a.dead, a.redeliv, a.duration, a.inFlight, a.confirms} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return a, nil
}

func (a *agentTransport) Consume(ctx context.Context, queue string, opts transport.ConsumeOptions) (<-chan *transport.Delivery, error) {
	in, err := a.Transport.Consume(ctx, queue, opts)
	if err != nil {
		return nil, err
	}
	return relay(ctx, in, a.wrap), nil
}

// wrap counts a delivered request or push and times it to its settlement.
func (a *agentTransport) wrap(d *transport.Delivery) *transport.Delivery {
	if d.Type != wire.TypeRequest && d.Type != wire.TypePush {
		return d
	}
	req, _ := wire.ReadRequest(d) // a bad one is counted under its path, or "unknown"
	path, k := a.paths.label(req.Path), kind(d.Type)
	a.requests.WithLabelValues(path, k).Inc()
	if d.Redelivered {
		a.redeliv.WithLabelValues(path).Inc()
	}
	a.inFlight.Inc()
	corr := d.CorrelationID
	if d.ReplyTo != "" && corr != "" {
		a.mu.Lock()
		a.replyTo[corr] = path
		a.mu.Unlock()
	}
	start := time.Now()
	var once sync.Once
	done := func() {
		once.Do(func() {
			a.inFlight.Dec()
			a.duration.WithLabelValues(path, k).Observe(time.Since(start).Seconds())
			if corr != "" {
				a.mu.Lock()
				delete(a.replyTo, corr)
				a.mu.Unlock()
			}
		})
	}
	nd := transport.NewDelivery(d.Message, func(ack, requeue bool) error {
		defer done()
		if ack {
			return d.Ack()
		}
		return d.Nack(requeue)
	})
	nd.Exchange, nd.RoutingKey, nd.Redelivered, nd.ConsumerTag = d.Exchange, d.RoutingKey, d.Redelivered, d.ConsumerTag
	return nd
}

// WantsRecipient passes on the wrapped transport's (secure mode's) wish.
func (a *agentTransport) WantsRecipient() bool { return wire.WantsRecipient(a.Transport) }

func (a *agentTransport) Publish(ctx context.Context, exchange, key string, msg transport.Message, opts transport.PublishOptions) error {
	err := a.Transport.Publish(ctx, exchange, key, msg, opts)
	countConfirm(a.confirms, opts, err)
	if err != nil {
		return err
	}
	switch {
	case exchange == wire.DeadLetterExchange:
		a.dead.WithLabelValues(a.paths.label(wire.String(msg.Headers, wire.HeaderPath)), wire.String(msg.Headers, wire.HeaderReason)).Inc()
	case msg.Type == wire.TypeReply:
		d := transport.Delivery{Message: msg}
		if rerr := wire.ReplyError(&d, ""); rerr != nil {
			a.mu.Lock()
			path, ok := a.replyTo[msg.CorrelationID]
			a.mu.Unlock()
			if !ok {
				path = "unknown"
			}
			a.errors.WithLabelValues(path, rerr.Code).Inc()
		}
	}
	return nil
}

// confirmsVec counts the outcome of publishes that wait for the broker.
func confirmsVec(name string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: name,
		Help: "Publishes that waited for the broker (publisher confirms, mandatory), by result: ack, nack (the broker refused it), returned (no queue took a mandatory message), error (connection lost, timeout).",
	}, []string{"result"})
}

// countConfirm counts the outcome of a publish made with opts. An
// Unconfirmed mandatory publish waited for nothing: it is counted only when
// it failed, here or by a return (see mapperTransport.NotifyReturn).
func countConfirm(c *prometheus.CounterVec, opts transport.PublishOptions, err error) {
	waited := opts.Confirm || opts.Mandatory && !opts.Unconfirmed
	if !waited && !(opts.Mandatory && err != nil) {
		return
	}
	result := "ack"
	switch {
	case err == nil:
	case errors.Is(err, transport.ErrNacked):
		result = "nack"
	case errors.Is(err, transport.ErrUnroutable):
		result = "returned"
	default:
		result = "error"
	}
	c.WithLabelValues(result).Inc()
}

// relay forwards deliveries from in through f until in closes or ctx
// ends; the returned channel is closed then.
func relay(ctx context.Context, in <-chan *transport.Delivery, f func(*transport.Delivery) *transport.Delivery) <-chan *transport.Delivery {
	out := make(chan *transport.Delivery)
	go func() {
		defer close(out)
		for d := range in {
			select {
			case out <- f(d):
			case <-ctx.Done():
				// The consumer is stopping: the transport requeues what it
				// did not settle, this delivery included.
				for range in {
				}
				return
			}
		}
	}()
	return out
}

// mapperTransport times a mapper's requests to their replies.
type mapperTransport struct {
	transport.Transport
	paths    paths
	confirms *prometheus.CounterVec   // result
	requests *prometheus.CounterVec   // path, kind
	errors   *prometheus.CounterVec   // path, code
	missing  *prometheus.CounterVec   // path
	duration *prometheus.HistogramVec // path
	late     prometheus.Counter
	waiting  prometheus.Gauge

	mu        sync.Mutex
	pending   map[string]*pending // by correlation id
	lastSweep time.Time
}

type pending struct {
	path    string
	start   time.Time
	expires time.Time
	n       int // replies still expected (one per agent a fan-out reached)
}

// noDeadline is how long a request sent without a deadline is awaited
// before it counts as unanswered.
const noDeadline = 10 * time.Minute

// Mapper returns tr timing the requests of the mapper that runs on it,
// with its metrics registered in reg (warren_mapper_*).
func Mapper(tr transport.Transport, reg prometheus.Registerer) (transport.Transport, error) {
	m := &mapperTransport{
		Transport: tr,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_mapper_requests_total",
			Help: "Requests and pushes the mapper sent, one per agent reached, by path and kind (request, push).",
		}, []string{"path", "kind"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_mapper_request_errors_total",
			Help: "Error replies the mapper received, by path and error code.",
		}, []string{"path", "code"}),
		missing: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_mapper_unanswered_total",
			Help: "Requests whose deadline passed without a reply, by path.",
		}, []string{"path"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "warren_mapper_request_duration_seconds",
			Help:    "Time from sending a request to its reply, by path.",
			Buckets: buckets,
		}, []string{"path"}),
		late: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warren_mapper_late_replies_total",
			Help: "Replies to no request awaited (after their deadline, or twice).",
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_mapper_requests_in_flight",
			Help: "Replies the mapper awaits.",
		}),
		pending:  map[string]*pending{},
		confirms: confirmsVec("warren_mapper_publish_confirms_total"),
	}
	for _, c := range []prometheus.Collector{m.requests, m.errors, m.missing, m.duration, m.late, m.waiting, m.confirms} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *mapperTransport) Publish(ctx context.Context, exchange, key string, msg transport.Message, opts transport.PublishOptions) error {
	if msg.Type != wire.TypeRequest && msg.Type != wire.TypePush {
		err := m.Transport.Publish(ctx, exchange, key, msg, opts)
		countConfirm(m.confirms, opts, err)
		return err
	}
	path := m.paths.label(wire.String(msg.Headers, wire.HeaderPath))
	// The reply can come before Publish returns: await it first.
	awaits := msg.ReplyTo != "" && msg.CorrelationID != ""
	if awaits {
		m.await(msg, path)
	}
	err := m.Transport.Publish(ctx, exchange, key, msg, opts)
	countConfirm(m.confirms, opts, err)
	if err != nil {
		if awaits {
			m.unawait(msg.CorrelationID)
		}
		return err
	}
	m.requests.WithLabelValues(path, kind(msg.Type)).Inc()
	return nil
}

func (m *mapperTransport) await(msg transport.Message, path string) {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweep(now)
	p := m.pending[msg.CorrelationID]
	if p == nil {
		exp := now.Add(noDeadline)
		if dl, ok := wire.Deadline(msg.Headers); ok {
			exp = dl
		}
		p = &pending{path: path, start: now, expires: exp}
		m.pending[msg.CorrelationID] = p
	}
	p.n++
	m.waiting.Inc()
}

// unawait takes back an await whose publish failed.
func (m *mapperTransport) unawait(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.pending[id]; p != nil {
		p.n--
		m.waiting.Dec()
		if p.n <= 0 {
			delete(m.pending, id)
		}
	}
}

// sweep counts as unanswered the replies awaited past their deadline
// (at most once a second). Called with mu held.
func (m *mapperTransport) sweep(now time.Time) {
	if now.Sub(m.lastSweep) < time.Second {
		return
	}
	m.lastSweep = now
	for id, p := range m.pending {
		if now.After(p.expires.Add(time.Second)) {
			m.missing.WithLabelValues(p.path).Add(float64(p.n))
			m.waiting.Sub(float64(p.n))
			delete(m.pending, id)
		}
	}
}

// WantsRecipient passes on the wrapped transport's (secure mode's) wish.
func (m *mapperTransport) WantsRecipient() bool { return wire.WantsRecipient(m.Transport) }

// NotifyReturn forwards to the wrapped transport (transport.Returner), so
// that the mapper publishes its requests as it would without metrics, and
// counts each return as the confirm would have been counted: returned
// (or error), and the request no longer awaited.
func (m *mapperTransport) NotifyReturn(f func(transport.Return)) (stop func(), ok bool) {
	return transport.NotifyReturn(m.Transport, func(r transport.Return) {
		countConfirm(m.confirms, transport.PublishOptions{Mandatory: true}, r.Err)
		if r.CorrelationID != "" {
			m.unawait(r.CorrelationID)
		}
		f(r)
	})
}

func (m *mapperTransport) Consume(ctx context.Context, queue string, opts transport.ConsumeOptions) (<-chan *transport.Delivery, error) {
	in, err := m.Transport.Consume(ctx, queue, opts)
	if err != nil {
		return nil, err
	}
	return relay(ctx, in, m.reply), nil
}

func (m *mapperTransport) reply(d *transport.Delivery) *transport.Delivery {
	if d.Type != wire.TypeReply {
		return d
	}
	now := time.Now()
	m.mu.Lock()
	p := m.pending[d.CorrelationID]
	if p != nil {
		p.n--
		m.waiting.Dec()
		if p.n <= 0 {
			delete(m.pending, d.CorrelationID)
		}
	}
	m.mu.Unlock()
	if p == nil {
		m.late.Inc()
		return d
	}
	m.duration.WithLabelValues(p.path).Observe(now.Sub(p.start).Seconds())
	if rerr := wire.ReplyError(d, p.path); rerr != nil {
		m.errors.WithLabelValues(p.path, rerr.Code).Inc()
	}
	return d
}

// Registry registers gauges of m's registry in reg: the live agents, the
// service paths they serve and the age of the oldest latest heartbeat.
func Registry(m *mapper.Mapper, reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "warren_registry_agents",
			Help: "Live agents in the mapper's registry.",
		}, func() float64 { return float64(len(m.Agents())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "warren_registry_services",
			Help: "Distinct service paths the live agents serve.",
		}, func() float64 {
			seen := map[string]bool{}
			for _, a := range m.Agents() {
				for _, p := range a.Services {
					seen[p] = true
				}
			}
			return float64(len(seen))
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "warren_registry_heartbeat_age_max_seconds",
			Help: "Age of the oldest latest heartbeat among the live agents.",
		}, func() float64 {
			var oldest time.Duration
			now := time.Now()
			for _, a := range m.Agents() {
				oldest = max(oldest, now.Sub(a.LastSeen))
			}
			return oldest.Seconds()
		}),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
