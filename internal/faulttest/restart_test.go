package faulttest

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// pushLog is what the pusher of TestDisruptiveRestartDurablePushes saw.
type pushLog struct {
	mu          sync.Mutex
	sent        int          // Push calls
	confirmed   map[int]bool // numbers whose Push returned nil
	unconfirmed int          // Push calls that returned an error
	errs        map[string]int
	lastConfirm time.Time
	maxGap      time.Duration // the longest time without a confirm
}

func (p *pushLog) confirmedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.confirmed)
}

// errKind names an error for the figures.
func errKind(err error) string {
	switch {
	case errors.Is(err, transport.ErrConnectionLost):
		return "connection lost"
	case errors.Is(err, mapper.ErrNoAgent):
		return "no agent"
	case errors.Is(err, transport.ErrUnroutable):
		return "unroutable"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return err.Error()
}

// TestDisruptiveRestartDurablePushes restarts RabbitMQ (rabbitmqctl
// stop_app, start_app) under a stream of durable, confirmed pushes from a
// mapper (mapper.Persistent) to a durable agent (quorum queues, handler
// registered with agent.Durable). The stream goes on through the restart: a
// Push that returns an error is counted as unconfirmed and sent again with
// the same number. Afterwards every number whose Push returned nil must
// have been executed at least once.
//
// Why stop_app/start_app rather than killing the Erlang VM: it is a real
// restart as clients see it (every connection closed by the broker, queues
// and their messages recovered from disk), it needs no process supervisor
// or root, and it is what the transport conformance suite uses. Confirms
// for persistent messages on quorum queues are sent only once a majority
// (here: the one node) has written them to disk, so a crash of the VM
// would not lose them either; that case is not exercised here.
func TestDisruptiveRestartDurablePushes(t *testing.T) {
	testenv.RequireDisruptive(t)
	url := testenv.AMQPURL(t)
	actor := fabrictest.Actor()
	path := "/" + actor + "/work"
	id := actor + "-durable"
	fabrictest.DeleteQueues(t, url, wire.AgentQueue(id), wire.ServiceQueue(path))

	var (
		execMu   sync.Mutex
		executed = map[int]int{}
	)
	trA := connect(t, url, "agent")
	// The agent is slower than the pushers (one push at a time, 10ms
	// each), so that a backlog waits in its quorum queue during the
	// restart.
	startAgent(t, trA, agent.Config{Identity: id, Durable: true, PingInterval: 200 * time.Millisecond, Prefetch: 1}, func(a *agent.Agent) error {
		return a.Handle(path, agent.Func(func(ctx context.Context, n int) (any, error) {
			pause(ctx, 10*time.Millisecond)
			execMu.Lock()
			executed[n]++
			execMu.Unlock()
			return nil, nil
		}), agent.Durable())
	})
	trM := connect(t, url, "mapper")
	m := startMapper(t, trM, mapper.Config{})
	testenv.WaitFor(t, 10*time.Second, func() error { return lists(m, id) })

	log := &pushLog{confirmed: map[int]bool{}, errs: map[string]int{}}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	backlogOf := func() int {
		n := log.confirmedCount()
		execMu.Lock()
		defer execMu.Unlock()
		return n - len(executed)
	}
	const pushers = 4
	for w := range pushers {
		wg.Go(func() { push(ctx, m, path, log, w, pushers, backlogOf) })
	}

	testenv.WaitFor(t, 20*time.Second, func() error {
		if n := log.confirmedCount(); n < 100 {
			return fmt.Errorf("%d pushes confirmed before the restart", n)
		}
		return nil
	})
	before, backlog := log.confirmedCount(), backlogOf()
	start := time.Now()
	testenv.RestartRabbitMQ(t)
	restarted := time.Now()
	after := log.confirmedCount()
	testenv.WaitFor(t, 90*time.Second, func() error {
		if n := log.confirmedCount(); n < after+100 {
			return fmt.Errorf("%d pushes confirmed, %d before the restart, %d when it returned", n, before, after)
		}
		return nil
	})
	stop()
	wg.Wait()

	// Each confirmed push is executed at least once.
	var lost []int
	testenv.WaitFor(t, 60*time.Second, func() error {
		execMu.Lock()
		defer execMu.Unlock()
		lost = lost[:0]
		for n := range log.confirmed {
			if executed[n] == 0 {
				lost = append(lost, n)
			}
		}
		if len(lost) > 0 {
			sort.Ints(lost)
			return fmt.Errorf("%d confirmed pushes not executed: %v", len(lost), lost[:min(len(lost), 20)])
		}
		return nil
	})
	execMu.Lock()
	distinct, runs := len(executed), 0
	for _, c := range executed {
		runs += c
	}
	execMu.Unlock()
	log.mu.Lock()
	defer log.mu.Unlock()
	t.Logf("broker restart (stop_app, start_app, await_startup) took %v; longest time without a confirmed push %v",
		restarted.Sub(start).Round(time.Millisecond), log.maxGap.Round(time.Millisecond))
	t.Logf("%d confirmed pushes waiting in the agent's queue when the restart began", backlog)
	t.Logf("pushes: sent %d, confirmed %d, unconfirmed %d %v", log.sent, len(log.confirmed), log.unconfirmed, log.errs)
	t.Logf("executed: %d distinct, %d duplicated executions; lost (confirmed, never executed): %d", distinct, runs-distinct, len(lost))
	t.Logf("transports: agent %+v, mapper %+v", trA.Stats(), trM.Stats())
	if trA.Reconnects() < 1 || trM.Reconnects() < 1 {
		t.Errorf("reconnects: agent %d, mapper %d; want at least one each", trA.Reconnects(), trM.Reconnects())
	}
}

// push sends the numbers w, w+step, w+2*step, ... until ctx ends, each one
// again until its Push returns nil, and records what happened in log. It
// holds back while more than maxBacklog confirmed pushes wait for the agent.
func push(ctx context.Context, m *mapper.Mapper, path string, log *pushLog, w, step int, backlog func() int) {
	const maxBacklog = 200
	for n := w; ctx.Err() == nil; {
		if backlog() > maxBacklog {
			pause(ctx, 10*time.Millisecond)
			continue
		}
		// Bound the call without a deadline: a deadline would travel with
		// the push as its expiration, and a push that waits in the queue
		// longer would be dead-lettered, not executed.
		pctx, cancel := context.WithCancel(ctx)
		tm := time.AfterFunc(5*time.Second, cancel)
		err := m.Push(pctx, path, n, mapper.Persistent())
		tm.Stop()
		cancel()
		log.mu.Lock()
		log.sent++
		if err == nil {
			log.confirmed[n] = true
			now := time.Now()
			if !log.lastConfirm.IsZero() {
				log.maxGap = max(log.maxGap, now.Sub(log.lastConfirm))
			}
			log.lastConfirm = now
			n += step
		} else if ctx.Err() == nil {
			log.unconfirmed++
			log.errs[errKind(err)]++
		}
		log.mu.Unlock()
		if err != nil {
			pause(ctx, 50*time.Millisecond) // then the same number again
		}
	}
}
