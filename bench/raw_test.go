package bench

import (
	"fmt"
	"testing"

	"github.com/warrenrpc/warren/internal/rawrpc"
	"github.com/warrenrpc/warren/internal/testenv"
)

// startRaw starts the raw amqp091-go baseline (package rawrpc) on url, a
// server with the given prefetch and a client of the given shape, closed
// when tb ends.
func startRaw(tb testing.TB, url string, prefetch int, shape rawrpc.Shape, confirm bool) *rawrpc.Pair {
	tb.Helper()
	p, err := rawrpc.Start(url, prefetch, shape, confirm)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Close)
	return p
}

// BenchmarkRawVariant prices Warren's choices on the raw baseline, one at
// a time (docs/benchmarks.md, "What RabbitMQ works for"): the exclusive
// reply queue shape without confirms, plus one variant each.
func BenchmarkRawVariant(b *testing.B) {
	for _, v := range []struct {
		name    string
		confirm bool
		opts    rawrpc.Options
	}{
		{"plain", false, rawrpc.Options{}},
		{"confirm", true, rawrpc.Options{}},
		{"ack-multiple", false, rawrpc.Options{AckMultiple: true}},
		{"split-server", false, rawrpc.Options{SplitServer: true}},
		{"reply-confirm", false, rawrpc.Options{ReplyConfirm: true}},
		{"expiration", false, rawrpc.Options{Expiration: true}},
		{"exchange", false, rawrpc.Options{Exchange: true}},
		{"shape", false, rawrpc.Options{Shape: true}},
		{"queue-args", false, rawrpc.Options{QueueArgs: true}},
		{"split-client", false, rawrpc.Options{SplitClient: true}},
		{"warren-like", true, rawrpc.Options{SplitServer: true, SplitClient: true, Exchange: true, Shape: true, QueueArgs: true}},
	} {
		b.Run(v.name, func(b *testing.B) {
			for _, n := range []int{1, 64} {
				b.Run(fmt.Sprintf("inflight=%d", n), func(b *testing.B) {
					p, err := rawrpc.StartOptions(testenv.AMQPURL(b), n, rawrpc.ExclusiveQueue, v.confirm, v.opts)
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(p.Close)
					inFlight(b, n, rawRoundTrip(b, p))
					b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
				})
			}
		})
	}
}
