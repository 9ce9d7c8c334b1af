package tower

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/warrenrpc/warren/mapper"
)

// metrics are the Tower's Prometheus metrics, in a registry of its own
// (so that two Towers in one process, or a program that embeds one, do not
// collide). docs/operations.md lists them.
type metrics struct {
	reg *prometheus.Registry

	requests *prometheus.CounterVec   // path, kind
	errors   *prometheus.CounterVec   // path, code
	latency  *prometheus.HistogramVec // path, kind
	inFlight prometheus.Gauge
	events   *prometheus.CounterVec // event
	agents   prometheus.Gauge
	services prometheus.Gauge
	oldest   prometheus.Gauge
	pages    prometheus.GaugeFunc
	dlqOps   *prometheus.CounterVec // op
}

func newMetrics(t *Tower) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "warren_tower_requests_total",
		Help: "Requests and pushes sent through the Tower, by service path (\"other\" for a path no live agent serves) and kind (request, fanout, push).",
	}, []string{"path", "kind"})
	m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "warren_tower_request_errors_total",
		Help: "Failed replies and calls of the requests sent through the Tower, by path and error code (one per failed responder).",
	}, []string{"path", "code"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "warren_tower_request_duration_seconds",
		Help:    "Time from sending a request through the Tower to its last reply, by path and kind.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5ms .. 16s
	}, []string{"path", "kind"})
	m.inFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "warren_tower_requests_in_flight",
		Help: "Requests and pushes the Tower is sending or waiting for now.",
	})
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "warren_registry_events_total",
		Help: "Registry changes seen by the Tower's mapper, by event (joined, left, expired).",
	}, []string{"event"})
	m.agents = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "warren_registry_agents",
		Help: "Live agents in the Tower's registry.",
	})
	m.services = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "warren_registry_services",
		Help: "Distinct service paths the live agents serve.",
	})
	m.oldest = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "warren_registry_heartbeat_age_max_seconds",
		Help: "Age of the oldest latest heartbeat among the live agents.",
	})
	m.pages = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "warren_tower_live_pages",
		Help: "Pages receiving live updates (server-sent event streams open).",
	}, func() float64 { return float64(t.hub.clients()) })
	m.dlqOps = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "warren_tower_dead_letters_total",
		Help: "Dead letters replayed or purged through the Tower, by operation.",
	}, []string{"op"})
	m.reg.MustRegister(m.requests, m.errors, m.latency, m.inFlight, m.events, m.agents, m.services, m.oldest, m.pages, m.dlqOps,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, e := range []mapper.EventKind{mapper.AgentJoined, mapper.AgentLeft, mapper.AgentExpired} {
		m.events.WithLabelValues(string(e))
	}
	return m
}

// observeRegistry updates the registry gauges.
func (m *metrics) observeRegistry(agents []mapper.AgentInfo, now time.Time) {
	paths := map[string]bool{}
	var oldest time.Duration
	for _, a := range agents {
		for _, p := range a.Services {
			paths[p] = true
		}
		oldest = max(oldest, now.Sub(a.LastSeen))
	}
	m.agents.Set(float64(len(agents)))
	m.services.Set(float64(len(paths)))
	m.oldest.Set(oldest.Seconds())
}
