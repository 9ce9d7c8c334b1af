package events_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/events"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
)

// cutter ends its consumers on cut, as a lost connection does (what they
// held unacked goes back to the queue); the rest works on.
type cutter struct {
	transport.Transport
	mu    sync.Mutex
	cuts  []context.CancelFunc
	count int // consumers started
}

func (c *cutter) Consume(ctx context.Context, queue string, opts transport.ConsumeOptions) (<-chan *transport.Delivery, error) {
	cctx, cancel := context.WithCancel(ctx)
	ch, err := c.Transport.Consume(cctx, queue, opts)
	if err != nil {
		cancel()
		return nil, err
	}
	c.mu.Lock()
	c.cuts = append(c.cuts, cancel)
	c.count++
	c.mu.Unlock()
	return ch, nil
}

func (c *cutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.cuts {
		f()
	}
	c.cuts = nil
}

func (c *cutter) consumers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.count
}

// TestResubscribe: a subscription whose consumer ended without Close (a
// lost connection) declares, binds and consumes again by itself.
func TestResubscribe(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		key := fabrictest.Actor() + ".again"
		tr := &cutter{Transport: connect(t)}
		b, err := events.New(tr, events.Config{}, events.WithLogger(testenv.Logger(t)))
		must(t, err)
		got := &collector{}
		subscribe(t, b, key, got.handle, events.One(fabrictest.Actor()), events.Durable())
		pub := newBus(t, connect, events.Config{})
		must(t, pub.Publish(t.Context(), key, 1))
		waitLen(t, "before the cut", 1, got.len)
		tr.cut()
		testenv.WaitFor(t, 20*time.Second, func() error {
			if n := tr.consumers(); n != 2 {
				return fmt.Errorf("%d consumers started, want 2", n)
			}
			return nil
		})
		must(t, pub.Publish(t.Context(), key, 2))
		waitLen(t, "after the cut", 2, got.len)
	})
}
