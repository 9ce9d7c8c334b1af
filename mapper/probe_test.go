package mapper_test

import (
	"context"
	"errors"
	"strings"
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

// TestKilledAgentRequestResentAtOnce: with the default ping interval (15s,
// so 45s before a silent agent expires) and a mapper that has just
// started, a request whose agent's connection goes away while its handler
// runs (kill -9) is answered by the other agent within about a second: the
// broker's consumer count says the agent is gone. Durable agents (quorum
// queues) too.
func TestKilledAgentRequestResentAtOnce(t *testing.T) {
	t.Run("classic", func(t *testing.T) { killedAgentRequestResent(t, false) })
	t.Run("durable", func(t *testing.T) { killedAgentRequestResent(t, true) })
}

func killedAgentRequestResent(t *testing.T, durable bool) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path := "/" + actor + "/work"
		var calls atomic.Int64
		started := make(chan string, 2)
		hold := make(chan struct{})
		defer close(hold)
		conns := map[string]transport.Transport{}
		for _, name := range []string{"a", "b"} {
			id := actor + "-" + name
			tr := connect(t)
			conns[id] = tr
			a, err := agent.New(tr, agent.Config{Identity: id, Durable: durable}, agent.WithLogger(testenv.Logger(t)))
			must(t, err)
			must(t, a.Handle(path, agent.HandlerFunc(func(ctx context.Context, _ *agent.Request) (any, error) {
				if calls.Add(1) == 1 {
					started <- id
					select { // the first one hangs until its connection is gone
					case <-hold:
					case <-ctx.Done():
					}
					return nil, errors.New("cut short")
				}
				return id, nil
			})))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = a.Run(ctx) }()
			t.Cleanup(func() { cancel(); <-done })
			<-a.Ready()
		}
		m := startMapper(t, connect, mapper.Config{})
		type result struct {
			r   *mapper.Reply
			err error
			at  time.Time
		}
		res := make(chan result, 1)
		go func() {
			r, err := m.Request(ctxT(t, 10*time.Second), path, nil)
			res <- result{r, err, time.Now()}
		}()
		victim := <-started
		killed := time.Now()
		conns[victim].Close() // its connection goes, as with kill -9
		got := <-res
		if got.err != nil {
			t.Fatalf("request whose agent was killed: %v", got.err)
		}
		took := got.at.Sub(killed)
		t.Logf("killed %s; answered by %s %v later", victim, got.r.Agent, took.Round(time.Millisecond))
		if got.r.Agent == victim || !strings.HasPrefix(got.r.Agent, actor) {
			t.Fatalf("answered by %s, killed %s", got.r.Agent, victim)
		}
		if took > 3*time.Second {
			t.Fatalf("answered %v after the kill, want about a second", took)
		}
	})
}

// TestUnroutableAgentIsDropped: a heartbeat for an agent whose queue does
// not exist (stale, or forged with the lowest status) does not block
// least_loaded: the request that finds its queue gone goes to the next
// agent, the agent is dropped, and a fan-out no longer names it.
func TestUnroutableAgentIsDropped(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path := "/" + actor + "/echo"
		real := actor + "-real"
		runAgent(t, connect, agent.Config{Identity: real}, func(a *agent.Agent) {
			must(t, a.Handle(path, agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) { return "real", nil })))
		})
		m := startMapper(t, connect, mapper.Config{})
		ghost := actor + "-ghost"
		forger := connect(t)
		must(t, forger.Publish(t.Context(), wire.HeartbeatExchange, "", transport.Message{
			Type: wire.TypePing, ContentType: wire.ContentJSON, AppID: ghost,
			Body: []byte(`{"identity":"` + ghost + `","services":["` + path + `"],"status":-1000,"ping_interval_ms":1000}`),
		}, transport.PublishOptions{Confirm: true}))
		waitLive(t, m, actor, ghost, real)
		r, err := m.Request(ctxT(t, 5*time.Second), path, nil)
		must(t, err)
		if r.Agent != real {
			t.Fatalf("answered by %s", r.Agent)
		}
		if ids := live(m, actor); len(ids) != 1 || ids[0] != real {
			t.Fatalf("live after the unroutable request: %v, want only %s", ids, real)
		}
		rs, err := m.FanOut(ctxT(t, 5*time.Second), path, nil)
		must(t, err)
		if len(rs) != 1 || rs[real] == nil || rs[real].Err != nil {
			t.Fatalf("fan-out: %v", rs)
		}
		// A push too goes to the next agent.
		must(t, forger.Publish(t.Context(), wire.HeartbeatExchange, "", transport.Message{
			Type: wire.TypePing, ContentType: wire.ContentJSON, AppID: ghost,
			Body: []byte(`{"identity":"` + ghost + `","services":["` + path + `"],"status":-1000,"ping_interval_ms":1000}`),
		}, transport.PublishOptions{Confirm: true}))
		waitLive(t, m, actor, ghost, real)
		must(t, m.Push(ctxT(t, 5*time.Second), path, nil))
		if ids := live(m, actor); len(ids) != 1 || ids[0] != real {
			t.Fatalf("live after the unroutable push: %v, want only %s", ids, real)
		}
	})
}

// TestKilledAgentSeveralMappers: two mappers that have just started each
// wait on a request to the same agent when it is killed. The first to see
// it gone drains its queue, so the other sees a consumer (that drain) for a
// while (it drains until the queue has been idle for a second); both
// requests are still answered by the other agent about half a second after
// the kill.
func TestKilledAgentSeveralMappers(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path := "/" + actor + "/work"
		victim, other := actor+"-a", actor+"-b"
		started := make(chan struct{}, 2)
		hold := make(chan struct{})
		defer close(hold)
		var victimTr transport.Transport
		for _, id := range []string{victim, other} {
			tr := connect(t)
			if id == victim {
				victimTr = tr
			}
			a, err := agent.New(tr, agent.Config{Identity: id}, agent.WithLogger(testenv.Logger(t)))
			must(t, err)
			must(t, a.Handle(path, agent.HandlerFunc(func(ctx context.Context, _ *agent.Request) (any, error) {
				if id == victim {
					started <- struct{}{}
					select {
					case <-hold:
					case <-ctx.Done():
					}
					return nil, errors.New("cut short")
				}
				return id, nil
			})))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = a.Run(ctx) }()
			t.Cleanup(func() { cancel(); <-done })
			<-a.Ready()
		}
		// Whichever agents serve it, the victim first: not a selector that
		// names its agent, so a request may go to any other.
		preferVictim := mapper.SelectorFunc(func(_ string, c []mapper.AgentInfo) []mapper.AgentInfo {
			for _, a := range c {
				if a.Identity == victim {
					return []mapper.AgentInfo{a}
				}
			}
			return c[:1]
		})
		type result struct {
			r   *mapper.Reply
			err error
			at  time.Time
		}
		res := make(chan result, 2)
		for range 2 {
			m := startMapper(t, connect, mapper.Config{})
			go func() {
				r, err := m.Request(ctxT(t, 10*time.Second), path, nil, mapper.Select(preferVictim))
				res <- result{r, err, time.Now()}
			}()
		}
		<-started
		<-started
		killed := time.Now()
		victimTr.Close()
		for range 2 {
			got := <-res
			if got.err != nil {
				t.Fatalf("request whose agent was killed: %v", got.err)
			}
			took := got.at.Sub(killed)
			t.Logf("answered by %s %v after the kill", got.r.Agent, took.Round(time.Millisecond))
			if got.r.Agent != other {
				t.Errorf("answered by %s, want %s", got.r.Agent, other)
			}
			if took > 1500*time.Millisecond {
				t.Errorf("answered %v after the kill, want about half a second", took)
			}
		}
	})
}
