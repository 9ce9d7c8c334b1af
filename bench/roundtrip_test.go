package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/rawrpc"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// payload is the request: the JSON string "hello". Warren's mapper is
// given the Go string and marshals it on every call, as a caller would;
// the raw client sends these bytes.
const payload = "hello"

var wantBody = []byte(`"hello"`)

// roundTrip sends the payload once and checks that it comes back.
type roundTrip func(ctx context.Context) error

// fixtures are the kinds of round trip, by sub-benchmark name. Each starts
// its client and server for inflight requests at once, stopped when tb
// ends, and returns after one warm-up round trip.
var fixtures = []struct {
	name  string
	start func(tb testing.TB, inflight int) roundTrip
}{
	{"mem", func(tb testing.TB, _ int) roundTrip {
		b := mem.NewBroker()
		tb.Cleanup(func() { _ = b.Close() })
		return startWarren(tb, func() (transport.Transport, error) { return b.Connect(), nil })
	}},
	{"rabbitmq", func(tb testing.TB, _ int) roundTrip {
		url := testenv.AMQPURL(tb)
		return startWarren(tb, func() (transport.Transport, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			return amqp.Dial(ctx, url, amqp.Config{}, amqp.WithLogger(testenv.Logger(tb)))
		})
	}},
	// A baseline: publishes mandatory and waits for the publisher
	// confirm, as mapper.Request once did.
	{"raw-amqp091", func(tb testing.TB, inflight int) roundTrip {
		return rawRoundTrip(tb, startRaw(tb, testenv.AMQPURL(tb), inflight, rawrpc.DirectReplyTo, true))
	}},
	// The usual direct reply-to RPC client: no confirm, no mandatory.
	{"raw-amqp091-noconfirm", func(tb testing.TB, inflight int) roundTrip {
		return rawRoundTrip(tb, startRaw(tb, testenv.AMQPURL(tb), inflight, rawrpc.DirectReplyTo, false))
	}},
	// The other hand-written shape: an exclusive reply queue, no confirm.
	{"raw-amqp091-exclusive", func(tb testing.TB, inflight int) roundTrip {
		return rawRoundTrip(tb, startRaw(tb, testenv.AMQPURL(tb), inflight, rawrpc.ExclusiveQueue, false))
	}},
}

// BenchmarkRoundTrip measures one request's round trip: a mapper's Request
// to one agent serving an echo handler and the reply back, on the embedded
// broker (mem) and on RabbitMQ, beside a plain amqp091-go direct reply-to
// client and server, with 1 and with 64 requests in flight. ns/op is the
// wall time per request over all workers, so req/s = 1e9 / (ns/op).
// Each sub-benchmark starts its own client and server (setup is not timed).
func BenchmarkRoundTrip(b *testing.B) {
	for _, f := range fixtures {
		b.Run(f.name, func(b *testing.B) {
			for _, n := range []int{1, 64} {
				b.Run(fmt.Sprintf("inflight=%d", n), func(b *testing.B) {
					rt := f.start(b, n)
					inFlight(b, n, rt)
					b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
				})
			}
		})
	}
}

// inFlight runs b.N round trips with exactly n of them in flight at any
// time (fewer only while the last n finish, or when b.N < n).
//
// With n = 1 that is b.Loop on the benchmark goroutine. For n > 1 it is a
// pool of exactly n goroutines taking iterations from a shared counter,
// each sending its next request when its reply has come back. b.RunParallel
// would not do: it starts SetParallelism × GOMAXPROCS goroutines, which is
// 64 only when GOMAXPROCS divides 64 (not with -cpu 3), and never 1 when
// GOMAXPROCS > 1.
func inFlight(b *testing.B, n int, rt roundTrip) {
	ctx := b.Context()
	if n == 1 {
		for b.Loop() {
			if err := rt(ctx); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	var (
		next   atomic.Int64
		failed atomic.Bool
		wg     sync.WaitGroup
	)
	b.ResetTimer()
	for range n {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) && !failed.Load() {
				if err := rt(ctx); err != nil {
					failed.Store(true)
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
}

// TestRoundTripSmoke does one round trip of each kind, so that go test
// without -bench checks the benchmark's fixtures (the RabbitMQ ones skip
// without WARREN_AMQP_URL).
func TestRoundTripSmoke(t *testing.T) {
	for _, f := range fixtures {
		t.Run(f.name, func(t *testing.T) {
			rt := f.start(t, 1)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := rt(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// startWarren runs one agent serving an echo handler and one mapper, each
// on its own connection from connect, and returns a round trip through the
// mapper's Request.
func startWarren(tb testing.TB, connect func() (transport.Transport, error)) roundTrip {
	tb.Helper()
	actor := "bench" + randomHex(6)
	path := "/" + actor + "/echo"
	id := actor + "-agent"

	atr, err := connect()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = atr.Close() })
	// NoSharedQueues: requests go to the agent's own queue, and the run
	// leaves no durable service queue behind on RabbitMQ. The status is
	// constant so that pings do not read /proc/loadavg.
	a, err := agent.New(atr, agent.Config{Identity: id, Prefetch: 64, NoSharedQueues: true},
		agent.WithLogger(testenv.Logger(tb)), agent.WithStatus(func() any { return 0 }))
	if err != nil {
		tb.Fatal(err)
	}
	err = a.Handle(path, agent.HandlerFunc(func(_ context.Context, r *agent.Request) (any, error) {
		return r.Payload, nil
	}))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		// Registered first, so it runs after the agent stopped: its queue
		// would otherwise linger on RabbitMQ until it expires.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = atr.DeleteQueue(ctx, wire.AgentQueue(id))
	})
	fabrictest.RunAgent(tb, a)

	mtr, err := connect()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = mtr.Close() })
	m := fabrictest.RunMapper(tb, mtr, mapper.Config{})

	rt := func(ctx context.Context) error {
		r, err := m.Request(ctx, path, payload)
		if err != nil {
			return err
		}
		if !bytes.Equal(r.Body, wantBody) {
			return fmt.Errorf("reply %s, want %s", r.Body, wantBody)
		}
		return nil
	}
	warmUp(tb, rt)
	return rt
}

func rawRoundTrip(tb testing.TB, c *rawrpc.Pair) roundTrip {
	rt := func(ctx context.Context) error {
		body, err := c.Call(ctx, wantBody)
		if err != nil {
			return err
		}
		if !bytes.Equal(body, wantBody) {
			return fmt.Errorf("reply %s, want %s", body, wantBody)
		}
		return nil
	}
	warmUp(tb, rt)
	return rt
}

// warmUp does a few round trips, which also open the channels that
// transports open on first use (transport/amqp spreads publishes over four).
func warmUp(tb testing.TB, rt roundTrip) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 8 {
		if err := rt(ctx); err != nil {
			tb.Fatalf("warm-up round trip: %v", err)
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
