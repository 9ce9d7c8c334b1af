package bertrpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/bertrpc"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/tracing"
	"github.com/warrenrpc/warren/transport/mem"
)

// recorder is a tracer provider recording into memory, as a process of
// its own would have.
type recorder struct {
	tp  *sdktrace.TracerProvider
	rec *tracetest.SpanRecorder
}

func newRecorder(t *testing.T) recorder {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return recorder{tp, rec}
}

func (r recorder) span(t *testing.T, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	var found sdktrace.ReadOnlySpan
	testenv.WaitFor(t, 5*time.Second, func() error {
		for _, s := range r.rec.Ended() {
			if s.Name() == name {
				found = s
				return nil
			}
		}
		return fmt.Errorf("no span %q yet", name)
	})
	return found
}

// mapperFabric is the bridge of `warren bert`, in short.
type mapperFabric struct{ m *mapper.Mapper }

func (f mapperFabric) Call(ctx context.Context, path string, payload []byte, _ string) ([]byte, error) {
	r, err := f.m.Request(ctx, path, json.RawMessage(payload))
	if err != nil {
		return nil, err
	}
	return r.Body, nil
}

// TestFabricTrace: a BERT-RPC call of a fabric module has a span, and the
// fabric request it sends is its child, up to the agent's process span;
// a failed call's span says so.
func TestFabricTrace(t *testing.T) {
	b := mem.NewBroker()
	bridge, worker := newRecorder(t), newRecorder(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	atr := b.Connect()
	defer atr.Close()
	a, err := agent.New(tracing.Wrap(atr, worker.tp), agent.Config{Identity: "fred"}, agent.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Handle("/simple/echo", agent.Func(func(_ context.Context, s string) (string, error) { return s, nil })); err != nil {
		t.Fatal(err)
	}
	if err := a.Handle("/simple/fail", agent.Func(func(_ context.Context, s string) (string, error) { return "", errors.New("refused") })); err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan struct{})
	go func() { defer close(agentDone); _ = a.Run(ctx) }()
	defer func() { cancel(); <-agentDone }()

	mtr := b.Connect()
	defer mtr.Close()
	m, err := mapper.New(tracing.Wrap(mtr, bridge.tp), mapper.Config{}, mapper.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	mapperDone := make(chan struct{})
	go func() { defer close(mapperDone); _ = m.Run(ctx) }()
	defer func() { cancel(); <-mapperDone }()
	<-a.Ready()
	<-m.Ready()
	testenv.WaitFor(t, 5*time.Second, func() error {
		if len(m.Agents()) == 0 {
			return errors.New("fred not registered yet")
		}
		return nil
	})

	cfg := bertrpc.Config{Modules: []bertrpc.ModuleConfig{{Module: "simple", Type: bertrpc.TypeFabric, Selector: "least_loaded"}}}
	s := startServer(t, cfg, bertrpc.WithFabric(mapperFabric{m}), bertrpc.WithTracerProvider(bridge.tp))
	if v := mustCall(t, s, "simple", "echo", []byte("hi")); string(v.([]byte)) != "hi" {
		t.Fatalf("echo = %v", v)
	}

	bspan := bridge.span(t, "bert call simple:echo")
	send := bridge.span(t, "send /simple/echo")
	process := worker.span(t, "process /simple/echo")
	tid := bspan.SpanContext().TraceID()
	if bspan.SpanKind() != oteltrace.SpanKindServer || bspan.Parent().IsValid() || bspan.Status().Code == codes.Error {
		t.Errorf("call span: kind %s, parent %v, status %v", bspan.SpanKind(), bspan.Parent().SpanID(), bspan.Status())
	}
	if send.SpanContext().TraceID() != tid || send.Parent().SpanID() != bspan.SpanContext().SpanID() {
		t.Errorf("send span: trace %s parent %s, want %s %s", send.SpanContext().TraceID(), send.Parent().SpanID(), tid, bspan.SpanContext().SpanID())
	}
	if process.SpanContext().TraceID() != tid || process.Parent().SpanID() != send.SpanContext().SpanID() {
		t.Errorf("process span: trace %s parent %s, want %s %s", process.SpanContext().TraceID(), process.Parent().SpanID(), tid, send.SpanContext().SpanID())
	}
	if !bspan.StartTime().Before(send.StartTime()) || bspan.EndTime().Before(send.EndTime()) {
		t.Errorf("call span %v..%v does not cover send %v..%v", bspan.StartTime(), bspan.EndTime(), send.StartTime(), send.EndTime())
	}

	if _, err := call(t, s, "simple", "fail", []byte("x")); err == nil {
		t.Fatal("simple:fail succeeded")
	}
	failed := bridge.span(t, "bert call simple:fail")
	if failed.Status().Code != codes.Error {
		t.Errorf("failed call's span: status %v", failed.Status())
	}
}
