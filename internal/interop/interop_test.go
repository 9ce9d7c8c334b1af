package interop_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/interop"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/wire"
)

// TestInteropClientCallsWarrenAgent: a client written from docs/protocol.md
// (no Warren import) calls a Warren agent through the service exchange and
// through the agent's own routing key, and reads a remote error.
func TestInteropClientCallsWarrenAgent(t *testing.T) {
	url := testenv.AMQPURL(t)
	actor := fabrictest.Actor()
	tr, err := amqp.Dial(t.Context(), url, amqp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	a, err := agent.New(tr, agent.Config{Identity: actor + "-go", PingInterval: time.Second}, agent.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Handle("/"+actor+"/upcase", agent.Func(func(_ context.Context, s string) (string, error) {
		if s == "" {
			return "", errors.New("nothing to upcase")
		}
		return strings.ToUpper(s), nil
	})); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-a.Ready()

	call := func(exchange, key string, body string) *interop.Reply {
		t.Helper()
		cctx, ccancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer ccancel()
		r, err := interop.Call(cctx, url, exchange, key, "/"+actor+"/upcase", []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := call("warren.service", "/"+actor+"/upcase", `"hello"`)
	if r.Status != "ok" || string(r.Body) != `"HELLO"` || r.Agent != actor+"-go" {
		t.Fatalf("via service queue: %+v %s", r, r.Body)
	}
	r = call("warren.request", actor+"-go", `"direct"`)
	if r.Status != "ok" || string(r.Body) != `"DIRECT"` {
		t.Fatalf("via agent queue: %+v %s", r, r.Body)
	}
	r = call("warren.request", actor+"-go", `""`)
	if r.Status != "error" || r.Code != "handler_error" || r.Message != "nothing to upcase" {
		t.Fatalf("error reply: %+v", r)
	}
	r = call("warren.request", actor+"-go", `{not json`)
	if r.Status != "error" || r.Code != "bad_request" {
		t.Fatalf("bad body: %+v", r)
	}
}

// TestInteropAgentServesWarrenMapper: an agent written from
// docs/protocol.md registers, answers announces and serves a Warren
// mapper's requests and fan-outs.
func TestInteropAgentServesWarrenMapper(t *testing.T) {
	url := testenv.AMQPURL(t)
	actor := fabrictest.Actor()
	ctx, cancel := context.WithCancel(t.Context())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- interop.RunAgent(ctx, url, actor+"-raw", time.Second, map[string]interop.Handler{
			"/" + actor + "/reverse": func(b []byte) ([]byte, error) {
				var s string
				if err := json.Unmarshal(b, &s); err != nil {
					return nil, err
				}
				r := []rune(s)
				for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
					r[i], r[j] = r[j], r[i]
				}
				return json.Marshal(string(r))
			},
		}, ready)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("raw agent: %v", err)
		}
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	}

	tr, err := amqp.Dial(t.Context(), url, amqp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() }) // after the mapper's cleanup
	m := fabrictest.RunMapper(t, tr, mapper.Config{})

	rctx, rcancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer rcancel()
	r, err := m.Request(rctx, "/"+actor+"/reverse", "warren")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.Body, []byte(`"nerraw"`)) || r.Agent != actor+"-raw" {
		t.Fatalf("reply %s from %s", r.Body, r.Agent)
	}
	var info mapper.AgentInfo
	for _, a := range m.Agents() {
		if a.Identity == actor+"-raw" {
			info = a
		}
	}
	if !info.HasTags("raw") || info.Status != 0.01 {
		t.Fatalf("registry record %+v", info)
	}
	_, err = m.Request(rctx, "/"+actor+"/reverse", 42)
	if !errors.Is(err, &wire.RemoteError{Code: wire.CodeHandler}) {
		t.Fatalf("raw agent error: %v", err)
	}
	rs, err := m.FanOut(rctx, "/"+actor+"/reverse", "ab")
	if err != nil || len(rs) != 1 || string(rs[actor+"-raw"].Body) != `"ba"` {
		t.Fatalf("fan-out %v %v", rs, err)
	}
}
