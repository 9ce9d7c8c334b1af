package tracing_test

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	oteltrace "go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/tracing"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// party is one side of the trace, with a tracer provider of its own (as a
// separate process would have) recording into memory.
type party struct {
	tp  *trace.TracerProvider
	rec *tracetest.SpanRecorder
}

func newParty(t *testing.T) party {
	rec := tracetest.NewSpanRecorder()
	tp := trace.NewTracerProvider(trace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return party{tp, rec}
}

func (p party) span(t *testing.T, name string) trace.ReadOnlySpan {
	t.Helper()
	var found trace.ReadOnlySpan
	testenv.WaitFor(t, 5*time.Second, func() error {
		for _, s := range p.rec.Ended() {
			if s.Name() == name {
				found = s
				return nil
			}
		}
		return errNotYet(name)
	})
	return found
}

type errNotYet string

func (e errNotYet) Error() string { return "no span " + string(e) + " yet" }

// TestTraceCrossesAgent: a request's trace goes from the caller's span to
// the mapper's send span, the agent's process span and a span the
// handler starts; a push the agent cannot serve dies in the same trace.
func TestTraceCrossesAgent(t *testing.T) {
	b := mem.NewBroker()
	caller, worker := newParty(t), newParty(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	atr := b.Connect()
	defer atr.Close()
	a, err := agent.New(tracing.Wrap(atr, worker.tp), agent.Config{Identity: "fred"})
	if err != nil {
		t.Fatal(err)
	}
	err = a.Handle("/job/run", agent.HandlerFunc(func(ctx context.Context, req *agent.Request) (any, error) {
		ctx = tracing.Extract(ctx, req.Headers)
		_, span := worker.tp.Tracer("handler").Start(ctx, "inner work")
		span.End()
		return "ok", nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan struct{})
	go func() { defer close(agentDone); _ = a.Run(ctx) }()
	defer func() { cancel(); <-agentDone }()

	mtr := b.Connect()
	defer mtr.Close()
	m, err := mapper.New(tracing.Wrap(mtr, caller.tp), mapper.Config{})
	if err != nil {
		t.Fatal(err)
	}
	mapperDone := make(chan struct{})
	go func() { defer close(mapperDone); _ = m.Run(ctx) }()
	defer func() { cancel(); <-mapperDone }()
	<-m.Ready()
	<-a.Ready()

	rctx, root := caller.tp.Tracer("test").Start(ctx, "caller")
	rctx, rcancel := context.WithTimeout(rctx, 10*time.Second)
	defer rcancel()
	if _, err := m.Request(rctx, "/job/run", 1); err != nil {
		t.Fatal(err)
	}
	root.End()

	send := caller.span(t, "send /job/run")
	process := worker.span(t, "process /job/run")
	inner := worker.span(t, "inner work")
	tid := root.SpanContext().TraceID()
	for _, s := range []trace.ReadOnlySpan{send, process, inner} {
		if s.SpanContext().TraceID() != tid {
			t.Errorf("%s: trace %s, want %s", s.Name(), s.SpanContext().TraceID(), tid)
		}
	}
	if send.Parent().SpanID() != root.SpanContext().SpanID() || send.SpanKind() != oteltrace.SpanKindProducer {
		t.Errorf("send: parent %s kind %s", send.Parent().SpanID(), send.SpanKind())
	}
	if process.Parent().SpanID() != send.SpanContext().SpanID() || !process.Parent().IsRemote() || process.SpanKind() != oteltrace.SpanKindConsumer {
		t.Errorf("process: parent %s (remote %v), want the send span %s", process.Parent().SpanID(), process.Parent().IsRemote(), send.SpanContext().SpanID())
	}
	if inner.Parent().SpanID() != process.SpanContext().SpanID() {
		t.Errorf("inner: parent %s, want the process span %s", inner.Parent().SpanID(), process.SpanContext().SpanID())
	}

	// A push fred does not serve, addressed to him: he dead-letters it, in
	// the trace of the push.
	pctx, proot := caller.tp.Tracer("test").Start(ctx, "pusher")
	push := wire.NewRequest(wire.TypePush, "/job/other", "tester", "p1", []byte("1"), time.Time{})
	if err := tracing.Wrap(mtr, caller.tp).Publish(pctx, wire.RequestExchange, "fred", push, transport.PublishOptions{Mandatory: true}); err != nil {
		t.Fatal(err)
	}
	proot.End()
	dead := worker.span(t, "dead-letter /job/other")
	if dead.SpanContext().TraceID() != proot.SpanContext().TraceID() {
		t.Errorf("dead letter in trace %s, want %s", dead.SpanContext().TraceID(), proot.SpanContext().TraceID())
	}
}
