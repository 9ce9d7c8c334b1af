package bertrpc

import (
	"sync"
	"testing"
)

// TestGopoolRuns: every function runs, on a reused goroutine or a new one,
// and Stop ends the idle ones (goleak checks at the end of the package).
func TestGopoolRuns(t *testing.T) {
	p := newGopool(2)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ran := 0
	for range 100 {
		wg.Add(1)
		p.Go(func() {
			defer wg.Done()
			mu.Lock()
			ran++
			mu.Unlock()
		})
	}
	wg.Wait()
	p.Stop()
	if ran != 100 {
		t.Fatalf("ran %d functions, want 100", ran)
	}
}
