package setup_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/setup"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// TestParkAsMapperUser: warren setup's mapper user may not declare or bind
// service queues. Park used to fail for it whatever the state, as
// "precondition failed": the 403 ACCESS_REFUSED was taken for an
// inequivalent declaration, ignored, and the bind's refusal reported as a
// precondition (issue 8, item 8). The refusal is now an access error; park
// uses the shared queue an agent declared, and says clearly when there is
// none.
func TestParkAsMapperUser(t *testing.T) {
	f := newFixture(t)
	agentU, mapperU := f.user(t, "agent"), f.user(t, "mapper")
	f.apply(t, setup.Plan{Agent: agentU, Mapper: mapperU})
	agentURL, mapperURL := f.url(t, agentU, f.vhost), f.url(t, mapperU, f.vhost)
	const path = "/test/park"

	tr := dial(t, mapperURL)
	_, err := tr.DeclareQueue(ctxT(t, 10*time.Second), transport.Queue{Name: wire.ServiceQueue(path), Durable: true, DeadLetterExchange: wire.DeadLetterExchange})
	if !errors.Is(err, transport.ErrAccessRefused) || errors.Is(err, transport.ErrPrecondition) || !strings.Contains(err.Error(), "refused for user") {
		t.Fatalf("declare a service queue as the mapper user: %v, want an access error", err)
	}

	m := startMapper(t, mapperURL)
	// No agent ever served path: no queue to park in.
	for what, call := range map[string]func() error{
		"push": func() error { return m.Push(ctxT(t, 10*time.Second), path, 1, mapper.Park()) },
		"request": func() error {
			_, err := m.Request(ctxT(t, 10*time.Second), path, 1, mapper.Park())
			return err
		},
	} {
		err := call()
		if !errors.Is(err, transport.ErrAccessRefused) || !errors.Is(err, transport.ErrUnroutable) ||
			!strings.Contains(err.Error(), "no shared queue warren.service./test/park to park in, and this user may not create it") ||
			!strings.Contains(err.Error(), "run an agent serving /test/park once") {
			t.Errorf("%s with park and no shared queue: %v", what, err)
		}
	}

	// An agent served path once: its queue takes parked work.
	ran := make(chan int, 10)
	stop := runParkAgent(t, agentURL, path, ran)
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n := len(m.Agents()); n != 1 {
			return fmt.Errorf("%d live agents", n)
		}
		return nil
	})
	stop()
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n := len(m.Agents()); n != 0 {
			return fmt.Errorf("%d live agents", n)
		}
		return nil
	})
	if err := m.Push(ctxT(t, 10*time.Second), path, 42, mapper.Park()); err != nil {
		t.Fatalf("park as the mapper user in the agent's queue: %v", err)
	}
	runParkAgent(t, agentURL, path, ran)
	select {
	case n := <-ran:
		if n != 42 {
			t.Fatalf("the agent ran %d, want the parked 42", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the parked push was not served")
	}
}

// runParkAgent runs an agent serving path (sending what it gets to ran)
// until stop, which waits for it.
func runParkAgent(t *testing.T, url, path string, ran chan<- int) (stop func()) {
	t.Helper()
	a, err := agent.New(dial(t, url), agent.Config{Identity: "parker", PingInterval: time.Second, DrainTimeout: 5 * time.Second},
		agent.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Handle(path, agent.Func(func(_ context.Context, n int) (int, error) { ran <- n; return n, nil })); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	select {
	case <-a.Ready():
	case err := <-done:
		t.Fatalf("agent: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("agent not ready")
	}
	return stop
}
