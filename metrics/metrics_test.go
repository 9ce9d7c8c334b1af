package metrics_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/simple"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/metrics"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestCounts runs an instrumented agent and mapper through a known load
// and checks that every counter moved by exactly as much.
func TestCounts(t *testing.T) {
	b := mem.NewBroker()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	agentReg := prometheus.NewRegistry()
	atr := b.Connect()
	defer atr.Close()
	itr, err := metrics.Agent(atr, agentReg)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(itr, agent.Config{Identity: "fred", PingInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Expose("simple", simple.Simple{Identity: "fred"}); err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan struct{})
	go func() { defer close(agentDone); _ = a.Run(ctx) }()
	defer func() { cancel(); <-agentDone }()

	mapperReg := prometheus.NewRegistry()
	mtr := b.Connect()
	defer mtr.Close()
	imtr, err := metrics.Mapper(mtr, mapperReg)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mapper.New(imtr, mapper.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := metrics.Registry(m, mapperReg); err != nil {
		t.Fatal(err)
	}
	mapperDone := make(chan struct{})
	go func() { defer close(mapperDone); _ = m.Run(ctx) }()
	defer func() { cancel(); <-mapperDone }()
	<-m.Ready()
	<-a.Ready()

	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	const n = 7
	for range n {
		if _, err := m.Request(rctx, "/simple/echo", "hi"); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		_, err := m.Request(rctx, "/simple/fail", "boom")
		var re *wire.RemoteError
		if !errors.As(err, &re) {
			t.Fatalf("fail: %v", err)
		}
	}
	if err := m.Push(rctx, "/simple/echo", "x"); err != nil {
		t.Fatal(err)
	}
	// The push is acknowledged after its handler: wait for it.
	deadline := time.Now().Add(10 * time.Second)
	for histogramCount(t, agentReg, "warren_agent_request_duration_seconds") < n+3 {
		if time.Now().After(deadline) {
			t.Fatal("the push was not settled")
		}
		time.Sleep(10 * time.Millisecond)
	}

	want := `
# HELP warren_agent_requests_total Requests and pushes delivered to the agent, by service path and kind (request, push).
# TYPE warren_agent_requests_total counter
warren_agent_requests_total{kind="push",path="/simple/echo"} 1
warren_agent_requests_total{kind="request",path="/simple/echo"} 7
warren_agent_requests_total{kind="request",path="/simple/fail"} 2
# HELP warren_agent_request_errors_total Error replies the agent sent, by path and error code.
# TYPE warren_agent_request_errors_total counter
warren_agent_request_errors_total{code="handler_error",path="/simple/fail"} 2
# HELP warren_agent_requests_in_flight Requests and pushes delivered to the agent and not yet acknowledged.
# TYPE warren_agent_requests_in_flight gauge
warren_agent_requests_in_flight 0
`
	if err := testutil.GatherAndCompare(agentReg, strings.NewReader(want),
		"warren_agent_requests_total", "warren_agent_request_errors_total", "warren_agent_requests_in_flight"); err != nil {
		t.Error(err)
	}
	want = `
# HELP warren_mapper_requests_total Requests and pushes the mapper sent, one per agent reached, by path and kind (request, push).
# TYPE warren_mapper_requests_total counter
warren_mapper_requests_total{kind="push",path="/simple/echo"} 1
warren_mapper_requests_total{kind="request",path="/simple/echo"} 7
warren_mapper_requests_total{kind="request",path="/simple/fail"} 2
# HELP warren_mapper_request_errors_total Error replies the mapper received, by path and error code.
# TYPE warren_mapper_request_errors_total counter
warren_mapper_request_errors_total{code="handler_error",path="/simple/fail"} 2
# HELP warren_mapper_requests_in_flight Replies the mapper awaits.
# TYPE warren_mapper_requests_in_flight gauge
warren_mapper_requests_in_flight 0
# HELP warren_registry_agents Live agents in the mapper's registry.
# TYPE warren_registry_agents gauge
warren_registry_agents 1
`
	if err := testutil.GatherAndCompare(mapperReg, strings.NewReader(want),
		"warren_mapper_requests_total", "warren_mapper_request_errors_total", "warren_mapper_requests_in_flight", "warren_registry_agents"); err != nil {
		t.Error(err)
	}
	if c := histogramCount(t, mapperReg, "warren_mapper_request_duration_seconds"); c != n+2 {
		t.Errorf("mapper latency observations %d, want %d", c, n+2)
	}
}

// TestUnconfirmedReturnCounted: a mapper's Unconfirmed mandatory publish
// is counted only when it is returned, as returned, and its reply is no
// longer awaited; the wrapper passes the return on.
func TestUnconfirmedReturnCounted(t *testing.T) {
	b := mem.NewBroker()
	tr := b.Connect()
	defer tr.Close()
	ctx := context.Background()
	if err := wire.Topology(ctx, tr); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	itr, err := metrics.Mapper(tr, reg)
	if err != nil {
		t.Fatal(err)
	}
	returns := make(chan transport.Return, 1)
	stop, ok := transport.NotifyReturn(itr, func(r transport.Return) { returns <- r })
	if !ok {
		t.Fatal("the mapper's metrics transport over a Returner is not one")
	}
	defer stop()
	q, err := tr.DeclareQueue(ctx, transport.Queue{Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Bind(ctx, transport.Binding{Exchange: wire.RequestExchange, Queue: q, Key: "fred"}); err != nil {
		t.Fatal(err)
	}
	opts := transport.PublishOptions{Mandatory: true, Unconfirmed: true}
	for _, key := range []string{"fred", "ghost"} {
		msg := wire.NewRequest(wire.TypeRequest, "/a/b", "m", "id-"+key, []byte("{}"), time.Time{})
		msg.CorrelationID, msg.ReplyTo = msg.MessageID, "replies"
		if err := itr.Publish(ctx, wire.RequestExchange, key, msg, opts); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case r := <-returns:
		if r.Key != "ghost" || !errors.Is(r.Err, transport.ErrUnroutable) {
			t.Fatalf("return %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no return")
	}
	want := `
# HELP warren_mapper_publish_confirms_total Publishes that waited for the broker (publisher confirms, mandatory), by result: ack, nack (the broker refused it), returned (no queue took a mandatory message), error (connection lost, timeout).
# TYPE warren_mapper_publish_confirms_total counter
warren_mapper_publish_confirms_total{result="returned"} 1
# HELP warren_mapper_requests_in_flight Replies the mapper awaits.
# TYPE warren_mapper_requests_in_flight gauge
warren_mapper_requests_in_flight 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "warren_mapper_publish_confirms_total", "warren_mapper_requests_in_flight"); err != nil {
		t.Error(err)
	}
}

func histogramCount(t *testing.T, reg *prometheus.Registry, name string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			n += m.GetHistogram().GetSampleCount()
		}
	}
	return n
}

// TestPublishConfirms: publishes that wait for the broker are counted by
// result; the others are not.
func TestPublishConfirms(t *testing.T) {
	b := mem.NewBroker()
	tr := b.Connect()
	defer tr.Close()
	ctx := context.Background()
	if err := wire.Topology(ctx, tr); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		wrap func(transport.Transport, prometheus.Registerer) (transport.Transport, error)
	}{{"warren_agent_publish_confirms_total", metrics.Agent}, {"warren_mapper_publish_confirms_total", metrics.Mapper}} {
		reg := prometheus.NewRegistry()
		itr, err := c.wrap(tr, reg)
		if err != nil {
			t.Fatal(err)
		}
		q, err := tr.DeclareQueue(ctx, transport.Queue{Exclusive: true})
		if err != nil {
			t.Fatal(err)
		}
		msg := transport.Message{Type: wire.TypeReply, Body: []byte("{}")}
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		must(itr.Publish(ctx, transport.DefaultExchange, q, msg, transport.PublishOptions{Confirm: true}))
		must(itr.Publish(ctx, transport.DefaultExchange, q, msg, transport.PublishOptions{Mandatory: true}))
		must(itr.Publish(ctx, transport.DefaultExchange, q, msg, transport.PublishOptions{})) // not counted
		if err := itr.Publish(ctx, transport.DefaultExchange, "no-such-queue", msg, transport.PublishOptions{Mandatory: true}); !errors.Is(err, transport.ErrUnroutable) {
			t.Fatalf("%s: unroutable publish: %v", c.name, err)
		}
		want := c.name + "{result=\"ack\"} 2\n" + c.name + "{result=\"returned\"} 1\n"
		if err := testutil.GatherAndCompare(reg, strings.NewReader("# HELP "+c.name+" Publishes that waited for the broker (publisher confirms, mandatory), by result: ack, nack (the broker refused it), returned (no queue took a mandatory message), error (connection lost, timeout).\n# TYPE "+c.name+" counter\n"+want), c.name); err != nil {
			t.Error(err)
		}
	}
}
