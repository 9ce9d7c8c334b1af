package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warrenrpc/warren/daemon"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/secure"
)

// daemonConfig writes a daemon config for the test's RabbitMQ: its
// password goes through the environment, as the config requires.
func daemonConfig(t *testing.T, amqpURL, identity, services string) string {
	t.Helper()
	u, err := url.Parse(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	pw, _ := u.User.Password()
	u.User = url.User(u.User.Username())
	t.Setenv("WARREN_TEST_DAEMON_PASSWORD", pw)
	plugins, err := filepath.Abs("../../examples/plugins")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "warren.yaml")
	yml := fmt.Sprintf("identity: %s\nbroker:\n  url: %s\n  password_env: WARREN_TEST_DAEMON_PASSWORD\nservices:\n%s",
		identity, u, strings.ReplaceAll(services, "PLUGINS", plugins))
	if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestDaemonCommandsOnRabbitMQ: start in the foreground, status, reload
// (command and SIGHUP), a bad reload, stop, and the errors when no daemon
// runs.
func TestDaemonCommandsOnRabbitMQ(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	amqpURL := testenv.AMQPURL(t)
	id, a, b := fabrictest.Actor(), fabrictest.Actor(), fabrictest.Actor()
	fabrictest.DeleteQueues(t, amqpURL, "warren.service./"+a+"/upcase", "warren.service./"+b+"/upcase",
		"warren.service."+daemon.ControlPath(id, "status"), "warren.service."+daemon.ControlPath(id, "reload"),
		"warren.service."+daemon.ControlPath(id, "stop"))
	svcA := fmt.Sprintf("  %s:\n    command: [python3, PLUGINS/echo.py]\n    methods: [upcase]\n", a)
	svcB := fmt.Sprintf("  %s:\n    command: [python3, PLUGINS/echo.py]\n    methods: [upcase]\n", b)
	cfg := daemonConfig(t, amqpURL, id, svcA)
	plugins, _ := filepath.Abs("../../examples/plugins")
	svcB = strings.ReplaceAll(svcB, "PLUGINS", plugins)

	code, out, errOut := run(t, t.Context(), "daemon", "status", "-c", cfg)
	if code != 1 || !strings.Contains(errOut, "no daemon "+id+" runs on this broker") {
		t.Fatalf("status with no daemon: exit %d\n%s%s", code, out, errOut)
	}
	code, _, errOut = run(t, t.Context(), "daemon", "stop", "-c", cfg)
	if code != 1 || !strings.Contains(errOut, "no daemon "+id+" runs") {
		t.Fatalf("stop with no daemon: exit %d\n%s", code, errOut)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	var startErr strings.Builder
	go func() {
		c, _, e := run(t, ctx, "daemon", "start", "-c", cfg, "--log-level", "info")
		startErr.WriteString(e)
		done <- c
	}()
	var st daemon.Status
	testenv.WaitFor(t, 60*time.Second, func() error {
		select {
		case c := <-done:
			done <- c
			t.Fatalf("daemon start exited %d", c)
		default:
		}
		code, out, errOut := run(t, t.Context(), "daemon", "status", "-c", cfg)
		if code != 0 {
			return fmt.Errorf("status: exit %d: %s", code, errOut)
		}
		return json.Unmarshal([]byte(out), &st)
	})
	if st.Identity != id || st.PID != os.Getpid() || len(st.Plugins) != 1 || st.Plugins[0].Name != a {
		t.Fatalf("status %+v", st)
	}
	broker := []string{"--broker", amqpURL}
	code, out, errOut = run(t, t.Context(), append([]string{"request", "/" + a + "/upcase", `"hi"`}, broker...)...)
	if code != 0 || strings.TrimSpace(out) != `"HI"` {
		t.Fatalf("request: exit %d: %s%s", code, out, errOut)
	}

	// reload adds a service; a bad config is refused with its line.
	if err := os.WriteFile(cfg, append(must(os.ReadFile(cfg)), svcB...), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = run(t, t.Context(), "daemon", "reload", "-c", cfg)
	if code != 0 || !strings.Contains(out, `"added": [`+"\n    \""+b) {
		t.Fatalf("reload: exit %d: %s%s", code, out, errOut)
	}
	code, out, errOut = run(t, t.Context(), append([]string{"request", "/" + b + "/upcase", `"x"`}, broker...)...)
	if code != 0 || strings.TrimSpace(out) != `"X"` {
		t.Fatalf("request to the added service: exit %d: %s%s", code, out, errOut)
	}
	good := must(os.ReadFile(cfg))
	if err := os.WriteFile(cfg, append(slicesClone(good), "    workers: many\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	lines := strings.Count(string(good), "\n") + 1
	code, _, errOut = run(t, t.Context(), "daemon", "reload", "-c", cfg)
	if code != 1 || !strings.Contains(errOut, fmt.Sprintf("warren.yaml:%d: cannot unmarshal !!str `many` into int", lines)) {
		t.Fatalf("bad reload: exit %d: %s", code, errOut)
	}
	code, _, errOut = run(t, t.Context(), "daemon", "config", "check", "-c", cfg)
	if code != 1 || !strings.Contains(errOut, fmt.Sprintf("warren.yaml:%d:", lines)) {
		t.Fatalf("config check: exit %d: %s", code, errOut)
	}
	// SIGHUP reloads too (here: the config fixed again).
	if err := os.WriteFile(cfg, good, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, func() error {
		code, out, errOut := run(t, t.Context(), "daemon", "status", "-c", cfg)
		if code != 0 {
			return fmt.Errorf("status: exit %d: %s", code, errOut)
		}
		var st daemon.Status
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return err
		}
		if st.Reloads != 2 || st.LastReloadErr != "" {
			return fmt.Errorf("reloads %d, last error %q", st.Reloads, st.LastReloadErr)
		}
		return nil
	})

	code, out, errOut = run(t, t.Context(), "daemon", "stop", "-c", cfg)
	if code != 0 || !strings.Contains(out, "daemon "+id+" (pid ") || !strings.Contains(out, "stopped") {
		t.Fatalf("stop: exit %d: %s%s", code, out, errOut)
	}
	select {
	case c := <-done:
		if c != 0 {
			t.Fatalf("daemon start exited %d\n%s", c, startErr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("daemon start did not return after stop")
	}
}

func TestDaemonConfigBrokerTest(t *testing.T) {
	amqpURL := testenv.AMQPURL(t)
	cfg := daemonConfig(t, amqpURL, fabrictest.Actor(), "  x:\n    command: [sh]\n    methods: [y]\n")
	code, out, errOut := run(t, t.Context(), "daemon", "config", "broker", "--test", "-c", cfg)
	if code != 0 || !strings.Contains(out, ": connected") {
		t.Fatalf("broker --test: exit %d: %s%s", code, out, errOut)
	}
	t.Setenv("WARREN_TEST_DAEMON_PASSWORD", "wrong-password-xyz")
	code, out, errOut = run(t, t.Context(), "daemon", "config", "broker", "--test", "-c", cfg)
	if code != 1 || !strings.Contains(out, ": failed: ") || strings.Contains(out+errOut, "wrong-password-xyz") {
		t.Fatalf("broker --test with a wrong password: exit %d: %s%s", code, out, errOut)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func slicesClone(b []byte) []byte { return append([]byte(nil), b...) }

// TestDaemonDetachAndPidfile: --detach returns once the daemon serves,
// with its pid in the pidfile; a second start on that pidfile is refused;
// stop --pidfile drains it; a daemon that cannot start says why.
func TestDaemonDetachAndPidfile(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	amqpURL := testenv.AMQPURL(t)
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	id, a := fabrictest.Actor(), fabrictest.Actor()
	fabrictest.DeleteQueues(t, amqpURL, "warren.service./"+a+"/upcase",
		"warren.service."+daemon.ControlPath(id, "status"), "warren.service."+daemon.ControlPath(id, "reload"),
		"warren.service."+daemon.ControlPath(id, "stop"))
	cfg := daemonConfig(t, amqpURL, id, fmt.Sprintf("  %s:\n    command: [python3, PLUGINS/echo.py]\n    methods: [upcase]\n", a))
	dir := t.TempDir()
	pidfile, logfile := filepath.Join(dir, "warren.pid"), filepath.Join(dir, "warren.log")
	runBin := func(args ...string) (int, string) {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), bin, args...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	code, out := runBin("daemon", "start", "-c", cfg, "--detach", "--pidfile", pidfile, "--log-file", logfile, "--log-level", "info")
	if code != 0 || !strings.Contains(out, "warren daemon "+id+" started (pid ") {
		t.Fatalf("start --detach: exit %d: %s", code, out)
	}
	pid, err := readPidfile(pidfile)
	if err != nil || !strings.Contains(out, fmt.Sprintf("(pid %d)", pid)) {
		t.Fatalf("pidfile: %d, %v (output %s)", pid, err, out)
	}
	t.Cleanup(func() {
		if alive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	code, out = runBin("daemon", "start", "-c", cfg, "--detach", "--pidfile", pidfile)
	if code != 1 || !strings.Contains(out, fmt.Sprintf("the daemon already runs (pid %d)", pid)) {
		t.Fatalf("second start: exit %d: %s", code, out)
	}
	code, out = runBin("daemon", "stop", "--pidfile", pidfile)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("pid %d stopped", pid)) {
		t.Fatalf("stop --pidfile: exit %d: %s", code, out)
	}
	if _, err := os.Stat(pidfile); !os.IsNotExist(err) {
		t.Fatalf("pidfile left behind: %v", err)
	}
	if log := string(must(os.ReadFile(logfile))); !strings.Contains(log, "daemon stopped") {
		t.Fatalf("log file:\n%s", log)
	}
	code, out = runBin("daemon", "stop", "--pidfile", pidfile)
	if code != 1 || !strings.Contains(out, "no such file") {
		t.Fatalf("stop with no daemon: exit %d: %s", code, out)
	}

	broken := daemonConfig(t, amqpURL, fabrictest.Actor(), "  broken:\n    command: \"echo no >&2; exit 3\"\n    methods: [x]\n")
	code, out = runBin("daemon", "start", "-c", broken, "--detach")
	if code != 1 || !strings.Contains(out, "service broken does not start") {
		t.Fatalf("start --detach of a broken plugin: exit %d: %s", code, out)
	}
}

// TestDaemonBrokerFailover: with several broker URLs the first that
// answers is used, and config broker --test reports each.
func TestDaemonBrokerFailover(t *testing.T) {
	amqpURL := testenv.AMQPURL(t)
	id := fabrictest.Actor()
	cfg := daemonConfig(t, amqpURL, id, "  x:\n    command: [sh]\n    methods: [y]\n")
	u, _ := url.Parse(amqpURL)
	u.User = url.User(u.User.Username())
	yml := strings.Replace(string(must(os.ReadFile(cfg))), "  url: "+u.String(), "  urls: [amqp://guest@127.0.0.1:1/, "+u.String()+"]", 1)
	if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t, t.Context(), "daemon", "config", "broker", "--test", "-c", cfg)
	if code != 1 || !strings.Contains(out, "amqp://guest:xxxxx@127.0.0.1:1/: failed: ") || !strings.Contains(out, u.Host+u.Path+": connected") {
		t.Fatalf("broker --test: exit %d: %s%s", code, out, errOut)
	}
	// status dials past the dead node and reaches the broker.
	code, _, errOut = run(t, t.Context(), "daemon", "status", "-c", cfg)
	if code != 1 || !strings.Contains(errOut, "no daemon "+id+" runs on this broker") {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
}

// TestDaemonSecureModeCommands: a daemon in secure mode (its config's
// secure section) serves, and status and stop, which sign with the same
// certificate, reach it.
func TestDaemonSecureModeCommands(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	amqpURL := testenv.AMQPURL(t)
	id, a := fabrictest.Actor(), fabrictest.Actor()
	fabrictest.DeleteQueues(t, amqpURL, "warren.service./"+a+"/upcase",
		"warren.service."+daemon.ControlPath(id, "status"), "warren.service."+daemon.ControlPath(id, "reload"),
		"warren.service."+daemon.ControlPath(id, "stop"))
	dir := t.TempDir()
	ca, err := secure.NewCA("warren test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := ca.WriteFiles(caFile, filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	ident, err := ca.Issue(id, secure.CertOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(dir, id+".pem"), filepath.Join(dir, id+".key")
	if err := secure.WriteIdentity(ident, cert, key); err != nil {
		t.Fatal(err)
	}
	cfg := daemonConfig(t, amqpURL, id, fmt.Sprintf("  %s:\n    command: [python3, PLUGINS/echo.py]\n    methods: [upcase]\n", a))
	yml := strings.Replace(string(must(os.ReadFile(cfg))), "services:\n",
		fmt.Sprintf("secure:\n  cert: %s\n  key: %s\n  ca: %s\nservices:\n", cert, key, caFile), 1)
	if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() {
		c, _, _ := run(t, ctx, "daemon", "start", "-c", cfg)
		done <- c
	}()
	testenv.WaitFor(t, 60*time.Second, func() error {
		code, out, errOut := run(t, t.Context(), "daemon", "status", "-c", cfg)
		if code != 0 {
			return fmt.Errorf("status: exit %d: %s", code, errOut)
		}
		if !strings.Contains(out, `"identity": "`+id+`"`) {
			return fmt.Errorf("status: %s", out)
		}
		return nil
	})
	code, out, errOut := run(t, t.Context(), "daemon", "stop", "-c", cfg)
	if code != 0 || !strings.Contains(out, "stopped") {
		t.Fatalf("stop: exit %d: %s%s", code, out, errOut)
	}
	if c := <-done; c != 0 {
		t.Fatalf("daemon start exited %d", c)
	}
}
