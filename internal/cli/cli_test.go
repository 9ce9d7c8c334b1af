package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
)

func run(t *testing.T, ctx context.Context, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Main(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestDemoOnEmbeddedBroker(t *testing.T) {
	code, out, errOut := run(t, t.Context(), "demo", "--log-level", "error")
	if code != 0 {
		t.Fatalf("demo exit %d\n%s\n%s", code, out, errOut)
	}
	for _, want := range []string{
		"loads fred=0.20 bob=0.70 → /simple/echo \"hello nanite\" answered by fred",
		"loads fred=0.90 bob=0.10 → /simple/echo \"hello nanite\" answered by bob",
		`{"bob":"hello nanite","fred":"hello nanite"}`,
		"agent fred joined",
		"agent bob left",
		"no agent serves this service /simple/echo",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q\n%s", want, out)
		}
	}
	// fred's crash: dropped as lost (the broker shows its queue without a
	// consumer) or as expired, whichever the mapper saw first.
	if !strings.Contains(out, "agent fred lost") && !strings.Contains(out, "agent fred expired") {
		t.Errorf("demo output shows fred neither lost nor expired\n%s", out)
	}
}

func TestUsageAndBrokerErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown command", []string{"frobnicate"}, 2, "unexpected argument"},
		{"bad path", []string{"request", "nope"}, 2, "invalid service path"},
		{"bad payload", []string{"request", "/a/b", "hi"}, 2, "not JSON"},
		{"bad selector", []string{"request", "/a/b", "--selector", "fastest"}, 2, "unknown selector"},
		{"no broker", []string{"request", "/a/b", "--broker", "amqp://guest:guest@127.0.0.1:1/"}, 1, "cannot connect"},
		{"no broker agents", []string{"agents", "--broker", "amqp://guest:secret@127.0.0.1:1/"}, 1, "cannot connect"},
		{"tls flags need amqps", []string{"agents", "--broker", "amqp://127.0.0.1:1/", "--tls-server-name", "x"}, 2, "amqps"},
		{"tls without CA file", []string{"agents", "--broker", "amqps://127.0.0.1:1/", "--tls-ca", "/nonexistent/ca.pem"}, 2, "--tls-ca (or WARREN_TLS_CA): no such file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := run(t, t.Context(), tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errOut, tc.code, tc.want)
			}
			if strings.Contains(errOut, "secret") {
				t.Fatalf("password printed: %q", errOut)
			}
			// One line, besides the warning about a password given with --broker.
			errLines := slices.DeleteFunc(strings.Split(strings.TrimSpace(errOut), "\n"), func(l string) bool { return strings.Contains(l, "level=WARN") })
			if tc.code == 1 && len(errLines) != 1 {
				t.Fatalf("broker error is not one line: %q", errOut)
			}
		})
	}
	code, out, _ := run(t, t.Context(), "request", "--help")
	if code != 0 || !strings.Contains(out, "--selector") {
		t.Fatalf("request --help: %d %s", code, out)
	}
}

// TestBinaryOnRabbitMQ builds warren and runs agents fred and bob as
// processes, then request, fan-out, agents and push from the command line,
// and SIGTERM.
func TestBinaryOnRabbitMQ(t *testing.T) {
	url := testenv.AMQPURL(t)
	bin := filepath.Join(t.TempDir(), "warren")
	build := exec.Command("go", "build", "-o", bin, "github.com/warrenrpc/warren/cmd/warren")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	prefix := fabrictest.Actor()
	var agents []*exec.Cmd
	for _, name := range []string{"fred", "bob"} {
		cmd := exec.Command(bin, "agent", "--broker", url, "--token", prefix+"-"+name, "--tag", prefix, "--ping", "1s", "--log-level", "info")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		agents = append(agents, cmd)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("agent %s stderr:\n%s", name, stderr.String())
			}
			if cmd.ProcessState == nil {
				cmd.Process.Kill()
				cmd.Wait()
			}
		})
	}
	warren := func(args ...string) (string, error) {
		cmd := exec.Command(bin, append(args, "--broker", url)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return string(out), &exitErr{err, stderr.String()}
		}
		return string(out), nil
	}
	// Agents register within a moment of starting.
	testenv.WaitFor(t, 15*time.Second, func() error {
		out, err := warren("request", "/simple/whoami", "--selector", "all", "--tag", prefix, "--timeout", "3s")
		if err != nil {
			return err
		}
		var got map[string]string
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			return err
		}
		if got[prefix+"-fred"] != prefix+"-fred" || got[prefix+"-bob"] != prefix+"-bob" || len(got) != 2 {
			return &exitErr{nil, out}
		}
		return nil
	})
	start := time.Now()
	out, err := warren("request", "/simple/echo", `"hi"`, "--tag", prefix, "--timeout", "2s")
	if err != nil || strings.TrimSpace(out) != `"hi"` {
		t.Fatalf("request: %q %v", out, err)
	}
	t.Logf("warren request took %v (process start to exit)", time.Since(start))
	out, err = warren("agents", "--json")
	if err != nil || !strings.Contains(out, prefix+"-fred") || !strings.Contains(out, "/simple/echo") {
		t.Fatalf("agents: %q %v", out, err)
	}
	if _, err := warren("push", "/simple/sleep", "0.01", "--tag", prefix); err != nil {
		t.Fatalf("push: %v", err)
	}
	// SIGTERM drains and exits 0.
	for _, cmd := range agents {
		cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, cmd := range agents {
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent exit after SIGTERM: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("agent did not exit after SIGTERM")
		}
	}
	_ = os.Stderr
}

type exitErr struct {
	err    error
	stderr string
}

func (e *exitErr) Error() string {
	if e.err == nil {
		return "unexpected output: " + e.stderr
	}
	return e.err.Error() + ": " + e.stderr
}

// TestDemoRefusesABusyBroker: on a broker where agents already serve
// /simple/echo, or are named fred or bob, the demo stops with a clear
// error instead of mixing its agents with them.
func TestDemoRefusesABusyBroker(t *testing.T) {
	b := mem.NewBroker()
	connect := func(string) (transport.Transport, error) { return b.Connect(), nil }
	if err := checkNoSimpleAgents(t.Context(), connect); err != nil {
		t.Fatalf("empty broker: %v", err)
	}
	tr := b.Connect()
	t.Cleanup(func() { tr.Close() })
	a, err := agent.New(tr, agent.Config{Identity: "worker-7", NoSharedQueues: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Handle("/simple/echo", agent.HandlerFunc(func(_ context.Context, r *agent.Request) (any, error) { return r.Payload, nil })); err != nil {
		t.Fatal(err)
	}
	fabrictest.RunAgent(t, a)
	err = checkNoSimpleAgents(t.Context(), connect)
	if err == nil || !strings.Contains(err.Error(), "worker-7") || !strings.Contains(err.Error(), "vhost") {
		t.Fatalf("busy broker: err = %v", err)
	}
}
