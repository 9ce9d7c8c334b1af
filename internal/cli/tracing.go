package cli

import (
	"context"
	"time"

	"github.com/warrenrpc/warren/tracing"
	"github.com/warrenrpc/warren/transport"
)

// traced wraps tr with package tracing when the standard OTEL_* variables
// turn tracing on (tracing.FromEnv; off by default). The service name
// defaults to warren-<command>. The provider is made once per process
// and flushed when Main returns.
func (g *Globals) traced(ctx context.Context, tr transport.Transport, command string) (transport.Transport, error) {
	g.tracerOnce.Do(func() {
		g.tracer, g.tracerErr = tracing.FromEnv(ctx, "warren-"+command, g.errOut)
		if g.tracerErr != nil {
			g.tracerErr = usageError{g.tracerErr}
		}
	})
	if g.tracerErr != nil || g.tracer == nil {
		return tr, g.tracerErr
	}
	return tracing.Wrap(tr, g.tracer), nil
}

// shutdownTracing sends the spans still buffered, giving up after 5s.
func (g *Globals) shutdownTracing() {
	if g.tracer == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.tracer.Shutdown(ctx); err != nil {
		g.Logger().Warn("tracing: spans not sent", "err", err)
	}
}
