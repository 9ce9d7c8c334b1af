package backoff

import (
	"context"
	"testing"
	"time"
)

func TestGrowsCapsAndResets(t *testing.T) {
	b := New()
	var seen []time.Duration
	for range 10 {
		seen = append(seen, b.next)
		b.next = min(2*b.next, limit) // what Wait does, without sleeping
	}
	if seen[0] != first || seen[1] != 2*first || seen[9] != limit {
		t.Fatalf("intervals %v", seen)
	}
	b.Reset()
	if b.next != first {
		t.Fatalf("after Reset %v", b.next)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b.next = time.Hour
	if b.Wait(ctx) {
		t.Fatal("Wait returned true on a cancelled context")
	}
	if !New().Wait(context.Background()) {
		t.Fatal("Wait returned false")
	}
}
