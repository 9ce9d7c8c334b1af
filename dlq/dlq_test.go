package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/dlq"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// TestListShowReplayPurge dead-letters a push an agent cannot serve and a
// request that expires in a queue, finds both with their reasons, replays
// one to an agent that now serves it, and purges the other.
func TestListShowReplayPurge(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		tr := connect(t)
		ctx := t.Context()
		actor := fabrictest.Actor()
		path := "/" + actor + "/later"
		if err := wire.Topology(ctx, tr); err != nil {
			t.Fatal(err)
		}
		// warren.dead on a shared broker may hold more than the default.
		all := dlq.Hold(65534)
		// An agent that does not serve path yet: it dead-letters the push.
		var ran atomic.Int64
		stop := runAgent(t, connect, actor+"-a", "/"+actor+"/other", &ran)
		push := transport.Message{Type: wire.TypePush, MessageID: actor + "-push", Body: []byte(`"x"`), AppID: "tester",
			Headers: map[string]any{wire.HeaderPath: path}}
		must(t, tr.Publish(ctx, wire.RequestExchange, actor+"-a", push, transport.PublishOptions{Mandatory: true}))
		// A queue with a short TTL and no consumer: its message expires.
		q := actor + ".ttl"
		_, err := tr.DeclareQueue(ctx, transport.Queue{Name: q, MessageTTL: 50 * time.Millisecond, DeadLetterExchange: wire.DeadLetterExchange})
		must(t, err)
		defer tr.DeleteQueue(context.Background(), q)
		exp := transport.Message{Type: wire.TypePush, MessageID: actor + "-expired", Body: []byte(`1`), Headers: map[string]any{wire.HeaderPath: path}}
		must(t, tr.Publish(ctx, transport.DefaultExchange, q, exp, transport.PublishOptions{Confirm: true}))

		var mine []dlq.Letter
		testenv.WaitFor(t, 10*time.Second, func() error {
			ls, err := dlq.List(ctx, tr, 0, nil, all)
			if err != nil {
				return err
			}
			mine = slices.DeleteFunc(ls, func(l dlq.Letter) bool { return l.Path != path })
			if len(mine) != 2 {
				return fmt.Errorf("%d of my dead letters listed", len(mine))
			}
			return nil
		})
		slices.SortFunc(mine, func(a, b dlq.Letter) int { return strings.Compare(a.MessageID, b.MessageID) })
		if l := mine[0]; l.MessageID != actor+"-expired" || l.Reason != "expired" || l.Queue != q || l.Key != q {
			t.Errorf("expired letter %+v", l)
		}
		if l := mine[1]; l.MessageID != actor+"-push" || l.Reason != wire.CodeNoSuchService || l.From != "tester" ||
			l.Agent != actor+"-a" || l.Exchange != wire.RequestExchange || l.Key != actor+"-a" || string(l.Body) != `"x"` {
			t.Errorf("agent's letter %+v", l)
		}
		// Listing left them in place.
		l, err := dlq.Show(ctx, tr, actor+"-push", all)
		must(t, err)
		if l.Reason != wire.CodeNoSuchService {
			t.Fatalf("show %+v", l)
		}
		if _, err := dlq.Show(ctx, tr, actor+"-nothing", all); !errors.Is(err, dlq.ErrNotFound) {
			t.Fatalf("show unknown: %v", err)
		}

		// The agent comes back serving path; replaying the push runs it.
		stop()
		runAgent(t, connect, actor+"-a", path, &ran)
		n, err := dlq.Replay(ctx, tr, func(l dlq.Letter) bool { return l.MessageID == actor+"-push" }, all)
		must(t, err)
		if n != 1 {
			t.Fatalf("replayed %d", n)
		}
		testenv.WaitFor(t, 5*time.Second, func() error {
			if ran.Load() != 1 {
				return fmt.Errorf("replayed push ran %d times", ran.Load())
			}
			return nil
		})
		n, err = dlq.Purge(ctx, tr, func(l dlq.Letter) bool { return l.Path == path }, all)
		must(t, err)
		if n != 1 {
			t.Fatalf("purged %d", n)
		}
		ls, err := dlq.List(ctx, tr, 0, nil, all)
		must(t, err)
		for _, l := range ls {
			if l.Path == path {
				t.Fatalf("left after purge: %+v", l)
			}
		}
	})
}

func runAgent(t *testing.T, connect fabrictest.Connect, id, path string, ran *atomic.Int64) (stop func()) {
	t.Helper()
	a, err := agent.New(connect(t), agent.Config{Identity: id, PingInterval: time.Second}, agent.WithLogger(testenv.Logger(t)))
	must(t, err)
	must(t, a.Handle(path, agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) {
		ran.Add(1)
		return nil, nil
	})))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	<-a.Ready()
	var once atomic.Bool
	stop = func() {
		if once.CompareAndSwap(false, true) {
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
