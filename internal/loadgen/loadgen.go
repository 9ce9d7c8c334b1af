// Package loadgen drives a call with a fixed number of clients for a fixed
// time and summarises it the way `warren bench` reports: calls per second,
// latency quantiles, errors by code and the CPU time spent, and, for a
// baseline run in the same rounds, medians and quartiles of per-round
// ratios.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Call is one operation: a request and its reply, a confirmed push.
type Call func(ctx context.Context) error

// Options configure Run.
type Options struct {
	// Clients is the number of calls in flight: that many goroutines,
	// each making its next call when the last one returned.
	Clients int
	// Duration is how long to keep calling.
	Duration time.Duration
	// Classify names an error for the errors-by-code count; nil counts
	// every error as "error".
	Classify func(error) string
	// Progress, if set, is called about every 100 ms with the calls
	// completed so far (successful or not) and the time elapsed.
	Progress func(calls int64, elapsed time.Duration)
}

// Result is what a run measured.
type Result struct {
	Calls   int64            `json:"calls"`  // successful
	Errors  map[string]int64 `json:"errors"` // by code
	Elapsed time.Duration    `json:"elapsed_ns"`
	// Rate is successful calls per second.
	Rate float64 `json:"calls_per_s"`
	// Latency quantiles of the successful calls.
	P50  time.Duration `json:"p50_ns"`
	P90  time.Duration `json:"p90_ns"`
	P99  time.Duration `json:"p99_ns"`
	P999 time.Duration `json:"p999_ns"`
	// CPU is the user and system time this process spent during the run.
	CPU time.Duration `json:"cpu_ns"`
}

// ErrNoClients is returned by Run for Options without clients or time.
var ErrNoClients = errors.New("loadgen: need at least one client and a positive duration")

// Run calls call from opts.Clients goroutines until opts.Duration has
// passed or ctx ends, and summarises the calls that completed. Calls still
// in flight at the end are waited for and counted. It returns ctx's error
// when ctx ended the run early, with the result so far.
func Run(ctx context.Context, opts Options, call Call) (Result, error) {
	if opts.Clients < 1 || opts.Duration <= 0 {
		return Result{}, ErrNoClients
	}
	classify := opts.Classify
	if classify == nil {
		classify = func(error) string { return "error" }
	}
	runCtx, cancel := context.WithTimeout(ctx, opts.Duration)
	defer cancel()
	var (
		done    atomic.Int64
		wg      sync.WaitGroup
		mu      sync.Mutex
		lats    []time.Duration
		errs    = map[string]int64{}
		cpu0    = cpuTime()
		started = time.Now()
	)
	for range opts.Clients {
		wg.Go(func() {
			var mine []time.Duration
			myErrs := map[string]int64{}
			// A call gets the parent context, not runCtx: the end of
			// the run must not turn the calls in flight into errors.
			for runCtx.Err() == nil {
				t0 := time.Now()
				err := call(ctx)
				d := time.Since(t0)
				done.Add(1)
				if err != nil {
					if ctx.Err() != nil {
						break
					}
					myErrs[classify(err)]++
					continue
				}
				mine = append(mine, d)
			}
			mu.Lock()
			lats = append(lats, mine...)
			for k, v := range myErrs {
				errs[k] += v
			}
			mu.Unlock()
		})
	}
	if opts.Progress != nil {
		stop := make(chan struct{})
		var pwg sync.WaitGroup
		pwg.Go(func() {
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					opts.Progress(done.Load(), time.Since(started))
				case <-stop:
					return
				}
			}
		})
		defer func() { close(stop); pwg.Wait() }()
	}
	wg.Wait()
	elapsed := time.Since(started)
	r := Result{
		Calls:   int64(len(lats)),
		Errors:  errs,
		Elapsed: elapsed,
		Rate:    float64(len(lats)) / elapsed.Seconds(),
		CPU:     cpuTime() - cpu0,
	}
	slices.Sort(lats)
	r.P50, r.P90, r.P99, r.P999 = quantile(lats, .5), quantile(lats, .9), quantile(lats, .99), quantile(lats, .999)
	return r, ctx.Err()
}

// quantile is the nearest-rank quantile q of sorted durations.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// cpuTime is the user and system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Quartiles are the lower quartile, median and upper quartile of a sample.
type Quartiles struct {
	Q1     float64 `json:"q1"`
	Median float64 `json:"median"`
	Q3     float64 `json:"q3"`
	N      int     `json:"n"`
}

// Summarise returns the quartiles of xs, by linear interpolation between
// closest ranks (as bench/ratio-rounds.sh computes them).
func Summarise(xs []float64) Quartiles {
	s := slices.Clone(xs)
	slices.Sort(s)
	q := func(p float64) float64 {
		if len(s) == 0 {
			return math.NaN()
		}
		h := p * float64(len(s)-1)
		i := int(h)
		if i+1 >= len(s) {
			return s[len(s)-1]
		}
		return s[i] + (h-float64(i))*(s[i+1]-s[i])
	}
	return Quartiles{Q1: q(.25), Median: q(.5), Q3: q(.75), N: len(s)}
}

func (q Quartiles) String() string {
	return fmt.Sprintf("%.2f (quartiles %.2f-%.2f, %d rounds)", q.Median, q.Q1, q.Q3, q.N)
}
