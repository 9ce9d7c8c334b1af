package mapper_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

// runAgent starts an agent with the handlers set up by reg, and stops it at
// the end of the test.
func runAgent(t *testing.T, connect fabrictest.Connect, cfg agent.Config, reg func(a *agent.Agent)) *agent.Agent {
	t.Helper()
	if cfg.PingInterval == 0 {
		cfg.PingInterval = 200 * time.Millisecond
	}
	a, err := agent.New(connect(t), cfg, agent.WithLogger(testenv.Logger(t)))
	must(t, err)
	reg(a)
	fabrictest.RunAgent(t, a)
	return a
}

// TestDeclineGoesToAnotherAgent: Vincent's reject. An agent whose handler
// declines, and one whose service is inactive, pass the work on.
func TestDeclineGoesToAnotherAgent(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path := "/" + actor + "/work"
		var declined, served atomic.Int64
		diskFull := atomic.Bool{}
		diskFull.Store(true)
		runAgent(t, connect, agent.Config{Identity: actor + "-picky"}, func(a *agent.Agent) {
			must(t, a.Handle(path, agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) {
				declined.Add(1)
				return nil, agent.ErrDecline
			})))
		})
		runAgent(t, connect, agent.Config{Identity: actor + "-full"}, func(a *agent.Agent) {
			must(t, a.Handle(path, agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) {
				return "full", nil
			}), agent.Active(func() bool { return !diskFull.Load() })))
		})
		runAgent(t, connect, agent.Config{Identity: actor + "-willing"}, func(a *agent.Agent) {
			must(t, a.Handle(path, agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) {
				served.Add(1)
				return "done", nil
			})))
		})
		m := startMapper(t, connect, mapper.Config{})
		waitLive(t, m, actor, actor+"-full", actor+"-picky", actor+"-willing")
		// Three requests sent to the picky agent first (a selector of the
		// test's own, which pins nothing: it picks picky while it is a
		// candidate, then the others), three to a random one.
		onlyPicky := mapper.SelectorFunc(func(_ string, c []mapper.AgentInfo) []mapper.AgentInfo {
			if i := slices.IndexFunc(c, func(a mapper.AgentInfo) bool { return a.Identity == actor+"-picky" }); i >= 0 {
				return c[i : i+1]
			}
			return c
		})
		for i := range 6 {
			sel := mapper.Random()
			if i < 3 {
				sel = onlyPicky
			}
			r, err := m.Request(ctxT(t, 5*time.Second), path, nil, mapper.Select(sel))
			must(t, err)
			if r.Agent != actor+"-willing" {
				t.Fatalf("served by %s", r.Agent)
			}
		}
		if served.Load() != 6 || declined.Load() < 3 {
			t.Fatalf("served %d, declined %d", served.Load(), declined.Load())
		}
		// The inactive agent is not even selected: its heartbeat says so.
		for _, a := range m.Agents() {
			if a.Identity == actor+"-full" && len(a.Inactive) != 1 {
				t.Fatalf("inactive not advertised: %+v", a)
			}
		}
		// It takes work again once its predicate turns true.
		diskFull.Store(false)
		testenv.WaitFor(t, 5*time.Second, func() error {
			r, err := m.Request(ctxT(t, 5*time.Second), path, nil, mapper.To(actor+"-full"))
			if err != nil {
				return err
			}
			if r.Agent != actor+"-full" {
				return fmt.Errorf("served by %s", r.Agent)
			}
			return nil
		})
	})
}

// TestDeclinedPushIsBounded: a push every agent declines is passed around
// a bounded number of times, then dead-lettered with reason delivery_limit.
func TestDeclinedPushIsBounded(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path := "/" + actor + "/never"
		var tries atomic.Int64
		runAgent(t, connect, agent.Config{Identity: actor + "-a", MaxDeliveries: 3}, func(a *agent.Agent) {
			must(t, a.Handle(path, agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) {
				tries.Add(1)
				return nil, agent.ErrDecline
			})))
		})
		tap := connect(t)
		q, err := tap.DeclareQueue(t.Context(), transport.Queue{Exclusive: true})
		must(t, err)
		must(t, tap.Bind(t.Context(), transport.Binding{Exchange: wire.DeadLetterExchange, Queue: q}))
		dead, err := tap.Consume(t.Context(), q, transport.ConsumeOptions{AutoAck: true})
		must(t, err)
		m := startMapper(t, connect, mapper.Config{})
		must(t, m.Push(ctxT(t, 5*time.Second), path, 1))
		deadline := time.After(10 * time.Second)
		for {
			select {
			case d := <-dead:
				if wire.String(d.Headers, wire.HeaderPath) != path {
					continue
				}
				if got := wire.String(d.Headers, wire.HeaderReason); got != wire.CodeDeliveryLimit {
					t.Fatalf("dead-letter reason %q", got)
				}
				if n := tries.Load(); n != 3 {
					t.Fatalf("handler ran %d times, want 3", n)
				}
				return
			case <-deadline:
				t.Fatalf("no dead letter; handler ran %d times", tries.Load())
			}
		}
	})
}

// TestParkUntilAnAgentAppears: Nanite's offline failsafe. With Park, a push
// and a request for a service with no live agent wait in its shared queue
// and are served when an agent appears; without Park the caller gets
// ErrNoAgent at once.
func TestParkUntilAnAgentAppears(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path := "/" + actor + "/later"
		m := startMapper(t, connect, mapper.Config{AnnounceWait: 100 * time.Millisecond})
		start := time.Now()
		if _, err := m.Request(ctxT(t, 5*time.Second), path, 1); !errors.Is(err, mapper.ErrNoAgent) {
			t.Fatalf("without Park: %v", err)
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("no-agent error took %v", time.Since(start))
		}
		must(t, m.Push(ctxT(t, 5*time.Second), path, "parked push", mapper.Park()))
		type result struct {
			r   *mapper.Reply
			err error
		}
		res := make(chan result, 1)
		go func() {
			r, err := m.Request(ctxT(t, 15*time.Second), path, "parked request", mapper.Park())
			res <- result{r, err}
		}()
		var pushes atomic.Int64
		time.Sleep(200 * time.Millisecond) // the request is parked before the agent exists
		runAgent(t, connect, agent.Config{Identity: actor + "-late"}, func(a *agent.Agent) {
			must(t, a.Handle(path, agent.Func(func(_ context.Context, s string) (string, error) {
				if s == "parked push" {
					pushes.Add(1)
				}
				return "served " + s, nil
			})))
		})
		got := <-res
		if got.err != nil {
			t.Fatal(got.err)
		}
		if string(got.r.Body) != `"served parked request"` || got.r.Agent != actor+"-late" {
			t.Fatalf("parked request: %s from %s", got.r.Body, got.r.Agent)
		}
		testenv.WaitFor(t, 5*time.Second, func() error {
			if pushes.Load() != 1 {
				return fmt.Errorf("parked push executed %d times", pushes.Load())
			}
			return nil
		})
	})
}

// TestPersistentDurable: a durable agent (quorum queue) and persistent,
// confirmed requests and pushes.
func TestPersistentDurable(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path := "/" + actor + "/keep"
		var n atomic.Int64
		runAgent(t, connect, agent.Config{Identity: actor + "-d", Durable: true}, func(a *agent.Agent) {
			must(t, a.Handle(path, agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) {
				n.Add(1)
				return "kept", nil
			}), agent.Durable()))
		})
		m := startMapper(t, connect, mapper.Config{})
		r, err := m.Request(ctxT(t, 5*time.Second), path, nil, mapper.Persistent())
		must(t, err)
		if string(r.Body) != `"kept"` {
			t.Fatalf("reply %s", r.Body)
		}
		must(t, m.Push(ctxT(t, 5*time.Second), path, nil, mapper.Persistent()))
		testenv.WaitFor(t, 5*time.Second, func() error {
			if n.Load() != 2 {
				return fmt.Errorf("executed %d", n.Load())
			}
			return nil
		})
		// Durable queues outlive the test: delete them (the agent's
		// consumers go with them).
		c := connect(t)
		must(t, c.DeleteQueue(t.Context(), wire.AgentQueue(actor+"-d")))
		must(t, c.DeleteQueue(t.Context(), wire.ServiceQueue(path)))
	})
}

// TestPushTTL: a parked push whose TTL passes before an agent appears is
// not executed; it expires into the dead letters.
func TestPushTTL(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path := "/" + actor + "/stale"
		tap := connect(t)
		must(t, wire.Topology(t.Context(), tap))
		q, err := tap.DeclareQueue(t.Context(), transport.Queue{Exclusive: true})
		must(t, err)
		must(t, tap.Bind(t.Context(), transport.Binding{Exchange: wire.DeadLetterExchange, Queue: q}))
		dead, err := tap.Consume(t.Context(), q, transport.ConsumeOptions{AutoAck: true})
		must(t, err)
		m := startMapper(t, connect, mapper.Config{AnnounceWait: 50 * time.Millisecond})
		must(t, m.Push(ctxT(t, 5*time.Second), path, "old news", mapper.Park(), mapper.TTL(100*time.Millisecond)))
		for {
			select {
			case d := <-dead:
				if wire.String(d.Headers, wire.HeaderPath) != path {
					continue
				}
				death, _ := d.Headers["x-death"].([]any)
				if len(death) == 0 || wire.String(death[0].(map[string]any), "reason") != "expired" {
					t.Fatalf("dead letter headers %v", d.Headers)
				}
				c := connect(t)
				must(t, c.DeleteQueue(t.Context(), wire.ServiceQueue(path)))
				return
			case <-time.After(10 * time.Second):
				t.Fatal("parked push did not expire")
			}
		}
	})
}

// TestLimits: a payload over the size or depth limit and a fan-out over its
// limit are refused before anything is sent.
func TestLimits(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path := "/" + actor + "/echo"
		var ran atomic.Int64
		for _, id := range []string{"a", "b", "c"} {
			runAgent(t, connect, agent.Config{Identity: actor + "-" + id}, func(a *agent.Agent) {
				must(t, a.Handle(path, agent.HandlerFunc(func(_ context.Context, r *agent.Request) (any, error) {
					ran.Add(1)
					return r.Payload, nil
				})))
			})
		}
		m := startMapper(t, connect, mapper.Config{MaxMessageSize: 100, MaxDepth: 4, MaxFanOut: 2})
		waitLive(t, m, actor, actor+"-a", actor+"-b", actor+"-c")
		if _, err := m.Request(ctxT(t, 5*time.Second), path, make([]int, 100)); !errors.Is(err, mapper.ErrTooLarge) {
			t.Fatalf("large payload: %v", err)
		}
		if _, err := m.Request(ctxT(t, 5*time.Second), path, [][][][][]int{{{{{1}}}}}); !errors.Is(err, mapper.ErrTooLarge) || !errors.Is(err, wire.ErrTooDeep) {
			t.Fatalf("deep payload: %v", err)
		}
		if _, err := m.FanOut(ctxT(t, 5*time.Second), path, 1); !errors.Is(err, mapper.ErrFanOutLimit) {
			t.Fatalf("fan-out to 3 with limit 2: %v", err)
		}
		if err := m.Push(ctxT(t, 5*time.Second), path, 1, mapper.Select(mapper.All())); !errors.Is(err, mapper.ErrFanOutLimit) {
			t.Fatalf("push to 3 with limit 2: %v", err)
		}
		if n := ran.Load(); n != 0 {
			t.Fatalf("%d handlers ran", n)
		}
		if _, err := m.FanOut(ctxT(t, 5*time.Second), path, 1, mapper.WithTags("none")); !errors.Is(err, mapper.ErrNoAgent) {
			t.Fatalf("tagged fan-out: %v", err)
		}
		if _, err := m.Request(ctxT(t, 5*time.Second), path, []int{1, 2}); err != nil {
			t.Fatalf("small request: %v", err)
		}
	})
}

// TestRunOnceAndAfter: a Mapper runs once; after Run returned (or failed to
// start) calls fail with ErrNotRunning at once instead of waiting.
func TestRunOnceAndAfter(t *testing.T) {
	b := mem.NewBroker()
	defer b.Close()
	m, err := mapper.New(b.Connect(), mapper.Config{})
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	<-m.Ready()
	cancel()
	must(t, <-done)
	if err := m.Run(context.Background()); err == nil {
		t.Fatal("second Run accepted")
	}
	if _, err := m.Request(ctxT(t, 5*time.Second), "/a/b", 1); !errors.Is(err, mapper.ErrNotRunning) {
		t.Fatalf("request after Run: %v", err)
	}

	closed := mem.New()
	closed.Close()
	m2, err := mapper.New(closed, mapper.Config{})
	must(t, err)
	if err := m2.Run(context.Background()); err == nil {
		t.Fatal("Run on a closed transport succeeded")
	}
	start := time.Now()
	if _, err := m2.Request(ctxT(t, 5*time.Second), "/a/b", 1); !errors.Is(err, mapper.ErrNotRunning) || time.Since(start) > time.Second {
		t.Fatalf("request after a failed Run: %v after %v", err, time.Since(start))
	}
}

// TestRedispatchKeepsTheSelector: a request for one agent is not re-sent
// to another when that agent leaves.
func TestRedispatchKeepsTheSelector(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path := "/" + actor + "/who"
		hold := make(chan struct{})
		defer close(hold)
		started := make(chan struct{}, 1)
		fredCtx, stopFred := context.WithCancel(context.Background())
		fred, err := agent.New(connect(t), agent.Config{Identity: actor + "-fred", PingInterval: 100 * time.Millisecond, DrainTimeout: 50 * time.Millisecond})
		must(t, err)
		must(t, fred.Handle(path, agent.HandlerFunc(func(ctx context.Context, _ *agent.Request) (any, error) {
			started <- struct{}{}
			select {
			case <-hold:
			case <-ctx.Done():
			}
			return "fred", ctx.Err()
		})))
		fdone := make(chan error, 1)
		go func() { fdone <- fred.Run(fredCtx) }()
		<-fred.Ready()
		runAgent(t, connect, agent.Config{Identity: actor + "-bob"}, func(a *agent.Agent) {
			must(t, a.Handle(path, agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) { return "bob", nil })))
		})
		m := startMapper(t, connect, mapper.Config{})
		waitLive(t, m, actor, actor+"-bob", actor+"-fred")
		res := make(chan error, 1)
		go func() {
			r, err := m.Request(ctxT(t, 2*time.Second), path, nil, mapper.To(actor+"-fred"))
			if err == nil {
				err = fmt.Errorf("answered by %s", r.Agent)
			}
			res <- err
		}()
		<-started
		stopFred() // drains (its handler is cancelled), unregisters
		<-fdone
		if err := <-res; !errors.Is(err, mapper.ErrTimeout) {
			t.Fatalf("request To(fred) after fred left: %v", err)
		}
	})
}

// TestEndedContextIsNotAConnectionLoss: a call whose ctx has ended on a
// mapper whose session is up fails with ctx's error, never with
// ErrConnectionLost (a select between the two picked at random, and warren
// request --timeout 10ms said "connection lost" one run in ten).
func TestEndedContextIsNotAConnectionLoss(t *testing.T) {
	b := mem.NewBroker()
	defer b.Close()
	m := fabrictest.RunMapper(t, b.Connect(), mapper.Config{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for range 100 {
		_, err := m.Request(ctx, "/a/b", nil)
		if errors.Is(err, transport.ErrConnectionLost) || !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled and no ErrConnectionLost", err)
		}
		if err := m.Push(ctx, "/a/b", nil); errors.Is(err, transport.ErrConnectionLost) || !errors.Is(err, context.Canceled) {
			t.Fatalf("push: err = %v, want context.Canceled and no ErrConnectionLost", err)
		}
	}
}

// TestStartSurvivesConnectionLoss: a connection lost while the mapper
// starts makes it start again, a bounded number of times; past that, Run
// returns the error.
func TestStartSurvivesConnectionLoss(t *testing.T) {
	for _, tc := range []struct {
		losses int
		ok     bool
	}{{losses: 2, ok: true}, {losses: 100, ok: false}} {
		t.Run(fmt.Sprint(tc.losses), func(t *testing.T) {
			tr := fabrictest.LosingDeclares(mem.New(), tc.losses)
			defer tr.Close()
			m, err := mapper.New(tr, mapper.Config{Identity: "unlucky"}, mapper.WithLogger(testenv.Logger(t)))
			must(t, err)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- m.Run(ctx) }()
			select {
			case <-m.Ready():
				if !tc.ok {
					t.Fatal("ready, though every start lost its connection")
				}
				cancel()
				if err := <-done; err != nil {
					t.Fatalf("Run: %v", err)
				}
			case err := <-done:
				if tc.ok || !errors.Is(err, transport.ErrConnectionLost) {
					t.Fatalf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("neither ready nor returned")
			}
		})
	}
}
