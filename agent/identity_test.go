package agent_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// TestSecondAgentWithSameIdentity: a second agent with the identity of a
// running one is refused (ErrIdentityInUse) once IdentityWait has passed;
// a third, started while the first runs, takes over when it stops. Plain
// and durable (quorum) queues alike.
func TestSecondAgentWithSameIdentity(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		for _, durable := range []bool{false, true} {
			t.Run(map[bool]string{false: "plain", true: "durable"}[durable], func(t *testing.T) {
				actor := fabrictest.Actor()
				id := actor + "-a"
				start := func(wait time.Duration, log *slog.Logger) (*agent.Agent, context.CancelFunc, chan error) {
					a, err := agent.New(connect(t), agent.Config{Identity: id, PingInterval: time.Second, Durable: durable, IdentityWait: wait}, agent.WithLogger(log))
					must(t, err)
					must(t, a.Handle("/"+actor+"/echo", agent.HandlerFunc(func(_ context.Context, r *agent.Request) (any, error) { return r.Payload, nil })))
					ctx, cancel := context.WithCancel(context.Background())
					done := make(chan error, 1)
					ended := make(chan struct{})
					go func() { err := a.Run(ctx); close(ended); done <- err }()
					t.Cleanup(func() { cancel(); <-ended })
					return a, cancel, done
				}
				first, stopFirst, firstDone := start(0, testenv.Logger(t))
				<-first.Ready()

				_, _, done := start(300*time.Millisecond, testenv.Logger(t))
				select {
				case err := <-done:
					if !errors.Is(err, agent.ErrIdentityInUse) || !strings.Contains(err.Error(), "is another agent") {
						t.Fatalf("second agent: %v, want ErrIdentityInUse", err)
					}
					t.Logf("second agent: %v", err)
				case <-time.After(15 * time.Second):
					t.Fatal("second agent with the same identity still running after 15s")
				}

				// A third waits, saying so, and takes over once the first
				// has stopped.
				var logs testenv.Buffer
				third, _, _ := start(time.Minute, slog.New(slog.NewTextHandler(&logs, nil)))
				testenv.WaitFor(t, 10*time.Second, func() error {
					if !strings.Contains(logs.String(), "consumed by someone else") {
						return errors.New("the third agent has not found the queue in use")
					}
					return nil
				})
				stopFirst()
				must(t, <-firstDone)
				select {
				case <-third.Ready():
				case <-time.After(20 * time.Second):
					t.Fatalf("the third agent did not take over\n%s", logs.String())
				}
			})
		}
	})
}

// TestSwitchDurable: an agent restarted with Durable, or without it again,
// replaces its own queue (which RabbitMQ refuses to redeclare with other
// arguments) when the queue is empty and unused; when it holds messages,
// Run fails saying what to do, and the messages stay.
func TestSwitchDurable(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		id := actor + "-a"
		tr := connect(t)
		run := func(durable bool) error {
			t.Helper()
			a, err := agent.New(tr, agent.Config{Identity: id, PingInterval: time.Second, Durable: durable}, agent.WithLogger(testenv.Logger(t)))
			must(t, err)
			must(t, a.Handle("/"+actor+"/echo", agent.HandlerFunc(func(_ context.Context, r *agent.Request) (any, error) { return r.Payload, nil })))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			select {
			case <-a.Ready():
				cancel()
				return <-done
			case err := <-done:
				return err
			}
		}
		for _, durable := range []bool{false, true, false} {
			if err := run(durable); err != nil {
				t.Fatalf("agent with durable %v: %v", durable, err)
			}
		}
		// The plain queue now holds a push: the durable agent leaves it.
		push := transport.Message{Type: wire.TypePush, MessageID: actor + "-push", Body: []byte(`1`), Headers: map[string]any{wire.HeaderPath: "/" + actor + "/echo"}}
		must(t, tr.Publish(t.Context(), wire.RequestExchange, id, push, transport.PublishOptions{Mandatory: true}))
		err := run(true)
		if err == nil || !strings.Contains(err.Error(), "holds 1 message(s)") || !strings.Contains(err.Error(), "rabbitmqctl delete_queue "+wire.AgentQueue(id)) {
			t.Fatalf("durable agent over a plain queue holding a push: %v", err)
		}
		t.Logf("durable agent over a plain queue holding a push: %v", err)
		info, err := tr.InspectQueue(t.Context(), wire.AgentQueue(id))
		if err != nil || info.Messages != 1 {
			t.Fatalf("the plain queue after the refusal: %+v, %v", info, err)
		}
		// Run as before, the agent serves it.
		if err := run(false); err != nil {
			t.Fatal(err)
		}
	})
}

// TestSecondDurableAgentTakesNothing: a second durable agent refused
// because the queue is in use has not taken its ready messages and given
// them back, which would count towards the quorum queue's delivery limit.
func TestSecondDurableAgentTakesNothing(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		id := actor + "-a"
		tr := connect(t)
		newAgent := func() *agent.Agent {
			a, err := agent.New(connect(t), agent.Config{Identity: id, PingInterval: time.Second, Durable: true, IdentityWait: 300 * time.Millisecond}, agent.WithLogger(testenv.Logger(t)))
			must(t, err)
			must(t, a.Handle("/"+actor+"/echo", agent.HandlerFunc(func(_ context.Context, r *agent.Request) (any, error) { return r.Payload, nil })))
			return a
		}
		// The durable queue exists; another consumer holds one message of three.
		ctx, cancel := context.WithCancel(context.Background())
		a := newAgent()
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		<-a.Ready()
		cancel()
		must(t, <-done)
		own := wire.AgentQueue(id)
		testenv.WaitFor(t, 10*time.Second, func() error { // the embedded broker ends consumers asynchronously
			if info, err := tr.InspectQueue(t.Context(), own); err != nil || info.Consumers != 0 {
				return fmt.Errorf("queue %+v, %v", info, err)
			}
			return nil
		})
		cctx, stopOther := context.WithCancel(t.Context())
		other, err := tr.Consume(cctx, own, transport.ConsumeOptions{Prefetch: 1})
		must(t, err)
		for i := range 3 {
			msg := transport.Message{Type: wire.TypePush, MessageID: fmt.Sprint(i), Body: []byte(`1`), Persistent: true, Headers: map[string]any{wire.HeaderPath: "/" + actor + "/echo"}}
			must(t, tr.Publish(t.Context(), wire.RequestExchange, id, msg, transport.PublishOptions{Mandatory: true}))
		}
		held := <-other
		if err := newAgent().Run(t.Context()); !errors.Is(err, agent.ErrIdentityInUse) {
			t.Fatalf("second agent: %v", err)
		}
		info, err := tr.InspectQueue(t.Context(), own)
		if err != nil || info.Messages != 2 {
			t.Fatalf("queue after the refusal: %+v, %v", info, err)
		}
		// The other consumer goes, giving back the one it held; the two
		// others were never delivered.
		stopOther()
		for range other {
		}
		ch, err := tr.Consume(t.Context(), own, transport.ConsumeOptions{Prefetch: 3})
		must(t, err)
		for range 3 {
			select {
			case d := <-ch:
				if n, _ := wire.Int(d.Headers, "x-delivery-count"); d.MessageID != held.MessageID && (n != 0 || d.Redelivered) {
					t.Errorf("message %s: x-delivery-count %d, redelivered %v: the refused agent took it", d.MessageID, n, d.Redelivered)
				}
				must(t, d.Ack())
			case <-time.After(10 * time.Second):
				t.Fatal("a message is missing")
			}
		}
	})
}
