package clustertest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// dial connects to the list of nodes, in the order given.
func dial(t *testing.T, urls []string, role string) *amqp.Transport {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tr, err := amqp.Dial(ctx, strings.Join(urls, ","), amqp.Config{ConnectionName: "warren-clustertest " + role},
		amqp.WithLogger(testenv.Logger(t).With("test_part", role)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// TestClusterNodeKilled: an agent and a mapper connected to node 1 of the
// cluster, given every node's URL; node 1's Erlang VM is killed (SIGKILL).
// Both transports fail over to another node by themselves, and requests
// are answered again.
func TestClusterNodeKilled(t *testing.T) {
	urls := testenv.ClusterURLs(t)
	clusterUp(t)
	t.Cleanup(func() { testenv.Cluster(t, "start", "1") })

	actor := fabrictest.Actor()
	path, id := "/"+actor+"/echo", actor+"-a"
	atr, mtr := dial(t, urls, "agent"), dial(t, urls, "mapper")
	first := amqp.RedactURL(urls[0])
	for _, tr := range []*amqp.Transport{atr, mtr} {
		if tr.Node() != first {
			t.Fatalf("connected to %q, want the first node %q", tr.Node(), first)
		}
	}
	a, err := agent.New(atr, agent.Config{Identity: id}, agent.WithLogger(testenv.Logger(t).With("test_part", id)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Handle(path, agent.Func(func(_ context.Context, s string) (string, error) { return s, nil })); err != nil {
		t.Fatal(err)
	}
	fabrictest.RunAgent(t, a)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = mtr.DeleteQueue(ctx, wire.ServiceQueue(path))
	})
	m := fabrictest.RunMapper(t, mtr, mapper.Config{})
	request := func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		defer cancel()
		r, err := m.Request(ctx, path, "hi")
		if err != nil {
			return err
		}
		if string(r.Body) != `"hi"` {
			return fmt.Errorf("reply %s", r.Body)
		}
		return nil
	}
	testenv.WaitFor(t, 20*time.Second, func() error { return request(2 * time.Second) })

	testenv.Cluster(t, "kill", "1")
	killed := time.Now()
	testenv.WaitFor(t, 60*time.Second, func() error {
		for _, tr := range []*amqp.Transport{atr, mtr} {
			if n := tr.Node(); n == "" || n == first {
				return fmt.Errorf("a transport is on %q", n)
			}
		}
		return request(2 * time.Second)
	})
	t.Logf("node 1 killed: both transports on other nodes (agent %s, mapper %s) and answering %v later",
		atr.Node(), mtr.Node(), time.Since(killed).Round(time.Millisecond))
}

// TestClusterNodeKilledUnderLoad: a durable agent (its queue a quorum
// queue) and a mapper connected to node 1; confirmed persistent pushes and
// plain requests run while node 1's VM is killed. Every confirmed push is
// executed (duplicates are counted, not refused: delivery is at least
// once), and every request is answered or fails with an error well before
// its deadline.
func TestClusterNodeKilledUnderLoad(t *testing.T) {
	urls := testenv.ClusterURLs(t)
	clusterUp(t)
	t.Cleanup(func() { testenv.Cluster(t, "start", "1") })

	actor := fabrictest.Actor()
	job, echo, id := "/"+actor+"/job", "/"+actor+"/echo", actor+"-a"
	atr, mtr := dial(t, urls, "agent"), dial(t, urls, "mapper")
	var (
		mu    sync.Mutex
		execs = map[int]int{}
	)
	a, err := agent.New(atr, agent.Config{Identity: id, Durable: true}, agent.WithLogger(testenv.Logger(t).With("test_part", id)))
	if err != nil {
		t.Fatal(err)
	}
	must(t, a.Handle(job, agent.Func(func(_ context.Context, i int) (string, error) {
		mu.Lock()
		execs[i]++
		mu.Unlock()
		return "", nil
	})))
	must(t, a.Handle(echo, agent.Func(func(_ context.Context, s string) (string, error) { return s, nil })))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, q := range []string{wire.ServiceQueue(job), wire.ServiceQueue(echo), wire.AgentQueue(id)} {
			_ = mtr.DeleteQueue(ctx, q)
		}
	})
	fabrictest.RunAgent(t, a)
	m := fabrictest.RunMapper(t, mtr, mapper.Config{})
	testenv.WaitFor(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		_, err := m.Request(ctx, echo, "hi")
		return err
	})

	var (
		sent, confirmed atomic.Int64
		confirmedIDs    sync.Map
		pushErrs        sync.Map
		stop            = make(chan struct{})
		wg              sync.WaitGroup
	)
	wg.Go(func() { // confirmed persistent pushes, one after another
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			sent.Add(1)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			t0 := time.Now()
			err := m.Push(ctx, job, i, mapper.Persistent())
			cancel()
			if err == nil {
				confirmed.Add(1)
				confirmedIDs.Store(i, true)
			} else {
				pushErrs.Store(fmt.Sprintf("%v after %v", err, time.Since(t0).Round(time.Millisecond)), true)
				time.Sleep(10 * time.Millisecond) // paces retries while the cluster recovers
			}
		}
	})
	type outcome struct {
		err  error
		took time.Duration
	}
	const reqTimeout = 10 * time.Second
	results := make(chan outcome, 100000)
	for range 4 { // plain requests
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(t.Context(), reqTimeout)
				t0 := time.Now()
				_, err := m.Request(ctx, echo, "x")
				cancel()
				results <- outcome{err, time.Since(t0)}
				if err != nil {
					time.Sleep(10 * time.Millisecond) // paces retries while the cluster recovers
				}
			}
		})
	}
	waitConfirmed := func(n int64) {
		testenv.WaitFor(t, 60*time.Second, func() error {
			if c := confirmed.Load(); c < n {
				var errs []string
				pushErrs.Range(func(k, _ any) bool { errs = append(errs, k.(string)); return len(errs) < 20 })
				return fmt.Errorf("%d pushes confirmed, waiting for %d; push errors: %q", c, n, errs)
			}
			return nil
		})
	}
	waitConfirmed(50)
	testenv.Cluster(t, "kill", "1")
	killed, before := time.Now(), confirmed.Load()
	waitConfirmed(before + 50) // the fabric works again
	recovered := time.Since(killed)
	close(stop)
	wg.Wait()
	close(results)

	testenv.WaitFor(t, 60*time.Second, func() error {
		var missing int
		confirmedIDs.Range(func(k, _ any) bool {
			mu.Lock()
			defer mu.Unlock()
			if execs[k.(int)] == 0 {
				missing++
			}
			return true
		})
		if missing > 0 {
			return fmt.Errorf("%d confirmed pushes not executed", missing)
		}
		return nil
	})
	mu.Lock()
	var executed, duplicated int
	for _, n := range execs {
		executed++
		if n > 1 {
			duplicated++
		}
	}
	mu.Unlock()
	var answered, failed int
	var slowestFail time.Duration
	for r := range results {
		if r.err == nil {
			answered++
			continue
		}
		failed++
		slowestFail = max(slowestFail, r.took)
		if r.took >= reqTimeout-time.Second {
			t.Errorf("a request waited out its deadline: %v after %v", r.err, r.took)
		}
	}
	t.Logf("node 1 killed under load; pushes confirmed again %v later", recovered.Round(time.Millisecond))
	t.Logf("persistent pushes: sent %d, confirmed %d, executed %d, duplicated %d, lost 0 (of the confirmed)",
		sent.Load(), confirmed.Load(), executed, duplicated)
	t.Logf("plain requests: answered %d, failed with an error %d (slowest failure %v)",
		answered, failed, slowestFail.Round(time.Millisecond))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
