package agent_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

// TestInactiveKeepsWorkInHand: a service that turns inactive while one of
// its requests is running finishes that request; the request is not
// handed to another agent as well.
func TestInactiveKeepsWorkInHand(t *testing.T) {
	b := mem.NewBroker()
	defer b.Close()
	var runs atomic.Int64
	var active atomic.Bool
	active.Store(true)
	started, release := make(chan struct{}, 1), make(chan struct{})
	start := func(id string, pred func() bool) {
		a, err := agent.New(b.Connect(), agent.Config{Identity: id, PingInterval: 20 * time.Millisecond}, agent.WithLogger(testenv.Logger(t)))
		must(t, err)
		must(t, a.Handle("/s/work", agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) {
			runs.Add(1)
			started <- struct{}{}
			<-release
			return nil, nil
		}), agent.Active(pred)))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		<-a.Ready()
	}
	start("a1", active.Load)
	pub := b.Connect()
	defer pub.Close()
	must(t, pub.Publish(t.Context(), wire.ServiceExchange, "/s/work",
		transport.Message{Type: wire.TypePush, MessageID: "w1", Body: []byte(`1`)}, transport.PublishOptions{Mandatory: true}))
	<-started
	active.Store(false)
	time.Sleep(100 * time.Millisecond) // several pings: a1 stops consuming the shared queue
	start("a2", func() bool { return true })
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free) // runs before the agents' cleanups, so they can drain
	select {
	case <-started:
		t.Fatal("the request in hand on a1 ran again on a2")
	case <-time.After(300 * time.Millisecond):
	}
	free()
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := runs.Load(); n != 1 {
			t.Fatalf("ran %d times", n)
		}
		return nil
	})
}
