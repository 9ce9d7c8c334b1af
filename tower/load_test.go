package tower_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/wire"
)

// TestLoadThousandAgents measures the Tower under 1,000 simulated agents,
// each heartbeating every second: the CPU of the `warren tower` process,
// how often a page gets the agents table, and how often headless Chromium
// redraws it. It loads the machine for about a minute, so it runs only
// when WARREN_TOWER_LOAD is set (the figures are in docs/benchmarks.md):
//
//	WARREN_TOWER_LOAD=1 go test ./tower -run TestLoadThousandAgents -v
func TestLoadThousandAgents(t *testing.T) {
	if os.Getenv("WARREN_TOWER_LOAD") == "" {
		t.Skip("set WARREN_TOWER_LOAD=1 to measure the Tower under 1,000 agents")
	}
	const agents = 1000
	window := 30 * time.Second
	broker, _ := privateVHost(t, testenv.AMQPURL(t))
	bin := buildWarren(t)
	token := uniqueName("token-")
	towerProc, out := start(t, bin, broker, []string{"WARREN_TOWER_TOKEN=" + token}, "tower", "--addr", "127.0.0.1:0")
	var base string
	for out.Scan() {
		if _, after, ok := strings.Cut(out.Text(), "Control Tower on "); ok {
			base = after
			break
		}
	}
	if base == "" {
		t.Fatal("no address")
	}
	go func() {
		for out.Scan() {
		}
	}()

	// The simulated agents: one connection publishes every agent's ping
	// once a second, spread over the second, each with a status that
	// changes every time (the worst case: every update of the page
	// differs from the last).
	tr, err := amqp.Dial(t.Context(), broker, amqp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := wire.Topology(t.Context(), tr); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	started := time.Now()
	const batches = 10 // a tenth of the agents every 100ms
	wg.Go(func() {
		tick := time.NewTicker(time.Second / batches)
		defer tick.Stop()
		for round, b := 0, 0; ; b = (b + 1) % batches {
			if b == 0 {
				round++
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for i := b; i < agents; i += batches {
				hb := wire.Heartbeat{
					Identity: fmt.Sprintf("sim-%04d", i), Services: []string{"/sim/work", fmt.Sprintf("/sim/shard%d", i%10)},
					Tags: []string{"sim"}, Status: float64((i+round)%7) / 2, PingInterval: 1000, Started: started,
				}
				msg, err := wire.NewHeartbeat(wire.TypePing, hb)
				if err != nil {
					t.Error(err)
					return
				}
				if err := tr.Publish(ctx, wire.HeartbeatExchange, "", msg, transport.PublishOptions{}); err != nil {
					if ctx.Err() == nil {
						t.Error(err)
					}
					return
				}
			}
		}
	})

	// A page's event stream: wait for all agents, then count updates.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"events", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The stream is read without pause, so that no update waits in a
	// buffer to be counted later.
	var mu sync.Mutex
	var n, bytes, short int
	full := make(chan struct{})
	var fullOnce sync.Once
	wg.Go(func() {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 64<<20)
		var name string
		size, count := 0, 0
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if name == "agents" {
					mu.Lock()
					n++
					bytes += size
					if count != agents {
						short++
					} else {
						fullOnce.Do(func() { close(full) })
					}
					mu.Unlock()
				}
				name, size, count = "", 0, 0
			case strings.HasPrefix(line, "event: "):
				name = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				size += len(line) - len("data: ") + 1
				if i := strings.Index(line, `<span id="agent-count">`); i >= 0 {
					rest := line[i+len(`<span id="agent-count">`):]
					count, _ = strconv.Atoi(rest[:strings.IndexByte(rest, '<')])
				}
			}
		}
	})
	select {
	case <-full:
	case <-time.After(2 * time.Minute):
		t.Fatal("the Tower never listed all agents")
	}
	t.Logf("all %d agents listed %v after the first ping", agents, time.Since(started).Round(time.Millisecond))

	// The browser: count redraws of the agents table.
	browser := chromium(t)
	bctx, cancel := chromedp.NewExecAllocator(t.Context(), chromedp.ExecPath(browser),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.UserDataDir(t.TempDir()))
	defer cancel()
	bctx, cancelTab := chromedp.NewContext(bctx)
	defer cancelTab()
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"?token="+token),
		chromedp.WaitVisible(chromedp.CSS(`#agents tr[data-agent="sim-0999"]`))); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[int](`window.redraws = 0;
		new MutationObserver(() => window.redraws++).observe(document.getElementById("agents"), {childList: true}); 0`)); err != nil {
		t.Fatal(err)
	}

	cpu0 := cpuTime(t, towerProc.cmd.Process.Pid)
	t0 := time.Now()
	mu.Lock()
	n0, bytes0, short0 := n, bytes, short
	mu.Unlock()
	time.Sleep(window)
	mu.Lock()
	updates, size, incomplete := n-n0, bytes-bytes0, short-short0
	mu.Unlock()
	elapsed := time.Since(t0)
	cpu := cpuTime(t, towerProc.cmd.Process.Pid) - cpu0
	redraws, err := chromedp.Run(bctx, chromedp.Evaluate[int](`window.redraws`))
	if err != nil {
		t.Fatal(err)
	}
	load, _ := os.ReadFile("/proc/loadavg")
	t.Logf("load average %s", strings.Join(strings.Fields(string(load))[:3], " "))
	t.Logf("%d agents heartbeating every 1s, over %v: tower CPU %.1f%% of one core; stream: %.2f agents updates/s, %.0f KiB each, %d with agents missing; browser: %.2f redraws/s",
		agents, elapsed.Round(time.Second), 100*cpu.Seconds()/elapsed.Seconds(), float64(updates)/elapsed.Seconds(),
		float64(size)/float64(max(updates, 1))/1024, incomplete, float64(redraws)/elapsed.Seconds())
	if incomplete > 0 {
		t.Errorf("%d updates listed fewer than %d agents", incomplete, agents)
	}
	if float64(updates)/elapsed.Seconds() < 0.7 {
		t.Errorf("only %d updates in %v", updates, elapsed)
	}
}

// cpuTime returns the user plus system CPU time of a process, from
// /proc/PID/stat (in clock ticks of 10ms).
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}
