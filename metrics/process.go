package metrics

import (
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/warrenrpc/warren/daemon"
	"github.com/warrenrpc/warren/transport/amqp"
)

// Connection registers the connection counters of an AMQP transport in
// reg (warren_amqp_*): links lost, reconnection attempts and successes,
// messages with unreadable properties, and whether the broker blocks
// publishing now.
func Connection(t *amqp.Transport, reg prometheus.Registerer) error {
	counter := func(name, help string, f func(amqp.Stats) int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(f(t.Stats())) })
	}
	cs := []prometheus.Collector{
		counter("warren_amqp_connection_losses_total", "Links to the broker lost (either connection, or both at once).", func(s amqp.Stats) int64 { return s.Losses }),
		counter("warren_amqp_reconnect_attempts_total", "Reconnection attempts, failed or not.", func(s amqp.Stats) int64 { return s.Attempts }),
		counter("warren_amqp_reconnects_total", "Successful reconnections to the broker.", func(s amqp.Stats) int64 { return s.Reconnects }),
		counter("warren_amqp_malformed_messages_total", "Messages received with properties the client could not read (delivered with them removed).", func(s amqp.Stats) int64 { return s.Malformed }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "warren_amqp_blocked",
			Help: "1 while the broker blocks this process's publishing connection (a memory or disk alarm), else 0.",
		}, func() float64 {
			if t.Blocked() != nil {
				return 1
			}
			return 0
		}),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Daemon registers the plugin workers of a Warren daemon in reg
// (warren_daemon_*), read from its Status at each scrape: worker
// restarts, workers running and busy, calls answered by result, calls in
// flight, and config reloads.
func Daemon(d *daemon.Daemon, reg prometheus.Registerer) error {
	return reg.Register(daemonCollector{d})
}

type daemonCollector struct{ d *daemon.Daemon }

var (
	daemonRestarts = prometheus.NewDesc("warren_daemon_worker_restarts_total", "Plugin worker processes replaced (crashed, timed out, or recycled), by plugin.", []string{"plugin"}, nil)
	daemonRunning  = prometheus.NewDesc("warren_daemon_workers_running", "Plugin worker processes alive, by plugin.", []string{"plugin"}, nil)
	daemonBusy     = prometheus.NewDesc("warren_daemon_workers_busy", "Plugin worker processes in a call, by plugin.", []string{"plugin"}, nil)
	daemonCalls    = prometheus.NewDesc("warren_daemon_calls_total", "Calls a plugin answered, by plugin and result (ok, error).", []string{"plugin", "result"}, nil)
	daemonInFlight = prometheus.NewDesc("warren_daemon_calls_in_flight", "Calls a plugin is working on, by plugin.", []string{"plugin"}, nil)
	daemonReloads  = prometheus.NewDesc("warren_daemon_reloads_total", "Config reloads applied.", nil, nil)
)

func (c daemonCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{daemonRestarts, daemonRunning, daemonBusy, daemonCalls, daemonInFlight, daemonReloads} {
		ch <- d
	}
}

func (c daemonCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.d.Status()
	ch <- prometheus.MustNewConstMetric(daemonReloads, prometheus.CounterValue, float64(st.Reloads))
	for _, p := range st.Plugins {
		ch <- prometheus.MustNewConstMetric(daemonRestarts, prometheus.CounterValue, float64(p.Restarts), p.Name)
		ch <- prometheus.MustNewConstMetric(daemonRunning, prometheus.GaugeValue, float64(p.Running), p.Name)
		ch <- prometheus.MustNewConstMetric(daemonBusy, prometheus.GaugeValue, float64(p.Busy), p.Name)
		ch <- prometheus.MustNewConstMetric(daemonCalls, prometheus.CounterValue, float64(p.Handled), p.Name, "ok")
		ch <- prometheus.MustNewConstMetric(daemonCalls, prometheus.CounterValue, float64(p.Failed), p.Name, "error")
		ch <- prometheus.MustNewConstMetric(daemonInFlight, prometheus.GaugeValue, float64(p.InFlight), p.Name)
	}
}

// BERT registers a BERT-RPC server's statistics in reg (warren_bert_*),
// read at each scrape from stats, the server's Stats text (Ernie's
// key=value lines: bertrpc.Server.Stats).
func BERT(stats func() string, reg prometheus.Registerer) error {
	return reg.Register(bertCollector{stats})
}

type bertCollector struct{ stats func() string }

// bertStats maps Ernie's stats keys to metrics.
var bertStats = map[string]struct {
	desc *prometheus.Desc
	typ  prometheus.ValueType
	lv   []string
}{
	"connections.total":     {prometheus.NewDesc("warren_bert_requests_total", "Calls and casts received (Ernie's connections.total).", nil, nil), prometheus.CounterValue, nil},
	"connections.completed": {prometheus.NewDesc("warren_bert_requests_completed_total", "Calls and casts finished (Ernie's connections.completed).", nil, nil), prometheus.CounterValue, nil},
	"queue.high":            {bertQueue, prometheus.GaugeValue, []string{"high"}},
	"queue.low":             {bertQueue, prometheus.GaugeValue, []string{"low"}},
	"tcp.open":              {prometheus.NewDesc("warren_bert_connections_open", "Client connections open.", nil, nil), prometheus.GaugeValue, nil},
	"tcp.evicted":           {prometheus.NewDesc("warren_bert_connections_evicted_total", "Idle client connections closed at max_connections.", nil, nil), prometheus.CounterValue, nil},
	"tcp.refused":           {prometheus.NewDesc("warren_bert_connections_refused_total", "Client connections refused (max_connections, or no file descriptors).", nil, nil), prometheus.CounterValue, nil},
	"casts.pending":         {prometheus.NewDesc("warren_bert_casts_pending", "Casts acknowledged and not yet finished.", nil, nil), prometheus.GaugeValue, nil},
	"casts.refused":         {prometheus.NewDesc("warren_bert_casts_refused_total", "Casts refused at max_pending_casts.", nil, nil), prometheus.CounterValue, nil},
}

var (
	bertQueue = prometheus.NewDesc("warren_bert_queue_length", "Requests waiting for a worker, by priority.", []string{"priority"}, nil)
	bertIdle  = prometheus.NewDesc("warren_bert_workers_idle", "Idle external workers, by module.", []string{"module"}, nil)
)

func (c bertCollector) Describe(ch chan<- *prometheus.Desc) {
	seen := map[*prometheus.Desc]bool{}
	for _, s := range bertStats {
		if !seen[s.desc] {
			seen[s.desc] = true
			ch <- s.desc
		}
	}
	ch <- bertIdle
}

func (c bertCollector) Collect(ch chan<- prometheus.Metric) {
	for line := range strings.SplitSeq(c.stats(), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			continue // "native", "fabric": not a worker pool
		}
		if module, ok := strings.CutPrefix(k, "workers.idle."); ok {
			ch <- prometheus.MustNewConstMetric(bertIdle, prometheus.GaugeValue, n, module)
			continue
		}
		if s, ok := bertStats[k]; ok {
			ch <- prometheus.MustNewConstMetric(s.desc, s.typ, n, s.lv...)
		}
	}
}
