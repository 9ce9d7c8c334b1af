package faulttest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport/amqp"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// connect dials RabbitMQ with a connection name that says which part of
// the test it belongs to; the transport is closed at the end of the test.
func connect(t *testing.T, url, role string) *amqp.Transport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := amqp.Dial(ctx, url, amqp.Config{ConnectionName: "warren-faulttest " + role}, amqp.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// startAgent runs an agent on tr with the handlers reg sets up, until the
// end of the test, and waits for it to be ready.
func startAgent(t *testing.T, tr *amqp.Transport, cfg agent.Config, reg func(a *agent.Agent) error) *agent.Agent {
	t.Helper()
	a, err := agent.New(tr, cfg, agent.WithLogger(testenv.Logger(t).With("test_part", cfg.Identity)))
	if err != nil {
		t.Fatal(err)
	}
	if err := reg(a); err != nil {
		t.Fatal(err)
	}
	fabrictest.RunAgent(t, a)
	return a
}

// startMapper runs a mapper on tr until the end of the test and waits for
// it to be ready.
func startMapper(t *testing.T, tr *amqp.Transport, cfg mapper.Config) *mapper.Mapper {
	t.Helper()
	return fabrictest.RunMapper(t, tr, cfg)
}

// lists returns nil when m's registry lists every agent in ids.
func lists(m *mapper.Mapper, ids ...string) error {
	var live []string
	for _, a := range m.Agents() {
		live = append(live, a.Identity)
	}
	for _, id := range ids {
		if !slices.Contains(live, id) {
			return fmt.Errorf("mapper %s lists %v, not %s", m.Identity(), live, id)
		}
	}
	return nil
}

// pause waits d or until ctx ends; it paces a load generator, it does not
// synchronise anything.
func pause(ctx context.Context, d time.Duration) {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
	case <-ctx.Done():
	}
}
