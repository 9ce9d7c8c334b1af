package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/bertrpc"
	"github.com/warrenrpc/warren/daemon"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/wire"
)

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s\n%s", resp.Status, b)
	}
	return string(b)
}

// TestAgentMetricsAddr runs `warren agent --metrics-addr`, sends it a
// known load and scrapes /metrics: the counters moved by that much.
func TestAgentMetricsAddr(t *testing.T) {
	tr, url := rabbit(t)
	id := fabrictest.Actor()
	t.Cleanup(func() { tr.DeleteQueue(context.Background(), wire.AgentQueue(id)) })
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	go func() {
		code, _, errOut := run(t, ctx, "agent", "--broker", url, "--token", id, "--ping", "1s", "--metrics-addr", addr)
		if code != 0 {
			t.Logf("agent stderr:\n%s", errOut)
		}
		done <- code
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("agent: exit %d", code)
		}
	})
	call := func(path, payload string) int {
		code, _, _ := run(t, t.Context(), "request", path, payload, "--selector", "agent:"+id, "--broker", url, "--timeout", "5s")
		return code
	}
	testenv.WaitFor(t, 15*time.Second, func() error {
		if code := call("/simple/echo", "0"); code != 0 {
			return fmt.Errorf("exit %d", code)
		}
		return nil
	})
	before := scrape(t, addr)
	for i := range 3 {
		if code := call("/simple/echo", fmt.Sprint(i)); code != 0 {
			t.Fatalf("echo: exit %d", code)
		}
	}
	if code := call("/simple/fail", `"x"`); code != 1 {
		t.Fatalf("fail: exit %d", code)
	}
	after := scrape(t, addr)
	echoes := `warren_agent_requests_total{kind="request",path="/simple/echo"}`
	if d := value(t, after, echoes) - value(t, before, echoes); d != 3 {
		t.Errorf("echo requests moved by %v, want 3\n%s", d, after)
	}
	if v := value(t, after, `warren_agent_request_errors_total{code="handler_error",path="/simple/fail"}`); v != 1 {
		t.Errorf("fail errors = %v, want 1", v)
	}
	for _, name := range []string{"warren_amqp_reconnects_total 0", "warren_amqp_blocked 0", "go_goroutines", "process_cpu_seconds_total"} {
		if !strings.Contains(after, name) {
			t.Errorf("no %s in\n%s", name, after)
		}
	}
	code, _, errOut := run(t, t.Context(), "agent", "--broker", url, "--metrics-addr", addr)
	if code != 1 || !strings.Contains(errOut, "--metrics-addr") {
		t.Errorf("second agent on the same --metrics-addr: exit %d\n%s", code, errOut)
	}
}

// value reads one sample of a Prometheus text exposition (0 when absent).
func value(t *testing.T, text, series string) float64 {
	t.Helper()
	for line := range strings.SplitSeq(text, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return v
		}
	}
	return 0
}

// TestDaemonMetricsAddr: a daemon with metrics_addr serves its agents',
// its plugins' and its connection's metrics; a bad address is a config
// error naming the key.
func TestDaemonMetricsAddr(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	amqpURL := testenv.AMQPURL(t)
	id, a := fabrictest.Actor(), fabrictest.Actor()
	fabrictest.DeleteQueues(t, amqpURL, "warren.service./"+a+"/upcase",
		"warren.service."+daemon.ControlPath(id, "status"), "warren.service."+daemon.ControlPath(id, "reload"),
		"warren.service."+daemon.ControlPath(id, "stop"))
	addr := freeAddr(t)
	svc := fmt.Sprintf("  %s:\n    command: [python3, PLUGINS/echo.py]\n    methods: [upcase]\n", a)
	cfg := daemonConfig(t, amqpURL, id, svc)
	body, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, append(body, "metrics_addr: nowhere\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := run(t, t.Context(), "daemon", "start", "-c", cfg); code == 0 || !strings.Contains(errOut, "metrics_addr") {
		t.Fatalf("bad metrics_addr: exit %d\n%s", code, errOut)
	}
	if err := os.WriteFile(cfg, append(body, "metrics_addr: "+addr+"\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		c, _, e := run(t, ctx, "daemon", "start", "-c", cfg)
		if c != 0 {
			t.Logf("daemon stderr:\n%s", e)
		}
		done <- c
	}()
	t.Cleanup(func() {
		cancel()
		if c := <-done; c != 0 {
			t.Errorf("daemon: exit %d", c)
		}
	})
	testenv.WaitFor(t, 60*time.Second, func() error {
		select {
		case c := <-done:
			done <- c
			t.Fatalf("daemon start exited %d", c)
		default:
		}
		if code, _, errOut := run(t, t.Context(), "daemon", "status", "-c", cfg); code != 0 {
			return fmt.Errorf("status: exit %d: %s", code, errOut)
		}
		return nil
	})
	for range 2 {
		if code, out, errOut := run(t, t.Context(), "request", "/"+a+"/upcase", `"hi"`, "--broker", amqpURL); code != 0 {
			t.Fatalf("request: exit %d: %s%s", code, out, errOut)
		}
	}
	text := scrape(t, addr)
	for series, want := range map[string]float64{
		`warren_daemon_calls_total{plugin="` + a + `",result="ok"}`:            2,
		`warren_daemon_worker_restarts_total{plugin="` + a + `"}`:              0,
		`warren_agent_requests_total{kind="request",path="/` + a + `/upcase"}`: 2,
		`warren_amqp_reconnects_total`:                                         0,
	} {
		if got := value(t, text, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if !strings.Contains(text, `warren_daemon_workers_running{plugin="`+a+`"}`) {
		t.Errorf("no workers_running in\n%s", text)
	}
}

// TestBertMetricsAddr: `warren bert --metrics-addr` serves the server's
// statistics; requests move by the calls made.
func TestBertMetricsAddr(t *testing.T) {
	port := strings.TrimPrefix(freeAddr(t), "127.0.0.1:")
	maddr := freeAddr(t)
	cfg := filepath.Join(t.TempDir(), "bert.cfg")
	if err := os.WriteFile(cfg, []byte("[{module, nat}, {type, native}].\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	go func() {
		code, _, errOut := run(t, ctx, "bert", "-c", cfg, "-p", port, "--host", "127.0.0.1", "--metrics-addr", maddr)
		if code != 0 {
			t.Logf("bert stderr:\n%s", errOut)
		}
		done <- code
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("bert: exit %d", code)
		}
	})
	addr := "127.0.0.1:" + port
	call := func() error {
		cctx, ccancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer ccancel()
		_, err := bertrpc.Call(cctx, addr, "nat", "add", 1, 2)
		return err
	}
	testenv.WaitFor(t, 10*time.Second, call)
	before := scrape(t, maddr)
	for range 3 {
		if err := call(); err != nil {
			t.Fatal(err)
		}
	}
	after := scrape(t, maddr)
	if d := value(t, after, "warren_bert_requests_total") - value(t, before, "warren_bert_requests_total"); d != 3 {
		t.Errorf("warren_bert_requests_total moved by %v, want 3\n%s", d, after)
	}
	for _, s := range []string{"warren_bert_connections_open ", `warren_bert_queue_length{priority="high"} 0`, "warren_bert_casts_refused_total 0"} {
		if !strings.Contains(after, s) {
			t.Errorf("no %q in\n%s", s, after)
		}
	}
}

// TestDaemonTower: a daemon with a tower section serves the Control Tower,
// behind its token, listing the daemon's own agent; beyond loopback
// without auth it refuses to start.
func TestDaemonTower(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	amqpURL := testenv.AMQPURL(t)
	id, a := fabrictest.Actor(), fabrictest.Actor()
	fabrictest.DeleteQueues(t, amqpURL, "warren.service./"+a+"/upcase",
		"warren.service."+daemon.ControlPath(id, "status"), "warren.service."+daemon.ControlPath(id, "reload"),
		"warren.service."+daemon.ControlPath(id, "stop"))
	addr := freeAddr(t)
	svc := fmt.Sprintf("  %s:\n    command: [python3, PLUGINS/echo.py]\n    methods: [upcase]\n", a)
	cfg := daemonConfig(t, amqpURL, id, svc)
	body, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(addr)
	if err := os.WriteFile(cfg, append(body, "tower:\n  listen: 0.0.0.0:"+port+"\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := run(t, t.Context(), "daemon", "start", "-c", cfg); code == 0 || !strings.Contains(errOut, "refusing to listen beyond loopback") {
		t.Fatalf("tower beyond loopback without auth: exit %d\n%s", code, errOut)
	}
	t.Setenv("WARREN_TEST_TOWER_TOKEN", "s3cret-token")
	if err := os.WriteFile(cfg, append(body, "tower:\n  listen: "+addr+"\n  token_env: WARREN_TEST_TOWER_TOKEN\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		c, _, e := run(t, ctx, "daemon", "start", "-c", cfg)
		if c != 0 {
			t.Logf("daemon stderr:\n%s", e)
		}
		done <- c
	}()
	t.Cleanup(func() {
		cancel()
		if c := <-done; c != 0 {
			t.Errorf("daemon: exit %d", c)
		}
	})
	get := func(auth bool, path string) (int, string, error) {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+addr+path, nil)
		if auth {
			req.Header.Set("Authorization", "Bearer s3cret-token")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	testenv.WaitFor(t, 60*time.Second, func() error {
		select {
		case c := <-done:
			done <- c
			t.Fatalf("daemon start exited %d", c)
		default:
		}
		if code, _, errOut := run(t, t.Context(), "daemon", "status", "-c", cfg); code != 0 {
			return fmt.Errorf("status: exit %d: %s", code, errOut)
		}
		code, page, err := get(true, "/")
		if err != nil {
			return err
		}
		if code != http.StatusOK || !strings.Contains(page, "Control Tower") {
			return fmt.Errorf("tower page: %d", code)
		}
		// The Tower's registry sees the daemon's agent (and any other
		// on the shared broker).
		code, text, err := get(true, "/metrics")
		if err != nil {
			return err
		}
		if code != http.StatusOK || value(t, text, "warren_registry_agents") < 1 {
			return fmt.Errorf("tower metrics: %d, no agents yet", code)
		}
		return nil
	})
	if code, _, err := get(false, "/"); err != nil || code != http.StatusUnauthorized {
		t.Errorf("without the token: %d %v, want 401", code, err)
	}
}
