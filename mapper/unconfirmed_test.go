package mapper_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// optsRecorder records the options of the requests and pushes published
// through it, by the agent they went to, and reports returns as the
// transport it wraps does.
type optsRecorder struct {
	transport.Transport
	mu   sync.Mutex
	opts map[string][]transport.PublishOptions
}

func (r *optsRecorder) Publish(ctx context.Context, exchange, key string, msg transport.Message, opts transport.PublishOptions) error {
	if exchange == wire.RequestExchange && (msg.Type == wire.TypeRequest || msg.Type == wire.TypePush) {
		r.mu.Lock()
		if r.opts == nil {
			r.opts = map[string][]transport.PublishOptions{}
		}
		r.opts[key] = append(r.opts[key], opts)
		r.mu.Unlock()
	}
	return r.Transport.Publish(ctx, exchange, key, msg, opts)
}

func (r *optsRecorder) NotifyReturn(f func(transport.Return)) (func(), bool) {
	return transport.NotifyReturn(r.Transport, f)
}

func (r *optsRecorder) of(agent string) []transport.PublishOptions {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]transport.PublishOptions(nil), r.opts[agent]...)
}

var (
	confirmed   = transport.PublishOptions{Mandatory: true}
	unconfirmed = transport.PublishOptions{Mandatory: true, Unconfirmed: true}
)

// TestRequestConfirmByQueueType: a request to an agent whose heartbeat
// says its queue is classic (a default agent) is published mandatory
// without a confirm; one to a durable agent (quorum), a persistent one, a
// push, and one to an agent whose heartbeat does not say (an older or
// outside agent) keep the confirm.
func TestRequestConfirmByQueueType(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path := "/" + actor + "/echo"
		echo := agent.HandlerFunc(func(_ context.Context, r *agent.Request) (any, error) { return r.Payload, nil })
		classic, durable := actor+"-classic", actor+"-durable"
		runAgent(t, connect, agent.Config{Identity: classic}, func(a *agent.Agent) { must(t, a.Handle(path, echo)) })
		runAgent(t, connect, agent.Config{Identity: durable, Durable: true}, func(a *agent.Agent) { must(t, a.Handle(path, echo)) })
		rec := &optsRecorder{Transport: connect(t)}
		m := fabrictest.RunMapper(t, rec, mapper.Config{})
		waitLive(t, m, actor, classic, durable)
		for _, a := range m.Agents() {
			want := map[string]string{classic: wire.QueueClassic, durable: wire.QueueQuorum}[a.Identity]
			if want != "" && a.QueueType != want {
				t.Errorf("agent %s: queue type %q, want %q", a.Identity, a.QueueType, want)
			}
		}
		for _, id := range []string{classic, durable} {
			_, err := m.Request(ctxT(t, 10*time.Second), path, "hi", mapper.To(id))
			must(t, err)
			_, err = m.Request(ctxT(t, 10*time.Second), path, "hi", mapper.To(id), mapper.Persistent())
			must(t, err)
			must(t, m.Push(ctxT(t, 10*time.Second), path, "hi", mapper.To(id)))
		}
		check := func(id string, want ...transport.PublishOptions) {
			t.Helper()
			got := rec.of(id)
			if len(got) != len(want) {
				t.Fatalf("%s: published with %+v, want %+v", id, got, want)
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("%s: published with %+v, want %+v", id, got, want)
				}
			}
		}
		check(classic, unconfirmed, confirmed, confirmed)
		check(durable, confirmed, confirmed, confirmed)

		// An agent whose heartbeat has no queue_type (here with no queue
		// either): confirmed, as before.
		other := actor + "-other"
		pingWithout(t, connect(t), other, path)
		waitLive(t, m, actor, classic, durable, other)
		waitQueueType(t, m, other, "")
		_, err := m.Request(ctxT(t, 10*time.Second), path, "hi", mapper.To(other))
		if !errors.Is(err, mapper.ErrNoAgent) {
			t.Fatalf("request to an agent with no queue: %v, want ErrNoAgent (it was unroutable)", err)
		}
		check(other, confirmed)
	})
}

// pingWithout publishes a heartbeat for id serving path without
// queue_type, as an agent of an older version or outside Warren sends.
func pingWithout(t *testing.T, tr transport.Transport, id, path string) {
	t.Helper()
	must(t, tr.Publish(t.Context(), wire.HeartbeatExchange, "", transport.Message{
		Type: wire.TypePing, ContentType: wire.ContentJSON, AppID: id,
		Body: []byte(`{"identity":"` + id + `","services":["` + path + `"],"status":-1000,"ping_interval_ms":60000}`),
	}, transport.PublishOptions{Confirm: true}))
}

func waitQueueType(t *testing.T, m *mapper.Mapper, id, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, a := range m.Agents() {
			if a.Identity == id && a.QueueType == want {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent %s: no queue type %q within 10s: %+v", id, want, m.Agents())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestUnconfirmedRequestReturned: a request to an agent whose heartbeat
// says classic but whose queue does not exist (gone between its heartbeat
// and the request: stale, or forged) is returned by the broker; without a
// confirm to wait for, the return fails it at once as ErrUnroutable did
// (the agent is dropped and the request goes to the next agent), not at
// its deadline. A request for that agent alone then finds no agent.
func TestUnconfirmedRequestReturned(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path := "/" + actor + "/echo"
		real := actor + "-real"
		runAgent(t, connect, agent.Config{Identity: real}, func(a *agent.Agent) {
			must(t, a.Handle(path, agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) { return "real", nil })))
		})
		rec := &optsRecorder{Transport: connect(t)}
		m := fabrictest.RunMapper(t, rec, mapper.Config{})
		ghost := actor + "-ghost"
		forger := connect(t)
		forge := func() {
			must(t, forger.Publish(t.Context(), wire.HeartbeatExchange, "", transport.Message{
				Type: wire.TypePing, ContentType: wire.ContentJSON, AppID: ghost,
				Body: []byte(`{"identity":"` + ghost + `","services":["` + path + `"],"status":-1000,"ping_interval_ms":60000,"queue_type":"classic"}`),
			}, transport.PublishOptions{Confirm: true}))
			waitLive(t, m, actor, ghost, real)
		}
		forge()
		// A deadline far beyond what the return takes: a request that
		// waited for it fails with ErrTimeout.
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		r, err := m.Request(ctx, path, nil)
		must(t, err)
		if r.Agent != real {
			t.Fatalf("answered by %s", r.Agent)
		}
		if got := rec.of(ghost); len(got) != 1 || got[0] != unconfirmed {
			t.Fatalf("ghost: published with %+v, want one %+v", got, unconfirmed)
		}
		if ids := live(m, actor); len(ids) != 1 || ids[0] != real {
			t.Fatalf("live after the returned request: %v, want only %s", ids, real)
		}
		forge()
		_, err = m.Request(ctx, path, nil, mapper.To(ghost))
		if !errors.Is(err, mapper.ErrNoAgent) {
			t.Fatalf("request for the ghost alone: %v, want ErrNoAgent (it was unroutable, and dropped)", err)
		}
		if got := rec.of(ghost); len(got) != 2 || got[1] != unconfirmed {
			t.Fatalf("ghost: published with %+v, want two %+v", got, unconfirmed)
		}
	})
}
