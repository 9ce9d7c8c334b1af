package mapper_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/wire"
)

// Poison messages: headers nested 33 deep, which amqp091-go refuses. On
// RabbitMQ such a message used to shut down the consuming connection of
// whoever received it, and came back on every reconnection: an agent,
// service, heartbeat or reply queue, or warren dlq, was off the fabric for
// good (issue 8, item 1). Each test sends one where an attacker can, and
// checks that the poison ends as a dead letter with a clear reason (or is
// dropped and logged where nothing may be dead-lettered) and the fabric
// goes on. They run on both transports: the embedded broker removes the
// same headers.

// poisonDepth is one level more than amqp091-go reads.
const poisonDepth = 33

func nested(n int) any {
	var v any = "bottom"
	for range n {
		v = map[string]any{"n": v}
	}
	return v
}

// deadTap returns the dead letters published from now on.
func deadTap(t *testing.T, c transport.Transport) <-chan *transport.Delivery {
	t.Helper()
	q, err := c.DeclareQueue(t.Context(), transport.Queue{Exclusive: true})
	must(t, err)
	must(t, c.Bind(t.Context(), transport.Binding{Exchange: wire.DeadLetterExchange, Queue: q}))
	ds, err := c.Consume(t.Context(), q, transport.ConsumeOptions{AutoAck: true})
	must(t, err)
	return ds
}

// awaitDead waits for the dead letter with message id id and checks that
// it says the message was malformed.
func awaitDead(t *testing.T, dead <-chan *transport.Delivery, id string) *transport.Delivery {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case d, ok := <-dead:
			if !ok {
				t.Fatal("dead-letter tap closed")
			}
			if d.MessageID != id {
				continue
			}
			reason, text := wire.String(d.Headers, wire.HeaderReason), wire.String(d.Headers, wire.HeaderError)
			if reason != wire.CodeBadRequest || !strings.Contains(text, "malformed message") || !strings.Contains(text, "nested deeper than 32 levels") {
				t.Fatalf("dead letter %s: reason %q error %q", id, reason, text)
			}
			if d.Headers["deep"] != nil {
				t.Errorf("dead letter %s still holds the poison", id)
			}
			return d
		case <-timeout:
			t.Fatalf("no dead letter %s within 10s", id)
		}
	}
}

// serves checks that path is served, n times.
func serves(t *testing.T, m *mapper.Mapper, path string, n int, opts ...mapper.CallOption) {
	t.Helper()
	for i := range n {
		r, err := m.Request(ctxT(t, 10*time.Second), path, i, opts...)
		if err != nil {
			t.Fatalf("request %d of %s after the poison: %v", i, path, err)
		}
		var got int
		must(t, r.Decode(&got))
		if got != i {
			t.Fatalf("request %d: got %d", i, got)
		}
	}
}

func poison(id, path string) transport.Message {
	return transport.Message{
		Type: wire.TypePush, MessageID: id, ContentType: wire.ContentJSON, Body: []byte(`"poison"`),
		Headers: map[string]any{wire.HeaderPath: path, "deep": nested(poisonDepth)},
	}
}

// TestPoisonInAgentQueue is the reproduction: a push to
// warren.request with the agent's identity as routing key.
func TestPoisonInAgentQueue(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		fredID := actor + "-fred"
		fred := startAgent(t, connect, fredID, actor, 0, time.Second)
		mtr := connect(t)
		m := fabrictest.RunMapper(t, mtr, mapper.Config{})
		waitLive(t, m, actor, fredID)
		evil := connect(t)
		dead := deadTap(t, evil)

		id := "poison-" + actor
		must(t, evil.Publish(t.Context(), wire.RequestExchange, fredID, poison(id, "/"+actor+"/echo"), transport.PublishOptions{Mandatory: true}))
		awaitDead(t, dead, id)
		serves(t, m, "/"+actor+"/echo", 10, mapper.To(fredID))
		if n := fred.hits.Load(); n != 10 {
			t.Errorf("the handler ran %d times, want 10 (not for the poison)", n)
		}
		noLoss(t, fred.tr, mtr, evil)
	})
}

// TestPoisonInServiceQueue: on a service's shared queue, classic and
// durable (quorum), with work parked there before any agent came: the
// poison is dead-lettered, the parked push and later requests are served.
func TestPoisonInServiceQueue(t *testing.T) {
	for _, durable := range []bool{false, true} {
		t.Run(map[bool]string{false: "classic", true: "quorum"}[durable], func(t *testing.T) {
			fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
				actor := fabrictest.Actor()
				path := "/" + actor + "/echo"
				m := startMapper(t, connect, mapper.Config{})
				evil := connect(t)
				dead := deadTap(t, evil)

				// Parked first, then the poison, then the agent.
				park := []mapper.CallOption{mapper.Park()}
				if durable {
					park = append(park, mapper.Persistent())
				}
				must(t, m.Push(ctxT(t, 10*time.Second), path, -1, park...))
				id := "poison-" + actor
				must(t, evil.Publish(t.Context(), wire.ServiceExchange, path, poison(id, path), transport.PublishOptions{Mandatory: true}))

				tr := connect(t)
				a, err := agent.New(tr, agent.Config{Identity: actor + "-a", PingInterval: time.Second, DrainTimeout: 5 * time.Second},
					agent.WithLogger(testenv.Logger(t)))
				must(t, err)
				parked := make(chan struct{})
				var opts []agent.HandlerOption
				if durable {
					opts = append(opts, agent.Durable())
				}
				must(t, a.Handle(path, agent.Func(func(_ context.Context, n int) (int, error) {
					if n == -1 {
						close(parked)
					}
					return n, nil
				}), opts...))
				fabrictest.RunAgent(t, a)

				awaitDead(t, dead, id)
				select {
				case <-parked:
				case <-time.After(10 * time.Second):
					t.Fatal("the parked push was not served")
				}
				waitLive(t, m, actor, actor+"-a")
				serves(t, m, path, 5)
				noLoss(t, tr, evil)
			})
		})
	}
}

// TestPoisonHeartbeat: any agent user may publish to warren.heartbeat; a
// poisoned register is dropped by every mapper (and logged), which go on.
func TestPoisonHeartbeat(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		mtr := connect(t)
		m := fabrictest.RunMapper(t, mtr, mapper.Config{})
		evil := connect(t)
		ghost := actor + "-ghost"
		body, err := json.Marshal(wire.Heartbeat{Identity: ghost, Queue: wire.AgentQueue(ghost), Services: []string{"/" + actor + "/echo"}, PingInterval: 1000, Status: 0})
		must(t, err)
		must(t, evil.Publish(t.Context(), wire.HeartbeatExchange, "", transport.Message{
			Type: wire.TypeRegister, AppID: ghost, ContentType: wire.ContentJSON, Body: body,
			Headers: map[string]any{"deep": nested(poisonDepth)},
		}, transport.PublishOptions{Confirm: true}))

		fredID := actor + "-fred"
		startAgent(t, connect, fredID, actor, 0, 100*time.Millisecond)
		waitLive(t, m, actor, fredID) // and not the ghost
		serves(t, m, "/"+actor+"/echo", 5)
		if got := live(m, actor); len(got) != 1 {
			t.Errorf("live agents %v: the poisoned register counted", got)
		}
		noLoss(t, mtr, evil)
	})
}

// TestPoisonReply: an agent (here a hand-made one) answers with a
// poisoned reply: the call fails at once with a clear error, and the
// mapper's reply queue keeps working.
func TestPoisonReply(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		path := "/" + actor + "/echo"
		fredID, evilID := actor+"-fred", actor+"-evil"
		startAgent(t, connect, fredID, actor, 0, time.Second)
		mtr := connect(t)
		m := fabrictest.RunMapper(t, mtr, mapper.Config{})

		evil := connect(t)
		q, err := evil.DeclareQueue(t.Context(), transport.Queue{Name: wire.AgentQueue(evilID), Exclusive: true})
		must(t, err)
		must(t, evil.Bind(t.Context(), transport.Binding{Exchange: wire.RequestExchange, Queue: q, Key: evilID}))
		reqs, err := evil.Consume(t.Context(), q, transport.ConsumeOptions{AutoAck: true})
		must(t, err)
		body, err := json.Marshal(wire.Heartbeat{Identity: evilID, Queue: q, Services: []string{path}, PingInterval: 60000, Status: 0})
		must(t, err)
		must(t, evil.Publish(t.Context(), wire.HeartbeatExchange, "", transport.Message{
			Type: wire.TypeRegister, AppID: evilID, ContentType: wire.ContentJSON, Body: body,
			Headers: map[string]any{wire.HeaderVersion: int64(wire.Version)},
		}, transport.PublishOptions{Confirm: true}))
		waitLive(t, m, actor, evilID, fredID)
		go func() {
			for d := range reqs {
				corr := d.CorrelationID
				if corr == "" {
					corr = d.MessageID
				}
				_ = evil.Publish(context.Background(), transport.DefaultExchange, d.ReplyTo, transport.Message{
					Type: wire.TypeReply, CorrelationID: corr, AppID: evilID, ContentType: wire.ContentJSON, Body: []byte(`"fake"`),
					Headers: map[string]any{wire.HeaderStatus: wire.StatusOK, "deep": nested(poisonDepth)},
				}, transport.PublishOptions{})
			}
		}()

		start := time.Now()
		_, err = m.Request(ctxT(t, 10*time.Second), path, 1, mapper.To(evilID))
		var re *wire.RemoteError
		if !errors.As(err, &re) || re.Code != wire.CodeBadRequest || !strings.Contains(re.Message, "malformed reply") || re.Agent != evilID {
			t.Fatalf("poisoned reply: %v, want a bad_request RemoteError saying malformed reply", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("the poisoned reply took %v to fail the call", d)
		}
		serves(t, m, path, 5, mapper.To(fredID))
		noLoss(t, mtr, evil)
	})
}

// noLoss checks that none of the transports (on RabbitMQ) lost its
// connection: before the fix the poison broke the consuming connection.
func noLoss(t *testing.T, trs ...transport.Transport) {
	t.Helper()
	for i, tr := range trs {
		if a, ok := fabrictest.Unwrap(tr).(*amqp.Transport); ok {
			if s := a.Stats(); s.Losses != 0 {
				t.Errorf("transport %d: %+v, want no connection loss", i, s)
			}
		}
	}
}
