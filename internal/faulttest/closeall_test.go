package faulttest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/wire"
)

// callResult is the outcome of one Request in flight during the fault.
type callResult struct {
	err error
	at  time.Time // when Request returned
}

// TestDisruptiveCloseAllConnections closes every connection from the broker
// side (rabbitmqctl close_all_connections) while requests are in flight:
// requests waiting for a reply fail fast with an error wrapping
// transport.ErrConnectionLost, those sent with mapper.RetryOnConnectionLoss
// succeed, and agents and mappers recover by themselves: every mapper lists
// every agent again and requests to each agent succeed.
func TestDisruptiveCloseAllConnections(t *testing.T) {
	testenv.RequireDisruptive(t)
	url := testenv.AMQPURL(t)
	actor := fabrictest.Actor()
	echo, slow := "/"+actor+"/echo", "/"+actor+"/slow"

	const nAgents, inflight = 3, 6
	var started atomic.Int64
	// faulted is closed once every connection has been closed: the slow
	// handlers hold their requests until then, so the plain requests are
	// certainly in flight when the fault happens, however long rabbitmqctl
	// takes (it took over a second on a freshly booted node).
	faulted := make(chan struct{})
	var faultOnce sync.Once
	endFault := func() { faultOnce.Do(func() { close(faulted) }) }
	t.Cleanup(endFault)
	var ids []string
	for i := range nAgents {
		ids = append(ids, fmt.Sprintf("%s-%c", actor, 'a'+i))
	}
	fabrictest.DeleteQueues(t, url, wire.ServiceQueue(echo), wire.ServiceQueue(slow),
		wire.AgentQueue(ids[0]), wire.AgentQueue(ids[1]), wire.AgentQueue(ids[2]))
	var trs []*amqp.Transport
	for _, id := range ids {
		tr := connect(t, url, "agent "+id)
		trs = append(trs, tr)
		startAgent(t, tr, agent.Config{Identity: id, PingInterval: 200 * time.Millisecond}, func(a *agent.Agent) error {
			err := a.Handle(echo, agent.Func(func(context.Context, string) (string, error) { return id, nil }))
			if err != nil {
				return err
			}
			// slow keeps requests in flight until the fault has happened;
			// after it, it answers at once.
			return a.Handle(slow, agent.Func(func(ctx context.Context, _ int) (string, error) {
				started.Add(1)
				select {
				case <-faulted:
				case <-ctx.Done():
				}
				return id, ctx.Err()
			}))
		})
	}
	var mappers []*mapper.Mapper
	for i := range 2 {
		tr := connect(t, url, fmt.Sprintf("mapper %d", i))
		trs = append(trs, tr)
		mappers = append(mappers, startMapper(t, tr, mapper.Config{}))
	}
	requestEach := func(ctx context.Context) error {
		for _, m := range mappers {
			for _, id := range ids {
				r, err := m.Request(ctx, echo, "hi", mapper.To(id))
				if err != nil {
					return fmt.Errorf("mapper %s to %s: %w", m.Identity(), id, err)
				}
				if string(r.Body) != `"`+id+`"` {
					return fmt.Errorf("mapper %s to %s: reply %s", m.Identity(), id, r.Body)
				}
			}
		}
		return nil
	}
	testenv.WaitFor(t, 10*time.Second, func() error {
		for _, m := range mappers {
			if err := lists(m, ids...); err != nil {
				return err
			}
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	if err := requestEach(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()

	// In flight: plain requests on the first mapper, requests that retry
	// on a connection loss on the second.
	var (
		wg              sync.WaitGroup
		plain, retrying = make(chan callResult, inflight), make(chan callResult, inflight)
	)
	for range inflight {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := mappers[0].Request(ctx, slow, 1)
			plain <- callResult{err, time.Now()}
		})
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := mappers[1].Request(ctx, slow, 2, mapper.RetryOnConnectionLoss())
			retrying <- callResult{err, time.Now()}
		})
	}
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n := started.Load(); n < 2*inflight {
			return fmt.Errorf("%d of %d slow requests started", n, 2*inflight)
		}
		return nil
	})
	fault := time.Now()
	testenv.Rabbitmqctl(t, "close_all_connections", "warren fault test")
	closed := time.Now()
	endFault()

	// The fabric recovers by itself: requests from both mappers to every
	// agent succeed, and the registries list every agent.
	testenv.WaitFor(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		return requestEach(ctx)
	})
	serving := time.Since(fault)
	for _, m := range mappers {
		if err := lists(m, ids...); err != nil {
			t.Error(err)
		}
	}

	wg.Wait()
	close(plain)
	close(retrying)
	var failedFast, retried int
	var slowestFail, slowestRetry time.Duration
	for r := range plain {
		switch {
		case errors.Is(r.err, transport.ErrConnectionLost):
			failedFast++
			slowestFail = max(slowestFail, r.at.Sub(fault))
		default:
			// Its handler held it until every connection was closed,
			// so no reply could have reached this mapper before.
			t.Errorf("request in flight: err = %v, want one wrapping ErrConnectionLost", r.err)
		}
	}
	for r := range retrying {
		if r.err != nil {
			t.Errorf("request with RetryOnConnectionLoss: %v", r.err)
			continue
		}
		retried++
		slowestRetry = max(slowestRetry, r.at.Sub(fault))
	}
	if failedFast != inflight {
		t.Errorf("%d of %d plain requests in flight failed with ErrConnectionLost", failedFast, inflight)
	}
	var reconnects int64
	for _, tr := range trs {
		reconnects += tr.Reconnects()
		if tr.Reconnects() < 1 {
			t.Errorf("a transport did not reconnect: %+v", tr.Stats())
		}
	}

	t.Logf("close_all_connections took %v (rabbitmqctl)", closed.Sub(fault).Round(time.Millisecond))
	t.Logf("plain requests in flight: %d, failed with ErrConnectionLost: %d, slowest failure %v after the fault",
		inflight, failedFast, slowestFail.Round(time.Millisecond))
	t.Logf("requests with RetryOnConnectionLoss: %d, succeeded: %d, slowest %v after the fault",
		inflight, retried, slowestRetry.Round(time.Millisecond))
	t.Logf("every agent answering both mappers (and listed by both) %v after the fault", serving.Round(time.Millisecond))
	t.Logf("transports: %d, reconnections %d", len(trs), reconnects)
}
