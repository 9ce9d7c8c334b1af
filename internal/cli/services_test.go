package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/wire"
)

// TestServicesStatsKnownLoad runs `warren agent`, sends it a known load
// with `warren request`, and reads the counts back with `warren services
// stats --json`; ls and info show the instance.
func TestServicesStatsKnownLoad(t *testing.T) {
	tr, url := rabbit(t)
	id := fabrictest.Actor()
	t.Cleanup(func() { tr.DeleteQueue(context.Background(), wire.AgentQueue(id)) })
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	go func() {
		code, _, _ := run(t, ctx, "agent", "--broker", url, "--token", id, "--ping", "1s")
		done <- code
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("agent: exit %d", code)
		}
	})
	call := func(path, payload string) (int, string) {
		args := []string{"request", path, "--selector", "agent:" + id, "--broker", url, "--timeout", "5s"}
		if payload != "" {
			args = append(args, payload)
		}
		code, out, errOut := run(t, t.Context(), args...)
		return code, out + errOut
	}
	testenv.WaitFor(t, 15*time.Second, func() error {
		if code, out := call("/simple/whoami", ""); code != 0 {
			return fmt.Errorf("exit %d: %s", code, out)
		}
		return nil
	})
	const echoes, fails = 4, 2
	for i := range echoes {
		if code, out := call("/simple/echo", fmt.Sprint(i)); code != 0 {
			t.Fatalf("echo: exit %d: %s", code, out)
		}
	}
	for range fails {
		if code, out := call("/simple/fail", `"on purpose"`); code != 1 || !strings.Contains(out, "on purpose") {
			t.Fatalf("fail: exit %d: %s", code, out)
		}
	}

	code, out, errOut := run(t, t.Context(), "services", "stats", "simple", id, "--json", "--broker", url, "--wait", "500ms")
	if code != 0 {
		t.Fatalf("services stats: exit %d\n%s%s", code, out, errOut)
	}
	var stats []wire.ServiceStats
	if err := json.Unmarshal([]byte(out), &stats); err != nil || len(stats) != 1 {
		t.Fatalf("services stats --json: %v\n%s", err, out)
	}
	got := map[string]wire.EndpointStats{}
	for _, e := range stats[0].Endpoints {
		got[e.Name] = e
	}
	if e := got["echo"]; e.NumRequests != echoes || e.NumErrors != 0 || e.Subject != "/simple/echo" {
		t.Errorf("echo: %+v", e)
	}
	if e := got["fail"]; e.NumRequests != fails || e.NumErrors != fails || e.LastError != "handler_error: on purpose" {
		t.Errorf("fail: %+v", e)
	}
	if e := got["whoami"]; e.NumRequests < 1 || e.NumErrors != 0 {
		t.Errorf("whoami: %+v", e)
	}
	if e := got["sleep"]; e.NumRequests != 0 || e.ProcessingTime != 0 {
		t.Errorf("sleep: %+v", e)
	}

	code, out, errOut = run(t, t.Context(), "services", "stats", "simple", id, "--broker", url, "--wait", "500ms")
	if code != 0 || !strings.Contains(out, "fail") || !strings.Contains(out, "handler_error: on purpose") || !strings.Contains(out, "1 service instance(s)") {
		t.Errorf("services stats: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = run(t, t.Context(), "services", "ls", "simple", id, "--broker", url, "--wait", "500ms")
	if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "0.0.0") {
		t.Errorf("services ls: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = run(t, t.Context(), "services", "info", "simple", id, "--json", "--broker", url, "--wait", "500ms")
	if code != 0 || !strings.Contains(out, `"type": "io.nats.micro.v1.info_response"`) || !strings.Contains(out, `"subject": "/simple/echo"`) {
		t.Errorf("services info: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = run(t, t.Context(), "services", "ls", "nosuchservice", "--json", "--broker", url, "--wait", "200ms")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("services ls of nothing: exit %d %q", code, out)
	}
}
