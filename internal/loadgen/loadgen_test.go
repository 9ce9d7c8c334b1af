package loadgen

import (
	"context"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

func TestRunCountsCallsAndErrorsByCode(t *testing.T) {
	var n atomic.Int64
	bad := errors.New("bad")
	var progressed atomic.Bool
	r, err := Run(t.Context(), Options{
		Clients:  4,
		Duration: 300 * time.Millisecond,
		Classify: func(err error) string {
			if errors.Is(err, bad) {
				return "bad"
			}
			return "other"
		},
		Progress: func(int64, time.Duration) { progressed.Store(true) },
	}, func(ctx context.Context) error {
		time.Sleep(time.Millisecond)
		if n.Add(1)%4 == 0 {
			return bad
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	total := r.Calls + r.Errors["bad"]
	if total != n.Load() || r.Errors["bad"] != n.Load()/4 || len(r.Errors) != 1 {
		t.Errorf("calls %d, errors %v; %d made", r.Calls, r.Errors, n.Load())
	}
	if r.Calls == 0 || r.Rate <= 0 || r.Elapsed < 300*time.Millisecond {
		t.Errorf("result %+v", r)
	}
	if !(time.Millisecond <= r.P50 && r.P50 <= r.P90 && r.P90 <= r.P99 && r.P99 <= r.P999) {
		t.Errorf("quantiles %v %v %v %v", r.P50, r.P90, r.P99, r.P999)
	}
	if !progressed.Load() {
		t.Error("no progress reported")
	}
}

func TestRunEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	var n atomic.Int64
	start := time.Now()
	_, err := Run(ctx, Options{Clients: 2, Duration: time.Hour}, func(ctx context.Context) error {
		if n.Add(1) == 10 {
			cancel()
		}
		<-time.After(time.Millisecond)
		return ctx.Err()
	})
	if !errors.Is(err, context.Canceled) || time.Since(start) > 10*time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
	if _, err := Run(t.Context(), Options{}, nil); !errors.Is(err, ErrNoClients) {
		t.Fatalf("no clients: %v", err)
	}
}

func TestQuantilesAndQuartiles(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 1000; i++ {
		d = append(d, time.Duration(i))
	}
	if q := [...]time.Duration{quantile(d, .5), quantile(d, .9), quantile(d, .999), quantile(d[:1], .99)}; q != [...]time.Duration{500, 900, 999, 1} {
		t.Errorf("quantiles %v", q)
	}
	if q := Summarise([]float64{5, 1, 4, 2, 3}); q != (Quartiles{Q1: 2, Median: 3, Q3: 4, N: 5}) {
		t.Errorf("quartiles %+v", q)
	}
	if q := Summarise([]float64{1, 2}); q.Median != 1.5 || q.Q1 != 1.25 || q.Q3 != 1.75 {
		t.Errorf("quartiles %+v", q)
	}
}

func TestListenerCPU(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pid, err := ListenerPID(ln.Addr().(*net.TCPAddr).Port)
	if err != nil {
		t.Fatal(err)
	}
	if pid != os.Getpid() {
		t.Fatalf("listener pid %d, want this process %d", pid, os.Getpid())
	}
	if _, err := ProcessCPU(pid); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenerPID(1); err == nil {
		t.Error("a listener on port 1")
	}
}
