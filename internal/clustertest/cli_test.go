package clustertest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/testenv"
)

// warrenBin builds the warren command once per test binary, into dir.
var (
	binOnce sync.Once
	binPath string
	binErr  error
)

func warrenBin(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "warren-clustertest-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "warren")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", binPath, "github.com/warrenrpc/warren/cmd/warren").CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// TestClusterNodeKilledCLIRequests: a durable agent on node 1, and loops
// of `warren request` processes (a fresh mapper each) given the three URLs,
// first node first; node 1 is killed after 20 answers. Every process
// prints the answer or fails (exit status 1, one line saying why) well
// before its --timeout; the processes started after the kill connect to
// another node and are answered.
func TestClusterNodeKilledCLIRequests(t *testing.T) {
	urls := testenv.ClusterURLs(t)
	clusterUp(t)
	bin := warrenBin(t)
	t.Cleanup(func() { testenv.Cluster(t, "start", "1") })
	f := newFabric(t, urls)
	f.onNode(urls, 1)

	const timeout = 10 * time.Second
	var (
		answered, failed atomic.Int64
		mu               sync.Mutex
		slowestFail      time.Duration
		slowestAnswer    time.Duration
		failures         = map[string]int{}
		stop             = make(chan struct{})
		wg               sync.WaitGroup
	)
	env := append(os.Environ(), "WARREN_BROKER="+strings.Join(urls, ","))
	for range 3 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*timeout)
				cmd := exec.CommandContext(ctx, bin, "request", f.echo, `"x"`, "--timeout", timeout.String())
				cmd.Env = env
				var stdout, stderr bytes.Buffer
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				t0 := time.Now()
				err := cmd.Run()
				took := time.Since(t0)
				cancel()
				mu.Lock()
				if err == nil && strings.TrimSpace(stdout.String()) == `"x"` {
					answered.Add(1)
					slowestAnswer = max(slowestAnswer, took)
				} else {
					failed.Add(1)
					slowestFail = max(slowestFail, took)
					line := strings.TrimSpace(stderr.String())
					if line == "" {
						line = fmt.Sprintf("%v, no error printed, stdout %q", err, stdout.String())
					}
					failures[line]++
					if took >= timeout-time.Second {
						t.Errorf("a request process waited out its timeout: %v after %v: %s", err, took, line)
					}
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(10 * time.Millisecond) // paces retries while the cluster recovers
				}
			}
		})
	}
	t.Cleanup(func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	})
	waitAnswered := func(n int64) time.Duration {
		t0 := time.Now()
		want := answered.Load() + n
		testenv.WaitFor(t, 60*time.Second, func() error {
			if a := answered.Load(); a < want {
				mu.Lock()
				defer mu.Unlock()
				return fmt.Errorf("%d request processes answered, waiting for %d; failures: %v", a, want, failures)
			}
			return nil
		})
		return time.Since(t0)
	}
	waitAnswered(20)
	testenv.Cluster(t, "kill", "1")
	before := answered.Load()
	again := waitAnswered(20)
	close(stop)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("node 1 killed after %d answered; 20 more answered %v after the kill", before, again.Round(time.Millisecond))
	t.Logf("warren request processes: answered %d (slowest %v), failed with an error %d (slowest failure %v), none waited out its --timeout %v",
		answered.Load(), slowestAnswer.Round(time.Millisecond), failed.Load(), slowestFail.Round(time.Millisecond), timeout)
	for line, n := range failures {
		t.Logf("%d× %s", n, line)
	}
}
