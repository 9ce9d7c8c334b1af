package agent_test

import (
	"context"
	"encoding/json"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

// TestInactiveKeepsWorkInHand: a service that turns inactive while one of
// its requests is running finishes that request; the request is not
// handed to another agent as well.
func TestInactiveKeepsWorkInHand(t *testing.T) {
	b := mem.NewBroker()
	defer b.Close()
	var runs atomic.Int64
	var active atomic.Bool
	active.Store(true)
	started, release := make(chan struct{}, 1), make(chan struct{})
	start := func(id string, pred func() bool) {
		a, err := agent.New(b.Connect(), agent.Config{Identity: id, PingInterval: 20 * time.Millisecond}, agent.WithLogger(testenv.Logger(t)))
		must(t, err)
		must(t, a.Handle("/s/work", agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) {
			runs.Add(1)
			started <- struct{}{}
			<-release
			return nil, nil
		}), agent.Active(pred)))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		<-a.Ready()
	}
	start("a1", active.Load)
	pub := b.Connect()
	defer pub.Close()
	must(t, pub.Publish(t.Context(), wire.ServiceExchange, "/s/work",
		transport.Message{Type: wire.TypePush, MessageID: "w1", Body: []byte(`1`)}, transport.PublishOptions{Mandatory: true}))
	<-started
	active.Store(false)
	time.Sleep(100 * time.Millisecond) // several pings: a1 stops consuming the shared queue
	start("a2", func() bool { return true })
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free) // runs before the agents' cleanups, so they can drain
	select {
	case <-started:
		t.Fatal("the request in hand on a1 ran again on a2")
	case <-time.After(300 * time.Millisecond):
	}
	free()
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := runs.Load(); n != 1 {
			t.Fatalf("ran %d times", n)
		}
		return nil
	})
}

// TestOnlyHereWorkIsNotPassedOn: work sent to one agent only (by identity,
// or one copy of a fan-out: warren-pinned) or to agents with tags
// (warren-tags) does not go to the service's shared queue when that agent
// cannot take it, where an agent that ran its own fan-out copy, or one
// without the tags, would run it: a draining agent runs it, and an
// inactive service dead-letters it.
func TestOnlyHereWorkIsNotPassedOn(t *testing.T) {
	type ran struct{ agent, body string }
	setup := func(t *testing.T, a1Active func() bool) (b *mem.Broker, runs chan ran, free func(), stopA1 func() error, send func(body string, h map[string]any)) {
		b = mem.NewBroker()
		t.Cleanup(func() { b.Close() })
		runs = make(chan ran, 16)
		release := make(chan struct{})
		var once sync.Once
		free = func() { once.Do(func() { close(release) }) }
		t.Cleanup(free)
		start := func(id string, active func() bool) func() error {
			a, err := agent.New(b.Connect(), agent.Config{Identity: id, PingInterval: 20 * time.Millisecond}, agent.WithLogger(testenv.Logger(t)))
			must(t, err)
			must(t, a.Handle("/s/work", agent.HandlerFunc(func(_ context.Context, req *agent.Request) (any, error) {
				var body string
				_ = req.Decode(&body)
				runs <- ran{id, body}
				if body == "inhand" {
					<-release
				}
				return nil, nil
			}), agent.Active(active)))
			return runAgent(t, a)
		}
		start("a2", func() bool { return true })
		stopA1 = start("a1", a1Active)
		pub := b.Connect()
		t.Cleanup(func() { pub.Close() })
		send = func(body string, h map[string]any) {
			t.Helper()
			h[wire.HeaderPath] = "/s/work"
			must(t, pub.Publish(t.Context(), wire.RequestExchange, "a1", transport.Message{
				Type: wire.TypePush, MessageID: body, Headers: h, Body: []byte(`"` + body + `"`),
			}, transport.PublishOptions{Mandatory: true}))
		}
		return b, runs, free, stopA1, send
	}
	next := func(t *testing.T, runs chan ran) ran {
		t.Helper()
		select {
		case r := <-runs:
			return r
		case <-time.After(5 * time.Second):
			t.Fatal("no handler ran")
		}
		return ran{}
	}

	t.Run("draining", func(t *testing.T) {
		b, runs, free, stopA1, send := setup(t, func() bool { return true })
		c := b.Connect()
		defer c.Close()
		beats := tap(t, c, wire.HeartbeatExchange)
		send("inhand", map[string]any{wire.HeaderPinned: true})
		if r := next(t, runs); r != (ran{"a1", "inhand"}) {
			t.Fatalf("ran %v", r)
		}
		stopped := make(chan error, 1)
		go func() { stopped <- stopA1() }()
		receive(t, beats, "a1 draining", func(d *transport.Delivery) bool {
			var hb wire.Heartbeat
			return d.Type == wire.TypePing && json.Unmarshal(d.Body, &hb) == nil && hb.Identity == "a1" && len(hb.Inactive) == 1
		})
		for _, tc := range []struct {
			body string
			h    map[string]any
		}{
			{"pinned", map[string]any{wire.HeaderPinned: true}},
			{"tagged", map[string]any{wire.HeaderTags: "gpu"}},
		} {
			send(tc.body, tc.h)
			if r := next(t, runs); r != (ran{"a1", tc.body}) {
				t.Errorf("%s: ran %v, want on a1, the agent it was sent to", tc.body, r)
			}
		}
		// Work any agent may run is still passed on.
		send("plain", map[string]any{})
		if r := next(t, runs); r != (ran{"a2", "plain"}) {
			t.Errorf("plain: ran %v, want passed on to a2", r)
		}
		free()
		must(t, <-stopped)
	})

	t.Run("inactive", func(t *testing.T) {
		b, runs, _, _, send := setup(t, func() bool { return false })
		c := b.Connect()
		defer c.Close()
		dead := tap(t, c, wire.DeadLetterExchange)
		send("pinned", map[string]any{wire.HeaderPinned: true})
		send("tagged", map[string]any{wire.HeaderTags: "gpu"})
		letters := map[string]string{} // reason by message id
		receive(t, dead, "both dead letters", func(d *transport.Delivery) bool {
			letters[d.MessageID] = wire.String(d.Headers, wire.HeaderReason)
			return len(letters) == 2
		})
		if want := map[string]string{"pinned": wire.CodeDeclined, "tagged": wire.CodeDeclined}; !maps.Equal(letters, want) {
			t.Errorf("dead letters (reason by id) %v, want %v", letters, want)
		}
		send("plain", map[string]any{})
		if r := next(t, runs); r != (ran{"a2", "plain"}) {
			t.Errorf("plain: ran %v, want passed on to a2", r)
		}
		select {
		case r := <-runs:
			t.Errorf("also ran %v", r)
		default:
		}
	})
}
