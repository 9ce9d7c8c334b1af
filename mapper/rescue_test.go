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

// fakeAgent is an agent written with the transport alone: it declares its
// queue as agents do and pings, but takes nothing from its queue unless the
// test does, so work addressed to it stays there.
type fakeAgent struct {
	tr     transport.Transport
	hb     wire.Heartbeat
	cancel context.CancelFunc
	done   chan struct{}
}

const fakePing = 100 * time.Millisecond

func startFakeAgent(t *testing.T, connect fabrictest.Connect, id string, status any, services ...string) *fakeAgent {
	t.Helper()
	tr := connect(t)
	must(t, wire.Topology(t.Context(), tr))
	q := wire.AgentQueue(id)
	_, err := tr.DeclareQueue(t.Context(), transport.Queue{Name: q, Expires: time.Minute, DeadLetterExchange: wire.DeadLetterExchange})
	must(t, err)
	must(t, tr.Bind(t.Context(), transport.Binding{Exchange: wire.RequestExchange, Queue: q, Key: id}))
	deleteAtEnd(t, connect, q)
	f := &fakeAgent{tr: tr, done: make(chan struct{}), hb: wire.Heartbeat{
		Identity: id, Queue: q, Services: services, Status: status,
		PingInterval: fakePing.Milliseconds(), Started: time.Now(),
	}}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.beat(t, wire.TypeRegister)
	go func() {
		defer close(f.done)
		tick := time.NewTicker(fakePing)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				f.beat(t, wire.TypePing)
			}
		}
	}()
	t.Cleanup(f.silence)
	return f
}

func (f *fakeAgent) beat(t *testing.T, typ string) {
	body, _ := json.Marshal(f.hb)
	err := f.tr.Publish(context.Background(), wire.HeartbeatExchange, "", transport.Message{
		Body: body, Type: typ, ContentType: wire.ContentJSON, AppID: f.hb.Identity, Timestamp: time.Now(),
	}, transport.PublishOptions{})
	if err != nil {
		t.Errorf("fake agent %s: %s: %v", f.hb.Identity, typ, err)
	}
}

// silence stops the pings, as a killed agent does.
func (f *fakeAgent) silence() {
	f.cancel()
	<-f.done
}

// deleteAtEnd deletes a queue at the end of the test: durable queues
// outlive it on RabbitMQ.
func deleteAtEnd(t *testing.T, connect fabrictest.Connect, queue string) {
	c := connect(t)
	t.Cleanup(func() {
		if err := c.DeleteQueue(context.Background(), queue); err != nil {
			t.Errorf("delete %s: %v", queue, err)
		}
	})
}

// deadLetters taps the dead-letter exchange.
func deadLetters(t *testing.T, connect fabrictest.Connect) <-chan *transport.Delivery {
	tap := connect(t)
	must(t, wire.Topology(t.Context(), tap))
	q, err := tap.DeclareQueue(t.Context(), transport.Queue{Exclusive: true})
	must(t, err)
	must(t, tap.Bind(t.Context(), transport.Binding{Exchange: wire.DeadLetterExchange, Queue: q}))
	dead, err := tap.Consume(t.Context(), q, transport.ConsumeOptions{AutoAck: true})
	must(t, err)
	return dead
}

// TestRescueWorkOfAGoneAgent: pushes confirmed into the queue of an agent
// that is then killed (silent: it expires) or unregisters are moved by the
// mappers to the service's shared queue and run once each by another
// agent, though two mappers rescue at once; a request pending on it that
// its selector let no other agent take is answered from there.
func TestRescueWorkOfAGoneAgent(t *testing.T) {
	for _, how := range []string{"killed", "unregistered"} {
		t.Run(how, func(t *testing.T) {
			fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
				actor := fabrictest.Actor()
				path := "/" + actor + "/job"
				var mu sync.Mutex
				ran := map[string]int{}
				runAgent(t, connect, agent.Config{Identity: actor + "-y"}, func(a *agent.Agent) {
					must(t, a.Handle(path, agent.Func(func(_ context.Context, s string) (string, error) {
						mu.Lock()
						ran[s]++
						mu.Unlock()
						return "y did " + s, nil
					})))
				})
				deleteAtEnd(t, connect, wire.ServiceQueue(path))
				x := startFakeAgent(t, connect, actor+"-x", 0, path)
				cfg := mapper.Config{PingTimeout: 400 * time.Millisecond}
				m1, m2 := startMapper(t, connect, cfg), startMapper(t, connect, cfg)
				waitLive(t, m1, actor, actor+"-x", actor+"-y")
				waitLive(t, m2, actor, actor+"-x", actor+"-y")
				// A selector of its own that only x fits: no other agent
				// takes the work when x goes, but any may from the shared
				// queue (To, tags and fan-out pin work to their agents).
				onlyX := mapper.SelectorFunc(func(_ string, c []mapper.AgentInfo) []mapper.AgentInfo {
					return slices.DeleteFunc(c, func(a mapper.AgentInfo) bool { return a.Identity != actor+"-x" })
				})
				const n = 40
				for i := range n {
					must(t, m1.Push(ctxT(t, 5*time.Second), path, fmt.Sprint("push ", i), mapper.Select(onlyX)))
					if i == n/2 {
						// Pinned to x: it must stay in x's queue.
						must(t, m1.Push(ctxT(t, 5*time.Second), path, "pinned push", mapper.To(actor+"-x")))
					}
				}
				res := make(chan error, 1)
				go func() {
					r, err := m2.Request(ctxT(t, 20*time.Second), path, "request", mapper.Select(onlyX))
					if err == nil && (r.Agent != actor+"-y" || string(r.Body) != `"y did request"`) {
						err = fmt.Errorf("reply %s from %s", r.Body, r.Agent)
					}
					res <- err
				}()
				time.Sleep(200 * time.Millisecond) // the request is in x's queue
				x.silence()
				if how == "unregistered" {
					x.beat(t, wire.TypeUnregister)
				}
				if err := <-res; err != nil {
					t.Fatalf("request pending on the gone agent: %v", err)
				}
				testenv.WaitFor(t, 15*time.Second, func() error {
					mu.Lock()
					defer mu.Unlock()
					if len(ran) != n+1 {
						return fmt.Errorf("ran %d distinct messages, want %d", len(ran), n+1)
					}
					return nil
				})
				time.Sleep(300 * time.Millisecond) // a duplicate would show now
				mu.Lock()
				for s, c := range ran {
					if c != 1 {
						t.Errorf("%q ran %d times", s, c)
					}
				}
				mu.Unlock()
				// The pinned push waits in x's queue, with an expiration
				// that dead-letters it before the queue expires.
				left, err := x.tr.Consume(t.Context(), wire.AgentQueue(actor+"-x"), transport.ConsumeOptions{})
				must(t, err)
				select {
				case d := <-left:
					if string(d.Body) != `"pinned push"` || d.Expiration <= 0 || d.Expiration > wire.AgentQueueExpiry/2 {
						t.Errorf("left in x's queue: %s, expiration %v", d.Body, d.Expiration)
					}
					must(t, d.Ack())
				case <-time.After(5 * time.Second):
					t.Error("the pinned push is not in x's queue")
				}
			})
		})
	}
}

// TestRescueSkipsAndDeadLetters: a request the mapper itself re-sent to
// another agent is not moved too (it runs once); a message with no path,
// and one whose path has no shared queue (agents with NoSharedQueues), are
// dead-lettered with their reason, never dropped.
func TestRescueSkipsAndDeadLetters(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path, lonely := "/"+actor+"/job", "/"+actor+"/lonely"
		var runs atomic.Int64
		runAgent(t, connect, agent.Config{Identity: actor + "-y"}, func(a *agent.Agent) {
			must(t, a.Handle(path, agent.Func(func(_ context.Context, s string) (string, error) {
				runs.Add(1)
				return "y did " + s, nil
			})))
		})
		deleteAtEnd(t, connect, wire.ServiceQueue(path))
		dead := deadLetters(t, connect)
		x := startFakeAgent(t, connect, actor+"-x", -1, path, lonely) // least loaded
		m := startMapper(t, connect, mapper.Config{PingTimeout: 400 * time.Millisecond})
		waitLive(t, m, actor, actor+"-x", actor+"-y")
		must(t, m.Push(ctxT(t, 5*time.Second), lonely, "nobody shares this"))
		must(t, x.tr.Publish(t.Context(), wire.RequestExchange, actor+"-x", transport.Message{Body: []byte(`1`), Type: wire.TypePush, MessageID: "no-path"}, transport.PublishOptions{Mandatory: true}))
		res := make(chan error, 1)
		go func() {
			r, err := m.Request(ctxT(t, 10*time.Second), path, "request")
			if err == nil && r.Agent != actor+"-y" {
				err = fmt.Errorf("served by %s", r.Agent)
			}
			res <- err
		}()
		time.Sleep(200 * time.Millisecond) // the request is in x's queue
		x.silence()
		must(t, <-res)
		reasons := map[string]string{}
		timeout := time.After(10 * time.Second)
		for len(reasons) < 2 {
			select {
			case d := <-dead:
				switch {
				case d.MessageID == "no-path":
					reasons["no-path"] = wire.String(d.Headers, wire.HeaderReason)
				case wire.String(d.Headers, wire.HeaderPath) == lonely:
					reasons["lonely"] = wire.String(d.Headers, wire.HeaderReason)
				}
			case <-timeout:
				t.Fatalf("dead letters %v", reasons)
			}
		}
		if reasons["no-path"] != wire.CodeBadRequest || reasons["lonely"] != mapper.DeadReasonAgentGone {
			t.Fatalf("dead-letter reasons %v", reasons)
		}
		time.Sleep(300 * time.Millisecond)
		if n := runs.Load(); n != 1 {
			t.Fatalf("the re-sent request ran %d times", n)
		}
	})
}

// TestRescueStopsWhenTheAgentReturns: an agent that pings again before the
// mappers took its work keeps it.
func TestRescueStopsWhenTheAgentReturns(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path := "/" + actor + "/job"
		x := startFakeAgent(t, connect, actor+"-x", 0, path)
		m := startMapper(t, connect, mapper.Config{PingTimeout: 400 * time.Millisecond})
		// The rescue stays open on the empty queue until x returns,
		// rather than ending after a second of idling on its own.
		mapper.SetRescueIdle(m, time.Minute)
		waitLive(t, m, actor, actor+"-x")
		// x goes silent and is dropped: the mapper starts rescuing its
		// (empty) queue, as its consumer.
		x.silence()
		testenv.WaitFor(t, 5*time.Second, func() error {
			if got := live(m, actor); len(got) != 0 {
				return fmt.Errorf("live %v", got)
			}
			info, err := x.tr.InspectQueue(t.Context(), wire.AgentQueue(actor+"-x"))
			if err != nil {
				return err
			}
			if info.Consumers != 1 {
				return fmt.Errorf("%d consumers on x's queue, want the rescue's", info.Consumers)
			}
			return nil
		})
		// x comes back at once: the rescue must stop, so that work sent
		// to x now stays in x's queue for x. (Had it kept running, it
		// would take the push and dead-letter it: no shared queue.)
		x.beat(t, wire.TypeRegister)
		waitLive(t, m, actor, actor+"-x")
		testenv.WaitFor(t, 5*time.Second, func() error {
			info, err := x.tr.InspectQueue(t.Context(), wire.AgentQueue(actor+"-x"))
			if err != nil {
				return err
			}
			if info.Consumers != 0 {
				return fmt.Errorf("the rescue still consumes x's queue (%d consumers)", info.Consumers)
			}
			return nil
		})
		must(t, m.Push(ctxT(t, 5*time.Second), path, "mine"))
		ch, err := x.tr.Consume(t.Context(), wire.AgentQueue(actor+"-x"), transport.ConsumeOptions{})
		must(t, err)
		select {
		case d := <-ch:
			if string(d.Body) != `"mine"` {
				t.Fatalf("got %s", d.Body)
			}
			must(t, d.Ack())
		case <-time.After(5 * time.Second):
			t.Fatal("the push left the agent's queue")
		}
	})
}

// TestForeignReplyIsDiscarded: a reply whose app_id is not the agent
// the request was sent to (a request copied into another agent's queue)
// does not answer the call, for Request and for each FanOut leg.
func TestForeignReplyIsDiscarded(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path := "/" + actor + "/echo"
		ids := []string{actor + "-a", actor + "-b"}
		for i, id := range ids {
			other := ids[1-i]
			f := startFakeAgent(t, connect, id, 0, path)
			ch, err := f.tr.Consume(t.Context(), wire.AgentQueue(id), transport.ConsumeOptions{})
			must(t, err)
			go func() {
				for d := range ch {
					reply := func(agent, status string, body []byte) {
						var h map[string]any
						if status == wire.StatusError {
							h = map[string]any{wire.HeaderStatus: status, wire.HeaderCode: wire.CodeHandler, wire.HeaderError: "forged"}
						}
						_ = f.tr.Publish(context.Background(), "", d.ReplyTo, transport.Message{
							Type: wire.TypeReply, CorrelationID: d.CorrelationID, AppID: agent, Body: body, Headers: h,
						}, transport.PublishOptions{})
					}
					reply("mallory", wire.StatusError, nil)
					reply(other, wire.StatusError, nil) // another agent of the fabric
					time.Sleep(50 * time.Millisecond)
					reply(id, wire.StatusOK, []byte(`"`+id+`"`))
					_ = d.Ack()
				}
			}()
		}
		m := startMapper(t, connect, mapper.Config{})
		waitLive(t, m, actor, ids...)
		r, err := m.Request(ctxT(t, 5*time.Second), path, nil, mapper.To(actor+"-a"))
		must(t, err)
		if r.Agent != actor+"-a" || string(r.Body) != `"`+actor+`-a"` {
			t.Fatalf("reply %s from %s", r.Body, r.Agent)
		}
		if n := m.ForeignReplies(); n != 2 {
			t.Fatalf("ForeignReplies %d, want 2", n)
		}
		rs, err := m.FanOut(ctxT(t, 5*time.Second), path, nil)
		must(t, err)
		for _, id := range ids {
			if rs[id] == nil || rs[id].Err != nil || string(rs[id].Body) != `"`+id+`"` {
				t.Fatalf("fan-out reply of %s: %+v", id, rs[id])
			}
		}
		if n := m.ForeignReplies(); n != 2+4 {
			t.Fatalf("ForeignReplies %d, want 6", n)
		}
	})
}

// TestParkKeepsTheSelector: Park parks only when no live agent serves the
// path; a call for one agent or for tags is never parked where any agent
// would run it.
func TestParkKeepsTheSelector(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path := "/" + actor + "/work"
		var runs atomic.Int64
		runAgent(t, connect, agent.Config{Identity: actor + "-a", Tags: []string{"cpu"}}, func(a *agent.Agent) {
			must(t, a.Handle(path, agent.Func(func(context.Context, json.RawMessage) (string, error) {
				runs.Add(1)
				return "a", nil
			})))
		})
		deleteAtEnd(t, connect, wire.ServiceQueue(path))
		m := startMapper(t, connect, mapper.Config{AnnounceWait: 100 * time.Millisecond})
		waitLive(t, m, actor, actor+"-a")
		for name, opts := range map[string][]mapper.CallOption{
			"to":       {mapper.To(actor + "-fred")},
			"identity": {mapper.Select(mapper.Identity(actor + "-fred"))},
			"tags":     {mapper.WithTags("gpu")},
		} {
			opts = append(opts, mapper.Park())
			if _, err := m.Request(ctxT(t, 2*time.Second), path, nil, opts...); !errors.Is(err, mapper.ErrNoAgent) {
				t.Errorf("%s: Request: %v, want ErrNoAgent", name, err)
			}
			if err := m.Push(ctxT(t, 2*time.Second), path, nil, opts...); !errors.Is(err, mapper.ErrNoAgent) {
				t.Errorf("%s: Push: %v, want ErrNoAgent", name, err)
			}
		}
		// With no live agent at all, a call for one agent is not parked
		// either; one for any agent is.
		other := "/" + actor + "/nobody"
		deleteAtEnd(t, connect, wire.ServiceQueue(other))
		if err := m.Push(ctxT(t, 2*time.Second), other, nil, mapper.To(actor+"-fred"), mapper.Park()); !errors.Is(err, mapper.ErrNoAgent) {
			t.Errorf("no agent, To: %v, want ErrNoAgent", err)
		}
		must(t, m.Push(ctxT(t, 2*time.Second), other, nil, mapper.Park()))
		time.Sleep(300 * time.Millisecond)
		if n := runs.Load(); n != 0 {
			t.Fatalf("agent a ran %d calls meant for others", n)
		}
		// And a's own calls still work.
		r, err := m.Request(ctxT(t, 5*time.Second), path, nil, mapper.WithTags("cpu"), mapper.Park())
		must(t, err)
		if string(r.Body) != `"a"` {
			t.Fatalf("reply %s", r.Body)
		}
	})
}

// TestParkAgreesWithDurableAgents: a mapper that parks with Persistent
// declares the shared queue as an agent with agent.Durable() does (a quorum
// queue), so that agent starts after it and serves the parked work; and a
// mapper parking (with or without Persistent) into the quorum queue an
// agent declared before uses it as it is.
func TestParkAgreesWithDurableAgents(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		for _, agentFirst := range []bool{false, true} {
			actor := fabrictest.Actor()
			path := "/" + actor + "/keep"
			deleteAtEnd(t, connect, wire.ServiceQueue(path))
			var runs atomic.Int64
			newAgent := func() *agent.Agent {
				a, err := agent.New(connect(t), agent.Config{Identity: actor + "-d", PingInterval: 200 * time.Millisecond}, agent.WithLogger(testenv.Logger(t)))
				must(t, err)
				must(t, a.Handle(path, agent.Func(func(context.Context, string) (string, error) {
					runs.Add(1)
					return "kept", nil
				}), agent.Durable()))
				return a
			}
			m := startMapper(t, connect, mapper.Config{AnnounceWait: 50 * time.Millisecond})
			want := int64(1)
			if agentFirst {
				a := newAgent()
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- a.Run(ctx) }()
				<-a.Ready()
				cancel() // unregisters; its quorum queue stays
				must(t, <-done)
				waitLive(t, m, actor)
				must(t, m.Push(ctxT(t, 5*time.Second), path, "plain", mapper.Park()))
				want = 2
			}
			must(t, m.Push(ctxT(t, 5*time.Second), path, "persistent", mapper.Park(), mapper.Persistent()))
			fabrictest.RunAgent(t, newAgent()) // fails on an inequivalent queue
			testenv.WaitFor(t, 10*time.Second, func() error {
				if runs.Load() != want {
					return fmt.Errorf("agent first %v: ran %d, want %d", agentFirst, runs.Load(), want)
				}
				return nil
			})
		}
	})
}

// TestLastReplyAfterUnregister: an agent that stops gracefully answers what
// it took before it unregisters, but its reply and its unregister travel on
// different queues, so the unregister may arrive first. The mapper waits a
// moment for such replies before it re-sends: the request runs once, and
// the caller gets the reply of the agent that ran it.
func TestLastReplyAfterUnregister(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path := "/" + actor + "/echo"
		leaving, other := actor+"-leaving", actor+"-other"
		f := startFakeAgent(t, connect, leaving, 0, path)
		ch, err := f.tr.Consume(t.Context(), wire.AgentQueue(leaving), transport.ConsumeOptions{})
		must(t, err)
		go func() {
			for d := range ch {
				f.silence()
				f.beat(t, wire.TypeUnregister)
				time.Sleep(200 * time.Millisecond) // the reply comes after the unregister
				_ = f.tr.Publish(context.Background(), "", d.ReplyTo, transport.Message{
					Type: wire.TypeReply, CorrelationID: d.CorrelationID, Body: []byte(`"done"`), AppID: leaving,
				}, transport.PublishOptions{})
				_ = d.Ack()
			}
		}()
		var ranElsewhere atomic.Int64
		runAgent(t, connect, agent.Config{Identity: other, PingInterval: fakePing, NoSharedQueues: true}, func(a *agent.Agent) {
			must(t, a.Handle(path, agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) {
				ranElsewhere.Add(1)
				return "again", nil
			})))
		})
		m := startMapper(t, connect, mapper.Config{})
		waitLive(t, m, actor, leaving, other)
		// leaving while it is there, any other agent after: a re-send would
		// go to other.
		prefer := mapper.SelectorFunc(func(_ string, c []mapper.AgentInfo) []mapper.AgentInfo {
			for _, a := range c {
				if a.Identity == leaving {
					return []mapper.AgentInfo{a}
				}
			}
			return c[:1]
		})
		r, err := m.Request(ctxT(t, 5*time.Second), path, nil, mapper.Select(prefer))
		must(t, err)
		if r.Agent != leaving || string(r.Body) != `"done"` {
			t.Fatalf("reply %s from %s, want \"done\" from %s", r.Body, r.Agent, leaving)
		}
		time.Sleep(300 * time.Millisecond) // a re-send, had there been one, would have run by now
		if n := ranElsewhere.Load(); n != 0 {
			t.Fatalf("the request ran %d more times on %s", n, other)
		}
	})
}
