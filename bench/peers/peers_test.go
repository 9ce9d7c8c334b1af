package peers

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport/mem"
)

// The request is the JSON string "hello": Warren's mapper is given the Go
// string and marshals it on every call, as a caller would; the NATS client
// sends these bytes. Both servers echo the body back.
const payload = "hello"

var wantBody = []byte(`"hello"`)

// roundTrip sends the payload once and checks that it comes back.
type roundTrip func(ctx context.Context) error

// fixtures are the kinds of round trip, by sub-benchmark name. Each starts
// its client and server, stopped when tb ends, and returns after a few
// warm-up round trips.
var fixtures = []struct {
	name  string
	start func(tb testing.TB) roundTrip
}{
	// Warren on its embedded broker: a mapper's Request to an agent's echo
	// handler, each on its own connection to one mem.Broker.
	{"warren-mem", startWarren},
	// NATS micro: a service with an echo endpoint on an in-process
	// nats-server, called with nats.go's Request, the service and the
	// client each on its own connection. nats.go's in-process connection
	// (nats.InProcessServer) is a net.Pipe to the server...
	{"nats-inprocess", func(tb testing.TB) roundTrip { return startNATS(tb, true) }},
	// ... and this one is loopback TCP, the server's usual listener.
	{"nats-tcp", func(tb testing.TB) roundTrip { return startNATS(tb, false) }},
}

// BenchmarkRoundTrip measures one request's round trip, with 1 and with 64
// requests in flight, for Warren's embedded broker and NATS micro in the
// same process. ns/op is the wall time per request over all workers, so
// req/s = 1e9 / (ns/op). Setup is not timed.
func BenchmarkRoundTrip(b *testing.B) {
	for _, f := range fixtures {
		b.Run(f.name, func(b *testing.B) {
			for _, n := range []int{1, 64} {
				b.Run(fmt.Sprintf("inflight=%d", n), func(b *testing.B) {
					rt := f.start(b)
					inFlight(b, n, rt)
					b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
				})
			}
		})
	}
}

// inFlight runs b.N round trips with exactly n of them in flight at any
// time (fewer only while the last n finish, or when b.N < n), as
// bench.inFlight in Warren's module does: b.Loop for n = 1, else a pool of
// exactly n goroutines taking iterations from a shared counter.
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
// without -bench checks the fixtures.
func TestRoundTripSmoke(t *testing.T) {
	for _, f := range fixtures {
		t.Run(f.name, func(t *testing.T) {
			rt := f.start(t)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := rt(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// discard is the logger of Warren's agent and mapper, as in Warren's own
// benchmarks (without WARREN_TEST_LOG).
var discard = slog.New(slog.DiscardHandler)

// startWarren runs one agent serving an echo handler and one mapper on one
// mem.Broker, as the "mem" fixture of Warren's own bench package does.
func startWarren(tb testing.TB) roundTrip {
	tb.Helper()
	b := mem.NewBroker()
	tb.Cleanup(func() { _ = b.Close() })
	const path = "/bench/echo"
	a, err := agent.New(b.Connect(), agent.Config{Identity: "bench-agent", Prefetch: 64, NoSharedQueues: true},
		agent.WithLogger(discard), agent.WithStatus(func() any { return 0 }))
	if err != nil {
		tb.Fatal(err)
	}
	err = a.Handle(path, agent.HandlerFunc(func(_ context.Context, r *agent.Request) (any, error) {
		return r.Payload, nil
	}))
	if err != nil {
		tb.Fatal(err)
	}
	runUntilCleanup(tb, "agent", a.Run, a.Ready())
	m, err := mapper.New(b.Connect(), mapper.Config{}, mapper.WithLogger(discard))
	if err != nil {
		tb.Fatal(err)
	}
	runUntilCleanup(tb, "mapper", m.Run, m.Ready())
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

// startNATS runs an in-process nats-server, a NATS micro service with an
// echo endpoint on a connection of its own, and a client connection; the
// connections are in-process (net.Pipe) or loopback TCP.
func startNATS(tb testing.TB, inProcess bool) roundTrip {
	tb.Helper()
	opts := &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true, DontListen: inProcess}
	ns, err := server.NewServer(opts)
	if err != nil {
		tb.Fatal(err)
	}
	go ns.Start()
	tb.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	if !ns.ReadyForConnections(10 * time.Second) {
		tb.Fatal("nats-server not ready after 10s")
	}
	connect := func() *nats.Conn {
		var o []nats.Option
		url := ns.ClientURL()
		if inProcess {
			o = append(o, nats.InProcessServer(ns))
			url = ""
		}
		nc, err := nats.Connect(url, o...)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(nc.Close)
		return nc
	}
	snc := connect()
	svc, err := micro.AddService(snc, micro.Config{
		Name:    "bench",
		Version: "1.0.0",
		Endpoint: &micro.EndpointConfig{
			Subject: "bench.echo",
			Handler: micro.HandlerFunc(func(r micro.Request) { _ = r.Respond(r.Data()) }),
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = svc.Stop() })
	// The server has the service's subscription once it answered a ping
	// sent after it: without that, the first request may find no
	// responder.
	if err := snc.Flush(); err != nil {
		tb.Fatal(err)
	}
	nc := connect()
	rt := func(ctx context.Context) error {
		msg, err := nc.RequestWithContext(ctx, "bench.echo", wantBody)
		if err != nil {
			return err
		}
		if !bytes.Equal(msg.Data, wantBody) {
			return fmt.Errorf("reply %s, want %s", msg.Data, wantBody)
		}
		return nil
	}
	warmUp(tb, rt)
	return rt
}

// runUntilCleanup runs runFn until the end of the test (then cancels it and
// checks that it returned nil) and returns once ready is closed.
func runUntilCleanup(tb testing.TB, what string, runFn func(context.Context) error, ready <-chan struct{}) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runFn(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("%s: Run: %v", what, err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		done <- err
		tb.Fatalf("%s: Run: %v", what, err)
	case <-time.After(30 * time.Second):
		tb.Fatalf("%s: not ready after 30s", what)
	}
}

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
