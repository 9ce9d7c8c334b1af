package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricsServer serves a Prometheus registry on /metrics, for
// --metrics-addr (docs/operations.md).
type metricsServer struct {
	reg  *prometheus.Registry
	srv  *http.Server
	addr net.Addr
	done chan struct{}
}

// newMetricsRegistry is a registry with the Go runtime's and the
// process's collectors, as the Tower's has.
func newMetricsRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// serveMetrics listens on addr at once (a port in use is an error now,
// not later) and serves reg on /metrics until stop.
func serveMetrics(g *Globals, addr string, reg *prometheus.Registry) (*metricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	m := &metricsServer{reg: reg, addr: ln.Addr(), done: make(chan struct{}),
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	go func() {
		defer close(m.done)
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.Logger().Error("metrics server stopped", "err", err)
		}
	}()
	g.Logger().Info("serving metrics", "addr", m.addr.String(), "path", "/metrics")
	return m, nil
}

// stop closes the server; a scrape in progress gets a second to finish.
func (m *metricsServer) stop() {
	if m == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = m.srv.Shutdown(ctx)
	<-m.done
}
