package bench

import (
	"testing"

	"github.com/warrenrpc/warren/internal/rawrpc"
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
