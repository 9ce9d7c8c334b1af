package mapper_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// node is a running agent in a test.
type node struct {
	a    *agent.Agent
	tr   transport.Transport
	stop context.CancelFunc
	done chan error
	load atomic.Value
	hits atomic.Int64
}

// startAgent runs an agent named id serving /<actor>/echo, /<actor>/fail,
// /<actor>/sleep and /<actor>/who.
func startAgent(t *testing.T, connect fabrictest.Connect, id, actor string, load float64, ping time.Duration) *node {
	t.Helper()
	n := &node{tr: connect(t), done: make(chan error, 1)}
	n.load.Store(load)
	a, err := agent.New(n.tr, agent.Config{Identity: id, PingInterval: ping, DrainTimeout: 5 * time.Second},
		agent.WithLogger(testenv.Logger(t)), agent.WithStatus(func() any { return n.load.Load() }))
	if err != nil {
		t.Fatal(err)
	}
	n.a = a
	must(t, a.Handle("/"+actor+"/echo", agent.HandlerFunc(func(_ context.Context, r *agent.Request) (any, error) {
		n.hits.Add(1)
		return r.Payload, nil
	})))
	must(t, a.Handle("/"+actor+"/fail", agent.Func(func(_ context.Context, msg string) (any, error) {
		return nil, errors.New(msg)
	})))
	must(t, a.Handle("/"+actor+"/sleep", agent.Func(func(ctx context.Context, ms int) (string, error) {
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
			return id, nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	})))
	must(t, a.Handle("/"+actor+"/who", agent.Func(func(context.Context, json.RawMessage) (string, error) {
		n.hits.Add(1)
		return id, nil
	})))
	ctx, cancel := context.WithCancel(context.Background())
	n.stop = cancel
	go func() { n.done <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-n.done })
	select {
	case <-a.Ready():
	case err := <-n.done:
		t.Fatalf("agent %s: %v", id, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("agent %s not ready", id)
	}
	return n
}

func startMapper(t *testing.T, connect fabrictest.Connect, cfg mapper.Config, opts ...mapper.Option) *mapper.Mapper {
	t.Helper()
	return fabrictest.RunMapper(t, connect(t), cfg, opts...)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func live(m *mapper.Mapper, prefix string) []string {
	var out []string
	for _, a := range m.Agents() {
		if len(a.Identity) >= len(prefix) && a.Identity[:len(prefix)] == prefix {
			out = append(out, a.Identity)
		}
	}
	return out
}

func waitLive(t *testing.T, m *mapper.Mapper, prefix string, want ...string) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, func() error {
		if got := live(m, prefix); !slices.Equal(got, want) {
			return fmt.Errorf("live agents %v, want %v", got, want)
		}
		return nil
	})
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestWalkthrough is Nanite's walkthrough: fred and bob serve echo; least
// loaded dispatch, fan-out, a crash, the registry dropping the dead agent
// after the ping timeout and taking it back when it returns.
func TestWalkthrough(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		echo := "/" + actor + "/echo"
		fredID, bobID := actor+"-fred", actor+"-bob"
		ping := 100 * time.Millisecond
		fred := startAgent(t, connect, fredID, actor, 0.2, ping)
		bob := startAgent(t, connect, bobID, actor, 0.7, ping)
		m := startMapper(t, connect, mapper.Config{})
		waitLive(t, m, actor, bobID, fredID)

		r, err := m.Request(ctxT(t, 5*time.Second), echo, "hello nanite")
		must(t, err)
		var s string
		must(t, r.Decode(&s))
		if s != "hello nanite" || r.Agent != fredID {
			t.Fatalf("least loaded: got %q from %s, want from %s", s, r.Agent, fredID)
		}

		// The loads change: the next ping moves the work to bob.
		fred.load.Store(0.9)
		bob.load.Store(0.1)
		testenv.WaitFor(t, 5*time.Second, func() error {
			r, err := m.Request(ctxT(t, 5*time.Second), echo, 1)
			if err != nil {
				return err
			}
			if r.Agent != bobID {
				return fmt.Errorf("served by %s", r.Agent)
			}
			return nil
		})

		rs, err := m.FanOut(ctxT(t, 5*time.Second), echo, map[string]int{"n": 1})
		must(t, err)
		if len(rs) != 2 || rs[fredID] == nil || rs[bobID] == nil {
			t.Fatalf("fan-out results %v", rs)
		}
		for id, r := range rs {
			if r.Err != nil || string(r.Body) != `{"n":1}` {
				t.Errorf("%s: %s %v", id, r.Body, r.Err)
			}
		}

		// bob crashes: its connection drops without unregistering. The
		// mapper keeps serving (requests to bob are re-sent when it
		// expires) and drops it after the ping timeout.
		bob.tr.Close()
		<-bob.done
		bob.done <- nil // for Cleanup
		for range 3 {
			r, err := m.Request(ctxT(t, 5*time.Second), echo, "after crash")
			must(t, err)
			if r.Agent != fredID {
				t.Fatalf("after crash served by %s", r.Agent)
			}
		}
		waitLive(t, m, actor, fredID)

		// bob returns with the same identity.
		startAgent(t, connect, bobID, actor, 0.1, ping)
		waitLive(t, m, actor, bobID, fredID)
		rs, err = m.FanOut(ctxT(t, 5*time.Second), echo, "again")
		must(t, err)
		if len(rs) != 2 || rs[bobID].Err != nil || rs[fredID].Err != nil {
			t.Fatalf("fan-out after return: %v", rs)
		}
	})
}

func TestErrors(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		startAgent(t, connect, actor+"-a", actor, 0, time.Second)
		m := startMapper(t, connect, mapper.Config{})

		_, err := m.Request(ctxT(t, 5*time.Second), "/"+actor+"/fail", "disk on fire")
		var re *wire.RemoteError
		if !errors.As(err, &re) || re.Code != wire.CodeHandler || re.Message != "disk on fire" || re.Agent != actor+"-a" {
			t.Fatalf("handler error: %#v", err)
		}
		if !errors.Is(err, &wire.RemoteError{Code: wire.CodeHandler}) {
			t.Errorf("errors.Is by code failed")
		}

		_, err = m.Request(ctxT(t, 5*time.Second), "/"+actor+"/echo", json.RawMessage(`{"bad"`))
		if err == nil || errors.As(err, &re) {
			t.Fatalf("invalid raw JSON sent: %v", err)
		}

		_, err = m.Request(ctxT(t, 5*time.Second), "/"+actor+"/sleep", "not a number")
		if !errors.As(err, &re) || re.Code != wire.CodeBadRequest {
			t.Fatalf("undecodable payload: %v", err)
		}

		_, err = m.Request(ctxT(t, 5*time.Second), "/"+actor+"/nothing", 1)
		if !errors.Is(err, mapper.ErrNoAgent) {
			t.Fatalf("unknown path: %v", err)
		}
		if _, err = m.Request(ctxT(t, 5*time.Second), "no-slash", 1); !errors.Is(err, wire.ErrInvalidPath) {
			t.Fatalf("invalid path: %v", err)
		}

		// The deadline travels with the request and bounds the handler.
		start := time.Now()
		_, err = m.Request(ctxT(t, 300*time.Millisecond), "/"+actor+"/sleep", 5000)
		// Either the caller's deadline fires first, or the handler's (the
		// same instant) and the agent reports deadline_exceeded.
		timedOut := errors.Is(err, mapper.ErrTimeout) && errors.Is(err, context.DeadlineExceeded)
		if !timedOut && !errors.Is(err, &wire.RemoteError{Code: wire.CodeExpired}) {
			t.Fatalf("timeout: %v", err)
		}
		if time.Since(start) > 3*time.Second {
			t.Fatalf("timeout took %v", time.Since(start))
		}
		// And the agent is still serving.
		if _, err := m.Request(ctxT(t, 5*time.Second), "/"+actor+"/echo", 1); err != nil {
			t.Fatal(err)
		}
	})
}

func TestFanOutPartial(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		slow := startAgent(t, connect, actor+"-slow", actor, 0, time.Second)
		startAgent(t, connect, actor+"-quick", actor, 0, time.Second)
		m := startMapper(t, connect, mapper.Config{})
		waitLive(t, m, actor, actor+"-quick", actor+"-slow")
		// Hold the slow agent: its handler sleeps past the deadline.
		slowPath := "/" + actor + "/sleep"
		_ = slow
		rs, err := m.FanOut(ctxT(t, 5*time.Second), slowPath, 10)
		must(t, err)
		if len(rs) != 2 {
			t.Fatalf("results %v", rs)
		}
		// Now a fan-out where one agent is told to sleep long: send to
		// each its own payload is not possible, so stop the slow one's
		// consumption by crashing it and check Missing names it.
		slow.tr.Close()
		<-slow.done
		slow.done <- nil
		rs, err = m.FanOut(ctxT(t, 300*time.Millisecond), "/"+actor+"/echo", 1)
		if err != nil {
			t.Fatal(err)
		}
		if got := rs.Missing(); !slices.Equal(got, []string{actor + "-slow"}) {
			t.Fatalf("missing %v, results %v", got, rs)
		}
		if rs[actor+"-quick"].Err != nil {
			t.Fatalf("quick agent: %v", rs[actor+"-quick"].Err)
		}
	})
}

func TestTwoMappersAllHot(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		startAgent(t, connect, actor+"-a", actor, 0, time.Second)
		startAgent(t, connect, actor+"-b", actor, 0, time.Second)
		m1 := startMapper(t, connect, mapper.Config{})
		m2 := startMapper(t, connect, mapper.Config{})
		var wg sync.WaitGroup
		errs := make(chan error, 40)
		for _, m := range []*mapper.Mapper{m1, m2} {
			for i := range 20 {
				wg.Go(func() {
					r, err := m.Request(ctxT(t, 10*time.Second), "/"+actor+"/echo", i)
					if err == nil && string(r.Body) != fmt.Sprint(i) {
						err = fmt.Errorf("sent %d got %s", i, r.Body)
					}
					errs <- err
				})
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	})
}

// TestNewMapperKnowsAgentsAtOnce: agents ping once a minute, yet a mapper
// that starts later dispatches at once because agents answer its announce.
func TestNewMapperKnowsAgentsAtOnce(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		startAgent(t, connect, actor+"-a", actor, 0, time.Minute)
		start := time.Now()
		m := startMapper(t, connect, mapper.Config{})
		if _, err := m.Request(ctxT(t, 5*time.Second), "/"+actor+"/echo", 1); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("first request took %v", d)
		}
	})
}

func TestPushAndSelectors(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		a := startAgent(t, connect, actor+"-a", actor, 0, time.Second)
		b := startAgent(t, connect, actor+"-b", actor, 0, time.Second)
		m := startMapper(t, connect, mapper.Config{})
		waitLive(t, m, actor, actor+"-a", actor+"-b")
		who := "/" + actor + "/who"
		got := map[string]int{}
		rr := mapper.RoundRobin()
		for range 4 {
			r, err := m.Request(ctxT(t, 5*time.Second), who, nil, mapper.Select(rr))
			must(t, err)
			got[r.Agent]++
		}
		if got[actor+"-a"] != 2 || got[actor+"-b"] != 2 {
			t.Fatalf("round robin %v", got)
		}
		r, err := m.Request(ctxT(t, 5*time.Second), who, nil, mapper.To(actor+"-b"))
		must(t, err)
		if r.Agent != actor+"-b" {
			t.Fatalf("To(b) served by %s", r.Agent)
		}
		if _, err := m.Request(ctxT(t, 5*time.Second), who, nil, mapper.To("nobody")); !errors.Is(err, mapper.ErrNoAgent) {
			t.Fatalf("To(nobody): %v", err)
		}
		custom := mapper.SelectorFunc(func(_ string, c []mapper.AgentInfo) []mapper.AgentInfo { return c[len(c)-1:] })
		r, err = m.Request(ctxT(t, 5*time.Second), who, nil, mapper.Select(custom))
		must(t, err)
		if r.Agent != actor+"-b" {
			t.Fatalf("custom selector served by %s", r.Agent)
		}
		before := a.hits.Load() + b.hits.Load()
		must(t, m.Push(ctxT(t, 5*time.Second), who, nil, mapper.Select(mapper.All())))
		testenv.WaitFor(t, 5*time.Second, func() error {
			if n := a.hits.Load() + b.hits.Load() - before; n != 2 {
				return fmt.Errorf("push to all executed %d times", n)
			}
			return nil
		})
	})
}
