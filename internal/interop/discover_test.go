package interop_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/interop"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport/amqp"
)

// TestInteropDiscovery: a client written from docs/protocol.md (no Warren
// import) asks a Warren agent PING, INFO and STATS and reads NATS micro's
// fields, after a known load sent by the same client.
func TestInteropDiscovery(t *testing.T) {
	url := testenv.AMQPURL(t)
	actor := fabrictest.Actor()
	tr, err := amqp.Dial(t.Context(), url, amqp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	id := actor + "-go"
	a, err := agent.New(fabrictest.Recording(t, url, tr), agent.Config{Identity: id, PingInterval: time.Second, Version: "2.0.1"}, agent.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Handle("/"+actor+"/check", agent.Func(func(_ context.Context, ok bool) (bool, error) {
		if !ok {
			return false, errors.New("not ok")
		}
		return true, nil
	})); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-a.Ready()
	for _, body := range []string{"true", "true", "true", "false"} {
		cctx, ccancel := context.WithTimeout(t.Context(), 5*time.Second)
		_, err := interop.Call(cctx, url, "warren.request", id, "/"+actor+"/check", []byte(body))
		ccancel()
		if err != nil {
			t.Fatal(err)
		}
	}

	ask := func(verb string) map[string]any {
		t.Helper()
		got, err := interop.Discover(t.Context(), url, verb, actor, "", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 {
			t.Fatalf("%s: %d answers: %v", verb, len(got), got)
		}
		m := got[0]
		if m["name"] != actor || m["id"] != id || m["version"] != "2.0.1" || m["type"] != "io.nats.micro.v1."+map[string]string{"PING": "ping", "INFO": "info", "STATS": "stats"}[verb]+"_response" {
			t.Errorf("%s: %v", verb, m)
		}
		if _, ok := m["metadata"].(map[string]any); !ok {
			t.Errorf("%s: metadata %v, want an object", verb, m["metadata"])
		}
		return m
	}
	ask("PING")
	info := ask("INFO")
	eps, _ := info["endpoints"].([]any)
	if len(eps) != 1 || eps[0].(map[string]any)["name"] != "check" || eps[0].(map[string]any)["subject"] != "/"+actor+"/check" ||
		eps[0].(map[string]any)["queue_group"] != "warren.service./"+actor+"/check" {
		t.Errorf("info endpoints: %v", info["endpoints"])
	}
	stats := ask("STATS")
	eps, _ = stats["endpoints"].([]any)
	if len(eps) != 1 {
		t.Fatalf("stats endpoints: %v", stats["endpoints"])
	}
	e := eps[0].(map[string]any)
	// JSON numbers; processing times in nanoseconds.
	if e["num_requests"] != 4.0 || e["num_errors"] != 1.0 || e["last_error"] != "handler_error: not ok" ||
		e["processing_time"].(float64) <= 0 || e["average_processing_time"].(float64) <= 0 {
		t.Errorf("stats endpoint: %v", e)
	}
	if _, err := time.Parse(time.RFC3339Nano, stats["started"].(string)); err != nil {
		t.Errorf("started: %v", err)
	}
	if got, err := interop.Discover(t.Context(), url, "PING", actor, "someone-else", 300*time.Millisecond); err != nil || len(got) != 0 {
		t.Errorf("PING of another id: %v %v", got, err)
	}
}
