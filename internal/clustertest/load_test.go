package clustertest

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/wire"
)

// upOnce starts the cluster once per test binary: each test restores in
// its cleanup what it stopped, and "up" costs 10-20s on a loaded machine.
var upOnce sync.Once

// clusterUp starts the cluster's nodes and joins them, once per test
// binary.
func clusterUp(t *testing.T) {
	t.Helper()
	upOnce.Do(func() { testenv.Cluster(t, "up") })
}

// fabric is a durable agent (its own queue a quorum queue) serving job,
// which counts its executions by push number, and echo, and a mapper; both
// given every node's URL, first node first.
type fabric struct {
	t             *testing.T
	atr, mtr      *amqp.Transport
	m             *mapper.Mapper
	job, echo, id string
	mu            sync.Mutex
	execs         map[int]int
}

func newFabric(t *testing.T, urls []string) *fabric {
	t.Helper()
	actor := fabrictest.Actor()
	f := &fabric{t: t, job: "/" + actor + "/job", echo: "/" + actor + "/echo", id: actor + "-a", execs: map[int]int{}}
	f.atr, f.mtr = dial(t, urls, "agent"), dial(t, urls, "mapper")
	a, err := agent.New(f.atr, agent.Config{Identity: f.id, Durable: true}, agent.WithLogger(testenv.Logger(t).With("test_part", f.id)))
	if err != nil {
		t.Fatal(err)
	}
	must(t, a.Handle(f.job, agent.Func(func(_ context.Context, i int) (string, error) {
		f.mu.Lock()
		f.execs[i]++
		f.mu.Unlock()
		return "", nil
	})))
	must(t, a.Handle(f.echo, agent.Func(func(_ context.Context, s string) (string, error) { return s, nil })))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, q := range []string{wire.ServiceQueue(f.job), wire.ServiceQueue(f.echo), wire.AgentQueue(f.id)} {
			_ = f.mtr.DeleteQueue(ctx, q)
		}
	})
	fabrictest.RunAgent(t, a)
	f.m = fabrictest.RunMapper(t, f.mtr, mapper.Config{})
	testenv.WaitFor(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		_, err := f.m.Request(ctx, f.echo, "hi")
		return err
	})
	return f
}

// onNode fails the test unless both transports are on node n (1-based).
func (f *fabric) onNode(urls []string, n int) {
	f.t.Helper()
	want := amqp.RedactURL(urls[n-1])
	for _, tr := range []*amqp.Transport{f.atr, f.mtr} {
		if tr.Node() != want {
			f.t.Fatalf("a transport is on %q, want %q", tr.Node(), want)
		}
	}
}

// offNode waits until both transports are connected to a node other than
// n.
func (f *fabric) offNode(urls []string, n int) {
	f.t.Helper()
	gone := amqp.RedactURL(urls[n-1])
	testenv.WaitFor(f.t, 60*time.Second, func() error {
		for _, tr := range []*amqp.Transport{f.atr, f.mtr} {
			if node := tr.Node(); node == "" || node == gone {
				return fmt.Errorf("a transport is on %q", node)
			}
		}
		return nil
	})
}

// pushTimeout is the deadline of every push of the load, which is also
// the message's time to live: a push still queued at its deadline is
// dead-lettered (expired). With 10s, one rolling restart in twelve saw 44
// confirmed pushes expire in the service's shared queue before the agent
// consumed it again (see docs/reliability.md).
const pushTimeout = 30 * time.Second

// reqTimeout is the deadline of every plain request of the load; one that
// fails must fail well before it.
const reqTimeout = 10 * time.Second

type outcome struct {
	err  error
	took time.Duration
}

// load is confirmed persistent pushes to f.job, one after another, and
// loops of plain requests to f.echo, until finish.
type load struct {
	f               *fabric
	sent, confirmed atomic.Int64
	confirmedIDs    sync.Map
	pushErrs        sync.Map
	stop            chan struct{}
	wg              sync.WaitGroup
	results         chan outcome
	// gap is the longest time between two confirmed pushes (written by
	// the push loop only).
	gap time.Duration
}

func (f *fabric) startLoad(requesters int) *load {
	l := &load{f: f, stop: make(chan struct{}), results: make(chan outcome, 200000)}
	t, m := f.t, f.m
	l.wg.Go(func() {
		last := time.Now()
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			default:
			}
			l.sent.Add(1)
			ctx, cancel := context.WithTimeout(t.Context(), pushTimeout)
			t0 := time.Now()
			err := m.Push(ctx, f.job, i, mapper.Persistent())
			cancel()
			if err == nil {
				l.confirmed.Add(1)
				l.confirmedIDs.Store(i, true)
				l.gap = max(l.gap, time.Since(last))
				last = time.Now()
			} else {
				l.pushErrs.Store(fmt.Sprintf("%v after %v", err, time.Since(t0).Round(time.Millisecond)), true)
				time.Sleep(10 * time.Millisecond) // paces retries while the cluster recovers
			}
		}
	})
	for range requesters {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(t.Context(), reqTimeout)
				t0 := time.Now()
				_, err := m.Request(ctx, f.echo, "x")
				cancel()
				select {
				case l.results <- outcome{err, time.Since(t0)}:
				default:
				}
				if err != nil {
					time.Sleep(10 * time.Millisecond) // paces retries while the cluster recovers
				}
			}
		})
	}
	t.Cleanup(l.halt)
	return l
}

func (l *load) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// more waits until n more pushes are confirmed than now (at most a
// minute) and returns how long that took.
func (l *load) more(n int64) time.Duration {
	l.f.t.Helper()
	t0, want := time.Now(), l.confirmed.Load()+n
	testenv.WaitFor(l.f.t, 60*time.Second, func() error {
		if c := l.confirmed.Load(); c < want {
			var errs []string
			l.pushErrs.Range(func(k, _ any) bool { errs = append(errs, k.(string)); return len(errs) < 20 })
			return fmt.Errorf("%d pushes confirmed, waiting for %d; push errors: %q", c, want, errs)
		}
		return nil
	})
	return time.Since(t0)
}

// figures are what a fault test reports.
type figures struct {
	sent, confirmed, executed, duplicated int64
	answered, failed                      int
	slowestFail                           time.Duration
}

// finish stops the load, waits until every confirmed push was executed
// (failing the test after a minute, with the number lost), checks that no
// request waited out its deadline, and logs the figures.
func (l *load) finish() figures {
	t := l.f.t
	t.Helper()
	l.halt()
	close(l.results)
	testenv.WaitFor(t, 60*time.Second, func() error {
		var missing int
		l.confirmedIDs.Range(func(k, _ any) bool {
			l.f.mu.Lock()
			defer l.f.mu.Unlock()
			if l.f.execs[k.(int)] == 0 {
				missing++
			}
			return true
		})
		if missing > 0 {
			return fmt.Errorf("%d confirmed pushes not executed (lost, or stuck in a queue)", missing)
		}
		return nil
	})
	fig := figures{sent: l.sent.Load(), confirmed: l.confirmed.Load()}
	l.f.mu.Lock()
	for _, n := range l.f.execs {
		fig.executed++
		if n > 1 {
			fig.duplicated++
		}
	}
	l.f.mu.Unlock()
	for r := range l.results {
		if r.err == nil {
			fig.answered++
			continue
		}
		fig.failed++
		fig.slowestFail = max(fig.slowestFail, r.took)
		if r.took >= reqTimeout-time.Second {
			t.Errorf("a request waited out its deadline: %v after %v", r.err, r.took)
		}
	}
	t.Logf("persistent pushes: sent %d, confirmed %d, executed %d, duplicated %d, lost 0 (of the confirmed); longest time without a confirmed push %v",
		fig.sent, fig.confirmed, fig.executed, fig.duplicated, l.gap.Round(time.Millisecond))
	t.Logf("plain requests: answered %d, failed with an error %d (slowest failure %v)",
		fig.answered, fig.failed, fig.slowestFail.Round(time.Millisecond))
	return fig
}

// ctl runs rabbitmqctl (or another of RabbitMQ's CLI tools: tool) against
// node n of the cluster and returns its output; it fails the test when the
// command fails or takes more than two minutes.
func ctl(t testing.TB, tool string, n int, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args = append([]string{"-q", "-n", fmt.Sprintf("warren-%d@localhost", n)}, args...)
	out, err := exec.CommandContext(ctx, tool, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out)
}

// leader returns the node (1..3) of the leader of quorum queue q, asking
// node from.
func leader(t testing.TB, from int, q string) int {
	t.Helper()
	for line := range strings.Lines(ctl(t, "rabbitmqctl", from, "list_queues", "name", "leader", "--no-table-headers")) {
		name, node, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if ok && name == q {
			var n int
			if _, err := fmt.Sscanf(node, "warren-%d@localhost", &n); err == nil {
				return n
			}
			t.Fatalf("queue %s: leader %q", q, node)
		}
	}
	t.Fatalf("queue %s not listed by warren-%d@localhost", q, from)
	return 0
}
