// Package backoff spaces reconnection attempts: exponential from 100ms to
// 10s, with full jitter, so a fleet of agents does not reconnect in step
// after a broker restart.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

const (
	first = 100 * time.Millisecond
	limit = 10 * time.Second
)

// StartRetries is how many times an agent or a mapper starts its first
// session again when the connection is lost while it starts (about 3 s
// of backoff in all). The broker was reached, so the loss is taken as
// passing (a node of a cluster going down, the transport failing over
// to the next); a start that keeps failing still ends with the error.
const StartRetries = 5

// Backoff is not safe for concurrent use; each reconnect loop has its own.
type Backoff struct{ next time.Duration }

// New returns a Backoff at its first interval.
func New() *Backoff { return &Backoff{next: first} }

// Reset goes back to the first interval, after a success.
func (b *Backoff) Reset() { b.next = first }

// Wait sleeps a random time up to the current interval, then doubles the
// interval (up to 10s). It returns false when ctx ended first.
func (b *Backoff) Wait(ctx context.Context) bool {
	d := time.Duration(rand.Int64N(int64(b.next)) + 1)
	b.next = min(2*b.next, limit)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
