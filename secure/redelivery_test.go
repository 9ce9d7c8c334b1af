package secure

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// TestReplayWhileInHand: while an agent holds a genuine request (its
// handler runs), an attacker with broker access publishes copies of it to
// the agent's queue, takes them and requeues them, so that they come back
// flagged redelivered. None of them runs: the request runs once. Then the
// agent's channel goes away with the request unsettled, and the broker's
// real redelivery runs on the agent's next consumer.
func TestReplayWhileInHand(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		p := testPKI(t)
		raw := connect(t) // the attacker
		if err := wire.Topology(t.Context(), raw); err != nil {
			t.Fatal(err)
		}
		wrap := func(name string) *Transport {
			tr, err := Wrap(connect(t), p.caConfig(name), WithLogger(testenv.Logger(t)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tr.Close() })
			return tr
		}
		tx, rx := wrap("mapper1"), wrap("fred")
		t.Run("agent queue", func(t *testing.T) {
			q, err := raw.DeclareQueue(t.Context(), transport.Queue{Name: wire.AgentQueue(fabrictest.Actor()), DeadLetterExchange: wire.DeadLetterExchange})
			if err != nil {
				t.Fatal(err)
			}
			replayWhileInHand(t, raw, tx, rx, "", q, q, request("fred", "/a/b"))
		})
		t.Run("shared service queue", func(t *testing.T) {
			path := "/" + fabrictest.Actor() + "/transfer"
			q, err := raw.DeclareQueue(t.Context(), transport.Queue{Name: wire.ServiceQueue(path), Durable: true, DeadLetterExchange: wire.DeadLetterExchange})
			if err != nil {
				t.Fatal(err)
			}
			if err := raw.Bind(t.Context(), transport.Binding{Exchange: wire.ServiceExchange, Queue: q, Key: path}); err != nil {
				t.Fatal(err)
			}
			msg := request("", path) // for any agent: signed, not encrypted
			delete(msg.Headers, wire.HeaderTo)
			replayWhileInHand(t, raw, tx, rx, wire.ServiceExchange, path, q, msg)
		})
	})
}

// replayWhileInHand is TestReplayWhileInHand with msg, which tx publishes
// to exchange with key, routed to queue q, consumed by rx.
func replayWhileInHand(t *testing.T, raw transport.Transport, tx, rx *Transport, exchange, key, q string, msg transport.Message) {
	const copies = 5
	before := rx.Stats()
	if err := tx.Publish(t.Context(), exchange, key, msg, transport.PublishOptions{}); err != nil {
		t.Fatal(err)
	}

	// The attacker takes the genuine request, publishes copies of it,
	// takes those too, and lets them all go back (redelivered).
	actx, stopAttacker := context.WithCancel(t.Context())
	taken, err := raw.Consume(actx, q, transport.ConsumeOptions{Prefetch: copies + 1})
	if err != nil {
		t.Fatal(err)
	}
	genuine := receive(t, taken)
	for range copies {
		if err := raw.Publish(t.Context(), exchange, key, genuine.Message, transport.PublishOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for range copies {
		receive(t, taken)
	}
	stopAttacker()
	for range taken {
	}

	// The agent takes them all; what it is handed on, it holds.
	cctx, stopConsumer := context.WithCancel(t.Context())
	in, err := rx.Consume(cctx, q, transport.ConsumeOptions{Prefetch: copies + 1})
	if err != nil {
		t.Fatal(err)
	}
	var handed atomic.Int64
	held := make(chan *transport.Delivery, copies+1)
	go func() {
		for d := range in {
			handed.Add(1)
			held <- d
		}
		close(held)
	}()
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n, r := handed.Load(), rx.Stats().Rejected[ReasonReplayed]-before.Rejected[ReasonReplayed]; n+r != copies+1 {
			return fmt.Errorf("%d handed on, %d refused as replays, of %d", n, r, copies+1)
		}
		return nil
	})
	if n := handed.Load(); n != 1 {
		t.Fatalf("the request was handed on %d times while in hand, want once", n)
	}

	// The agent's channel goes away with the request in hand: the
	// broker redelivers it, and it runs again on the next consumer.
	stopConsumer()
	for range held {
	}
	d := receive(t, consumeOn(t, rx, q))
	if !d.Redelivered || string(d.Body) != `{"secret":"launch codes"}` {
		t.Fatalf("redelivery %+v", d)
	}
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
	if s := rx.Stats(); s.Opened-before.Opened != 2 || s.Rejected[ReasonReplayed]-before.Rejected[ReasonReplayed] != copies {
		t.Fatalf("stats %+v, before %+v", s, before)
	}
}

func consumeOn(t *testing.T, tr transport.Transport, q string) <-chan *transport.Delivery {
	t.Helper()
	ch, err := tr.Consume(t.Context(), q, transport.ConsumeOptions{Prefetch: 10})
	if err != nil {
		t.Fatal(err)
	}
	return ch
}
