package agent_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
)

// outage wraps a transport and can cut it off: while down, consumers end
// and every operation waits for its context, as transport/amqp does during
// a broker outage.
type outage struct {
	transport.Transport
	mu    sync.Mutex
	down  bool
	cuts  []context.CancelFunc
	calls int
}

func (o *outage) cut() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.down = true
	for _, c := range o.cuts {
		c()
	}
}

func (o *outage) wait(ctx context.Context) error {
	o.mu.Lock()
	down := o.down
	o.calls++
	o.mu.Unlock()
	if !down {
		return nil
	}
	<-ctx.Done()
	return fmt.Errorf("%w: %w", transport.ErrConnectionLost, ctx.Err())
}

func (o *outage) DeclareExchange(ctx context.Context, ex transport.Exchange) error {
	if err := o.wait(ctx); err != nil {
		return err
	}
	return o.Transport.DeclareExchange(ctx, ex)
}

func (o *outage) DeclareQueue(ctx context.Context, q transport.Queue) (string, error) {
	if err := o.wait(ctx); err != nil {
		return "", err
	}
	return o.Transport.DeclareQueue(ctx, q)
}

func (o *outage) Bind(ctx context.Context, b transport.Binding) error {
	if err := o.wait(ctx); err != nil {
		return err
	}
	return o.Transport.Bind(ctx, b)
}

func (o *outage) Publish(ctx context.Context, ex, key string, m transport.Message, opts transport.PublishOptions) error {
	if err := o.wait(ctx); err != nil {
		return err
	}
	return o.Transport.Publish(ctx, ex, key, m, opts)
}

func (o *outage) Consume(ctx context.Context, q string, opts transport.ConsumeOptions) (<-chan *transport.Delivery, error) {
	if err := o.wait(ctx); err != nil {
		return nil, err
	}
	cctx, cancel := context.WithCancel(ctx)
	o.mu.Lock()
	o.cuts = append(o.cuts, cancel)
	o.mu.Unlock()
	return o.Transport.Consume(cctx, q, opts)
}

// TestStopDuringOutage: an agent whose context ends while the broker is
// unreachable returns at once, without waiting for the broker.
func TestStopDuringOutage(t *testing.T) {
	tr := &outage{Transport: mem.New()}
	defer tr.Transport.Close()
	a, err := agent.New(tr, agent.Config{Identity: "lonely", PingInterval: 50 * time.Millisecond}, agent.WithLogger(testenv.Logger(t)))
	must(t, err)
	must(t, a.Handle("/x/y", agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) { return nil, nil })))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	<-a.Ready()
	tr.mu.Lock()
	before := tr.calls
	tr.mu.Unlock()
	tr.cut()
	// The agent notices and tries to re-establish its session: a call
	// that waits for the broker.
	testenv.WaitFor(t, 5*time.Second, func() error {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		if tr.calls <= before {
			return fmt.Errorf("no call since the cut")
		}
		return nil
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Run did not return within 3s of its context ending during an outage")
	}
}

// TestStartSurvivesConnectionLoss: a connection lost while the agent
// starts (a cluster node going down, the transport failing over) makes it
// start again, a bounded number of times; past that, Run returns the error.
func TestStartSurvivesConnectionLoss(t *testing.T) {
	for _, tc := range []struct {
		losses int
		ok     bool
	}{{losses: 2, ok: true}, {losses: 100, ok: false}} {
		t.Run(fmt.Sprint(tc.losses), func(t *testing.T) {
			tr := fabrictest.LosingDeclares(mem.New(), tc.losses)
			defer tr.Close()
			a, err := agent.New(tr, agent.Config{Identity: "unlucky"}, agent.WithLogger(testenv.Logger(t)))
			must(t, err)
			must(t, a.Handle("/x/y", agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) { return nil, nil })))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			select {
			case <-a.Ready():
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
