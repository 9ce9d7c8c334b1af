package mapper_test

import (
	"context"
	"errors"
	"fmt"
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

// nacking nacks the first n publishes to warren.request, as RabbitMQ does
// while the leader of the agent's quorum queue is being elected.
type nacking struct {
	transport.Transport
	n atomic.Int64
}

func (t *nacking) Publish(ctx context.Context, exchange, key string, msg transport.Message, opts transport.PublishOptions) error {
	if exchange == wire.RequestExchange && t.n.Add(-1) >= 0 {
		return transport.ErrNacked
	}
	return t.Transport.Publish(ctx, exchange, key, msg, opts)
}

// TestNackedPublishSentAgain: a request or push the broker nacked (it did
// not take it) is published again, and runs once; after as many nacks as
// the mapper tries, the call fails with ErrNacked.
func TestNackedPublishSentAgain(t *testing.T) {
	b := mem.NewBroker()
	t.Cleanup(func() { _ = b.Close() })
	connect := func(t *testing.T) transport.Transport {
		tr := b.Connect()
		t.Cleanup(func() { tr.Close() })
		return tr
	}
	actor := fabrictest.Actor()
	path := "/" + actor + "/echo"
	var runs atomic.Int64
	runAgent(t, connect, agent.Config{Identity: actor + "-a"}, func(a *agent.Agent) {
		must(t, a.Handle(path, agent.Func(func(_ context.Context, s string) (string, error) {
			runs.Add(1)
			return s, nil
		})))
	})
	tr := &nacking{Transport: connect(t)}
	m := fabrictest.RunMapper(t, tr, mapper.Config{})
	waitLive(t, m, actor, actor+"-a")

	tr.n.Store(2)
	r, err := m.Request(ctxT(t, 5*time.Second), path, "hi")
	must(t, err)
	if string(r.Body) != `"hi"` || runs.Load() != 1 {
		t.Fatalf("reply %s, %d runs", r.Body, runs.Load())
	}
	tr.n.Store(2)
	must(t, m.Push(ctxT(t, 5*time.Second), path, "push"))
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := runs.Load(); n != 2 {
			return fmt.Errorf("%d runs, want 2", n)
		}
		return nil
	})

	tr.n.Store(100)
	_, err = m.Request(ctxT(t, 5*time.Second), path, "hi")
	if !errors.Is(err, transport.ErrNacked) {
		t.Fatalf("always nacked: %v", err)
	}
	if left := tr.n.Load(); left != 100-4 {
		t.Errorf("published %d times, want 4", 100-left)
	}
}
