package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/simple"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/wire"
)

// TestPublishSubscribe tails events with warren subscribe while warren
// publish sends them, and checks the JSON lines: one per event, remote
// control characters escaped.
func TestPublishSubscribe(t *testing.T) {
	_, url := rabbit(t)
	p := fabrictest.Actor()
	group := fabrictest.Actor()
	fabrictest.DeleteQueues(t, url, "warren.events.one."+group)
	warren := func(args ...string) (int, string, string) {
		return run(t, t.Context(), append(args, "--broker", url, "--log-level", "error")...)
	}
	type result struct {
		code     int
		out, err string
	}
	done := make(chan result, 1)
	go func() {
		code, out, errOut := warren("subscribe", p+".*", "--mode", "one", "--group", group, "--count", "2")
		done <- result{code, out, errOut}
	}()
	// Publish until the subscription takes the events (it may not be bound
	// yet): --mandatory fails while nobody subscribes.
	payload := `{"n":1,"s":"red \u001b[31m\u202e"}`
	var r result
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(30 * time.Second)
wait:
	for {
		select {
		case r = <-done:
			break wait
		case <-tick.C:
			warren("publish", p+".x", payload, "--mandatory", "--persistent")
		case <-timeout:
			t.Fatal("warren subscribe --count 2 did not exit")
		}
	}
	if r.code != 0 {
		t.Fatalf("subscribe: exit %d %s", r.code, r.err)
	}
	lines := strings.Split(strings.TrimSuffix(r.out, "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("subscribe printed %d lines: %q", len(lines), r.out)
	}
	for _, l := range lines {
		if strings.ContainsFunc(l, func(r rune) bool { return r < 0x20 || r == 0x202e }) {
			t.Errorf("raw control character in %q", l)
		}
		var ev struct {
			Key     string
			Payload struct {
				N int
				S string
			}
			From string
		}
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		if ev.Key != p+".x" || ev.Payload.N != 1 || ev.Payload.S != "red \x1b[31m\u202e" || ev.From == "" {
			t.Errorf("line %q read as %+v", l, ev)
		}
	}

	if code, _, errOut := warren("publish", p+".nobody", "1", "--mandatory"); code != 1 || !strings.Contains(errOut, "no subscriber") {
		t.Errorf("publish --mandatory with no subscriber: exit %d %s", code, errOut)
	}
	if code, _, errOut := warren("publish", p+".nobody", "1"); code != 0 {
		t.Errorf("publish with no subscriber: exit %d %s", code, errOut)
	}
	for _, args := range [][]string{
		{"publish", "a..b"},
		{"publish", "a.*"},
		{"publish", "a", "hi"},
		{"subscribe", "a*"},
		{"subscribe", "a", "--mode", "one"},
		{"subscribe", "a", "--group", "g"},
	} {
		if code, _, errOut := warren(args...); code != 2 {
			t.Errorf("%v: exit %d %s; want usage error", args, code, errOut)
		}
	}
}

// TestRequestProgress: warren request --progress prints the handler's
// progress on stderr, a line each, in order, and the result on stdout.
func TestRequestProgress(t *testing.T) {
	tr, url := rabbit(t)
	actor := fabrictest.Actor()
	fabrictest.DeleteQueues(t, url, wire.ServiceQueue("/"+actor+"/sleep"), wire.AgentQueue(actor+"-a"))
	a, err := agent.New(tr, agent.Config{Identity: actor + "-a", PingInterval: time.Second}, agent.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Expose(actor, simple.Simple{}); err != nil {
		t.Fatal(err)
	}
	fabrictest.RunAgent(t, a)
	var code int
	var out, errOut string
	testenv.WaitFor(t, 15*time.Second, func() error {
		code, out, errOut = run(t, t.Context(), "request", "/"+actor+"/sleep", "0.5", "--progress", "--broker", url, "--log-level", "error")
		if code != 0 {
			return fmt.Errorf("exit %d: %s", code, errOut)
		}
		return nil
	})
	if strings.TrimSpace(out) != `"slept 500ms"` {
		t.Errorf("stdout %q", out)
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if len(lines) < 1 || len(lines) > 9 { // ticks may be missed on a loaded machine
		t.Fatalf("%d progress lines:\n%s", len(lines), errOut)
	}
	for i, l := range lines {
		want := fmt.Sprintf("progress %s-a: [%s", actor, strings.Repeat("#", 2*(i+1)))
		if !strings.HasPrefix(l, want) || !strings.HasSuffix(l, fmt.Sprintf(" %d%%", 10*(i+1))) {
			t.Errorf("line %d: %q, want %q...%d%%", i, l, want, 10*(i+1))
		}
	}
}

// TestRequestProgressTimeout: warren request --progress-timeout gives up
// on a job that went quiet long before --timeout, and lets one that
// reports run.
func TestRequestProgressTimeout(t *testing.T) {
	tr, url := rabbit(t)
	actor := fabrictest.Actor()
	id := actor + "-a"
	fabrictest.DeleteQueues(t, url, wire.ServiceQueue("/"+actor+"/quiet"), wire.ServiceQueue("/"+actor+"/sleep"), wire.AgentQueue(id))
	a, err := agent.New(tr, agent.Config{Identity: id, PingInterval: time.Second}, agent.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Expose(actor, simple.Simple{}); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	if err := a.Handle("/"+actor+"/quiet", agent.Func(func(ctx context.Context, _ any) (string, error) {
		_ = agent.Progress(ctx, "", 0.5)
		select { // quiet until the test ends
		case <-release:
		case <-ctx.Done():
		}
		return "done", nil
	})); err != nil {
		t.Fatal(err)
	}
	fabrictest.RunAgent(t, a)
	t.Cleanup(func() { close(release) })
	warren := func(args ...string) (int, string, string) {
		return run(t, t.Context(), append(args, "--broker", url, "--log-level", "error")...)
	}
	// A job that reports runs to its result.
	testenv.WaitFor(t, 15*time.Second, func() error {
		if code, _, errOut := warren("request", "/"+actor+"/sleep", "0.3", "--progress-timeout", "10s", "--timeout", "60s"); code != 0 {
			return fmt.Errorf("exit %d: %s", code, errOut)
		}
		return nil
	})
	start := time.Now()
	code, out, errOut := warren("request", "/"+actor+"/quiet", "--progress", "--progress-timeout", "300ms", "--timeout", "10m")
	if took := time.Since(start); code != 1 || out != "" || !strings.Contains(errOut, "no progress for 300ms") || took > 30*time.Second {
		t.Errorf("a quiet job: exit %d after %v, stdout %q, stderr %q; want exit 1 with no progress for 300ms", code, took, out, errOut)
	}
	if !strings.HasPrefix(errOut, "progress "+id+": [##########..........] 50%\n") {
		t.Errorf("the progress before the quiet: %q", errOut)
	}
	if code, _, errOut := warren("request", "/"+actor+"/quiet", "--progress-timeout=-1s"); code != 2 {
		t.Errorf("negative --progress-timeout: exit %d %s", code, errOut)
	}
}

func TestPrintProgress(t *testing.T) {
	for _, tc := range []struct {
		p    mapper.Progress
		want string
	}{
		{mapper.Progress{Agent: "fred", Value: json.RawMessage(`0.25`)}, "progress fred: [#####...............] 25%"},
		{mapper.Progress{Agent: "fred", Key: "files", Value: json.RawMessage(`{"done": 3, "total": 12}`)}, "progress fred files: [#####...............] 3/12"},
		{mapper.Progress{Agent: "fred", Key: "step", Value: json.RawMessage(`1`)}, "progress fred step: 1"},
		{mapper.Progress{Agent: "fred", Value: json.RawMessage(`{"a": "x\u001by"}`)}, `progress fred: {"a":"x\u001by"}`},
		{mapper.Progress{Agent: "fr\x1bed", Key: "k\u202e", Value: json.RawMessage("\"\u202e\"")}, `progress fr\x1bed k\u202e: "\u202e"`},
	} {
		var b strings.Builder
		printProgress(&b, tc.p)
		if got := strings.TrimSuffix(b.String(), "\n"); got != tc.want {
			t.Errorf("got  %q\nwant %q", got, tc.want)
		}
	}
}

// TestPublishStream: warren publish --stream sends a file as a streamed
// event; warren subscribe prints its payload and the size of its data.
func TestPublishStream(t *testing.T) {
	_, url := rabbit(t)
	p := fabrictest.Actor()
	group := fabrictest.Actor()
	fabrictest.DeleteQueues(t, url, "warren.events.one."+group)
	warren := func(args ...string) (int, string, string) {
		return run(t, t.Context(), append(args, "--broker", url, "--log-level", "error")...)
	}
	file := filepath.Join(t.TempDir(), "data.bin")
	if err := os.WriteFile(file, bytes.Repeat([]byte("warren "), 200_000), 0o600); err != nil {
		t.Fatal(err)
	}
	type result struct {
		code     int
		out, err string
	}
	done := make(chan result, 1)
	go func() {
		code, out, errOut := warren("subscribe", p+".file", "--mode", "one", "--group", group, "--count", "1")
		done <- result{code, out, errOut}
	}()
	var r result
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(60 * time.Second)
	published := false
wait:
	for {
		select {
		case r = <-done:
			break wait
		case <-tick.C:
			if !published {
				// --mandatory fails while nobody subscribes yet.
				code, _, _ := warren("publish", p+".file", `"data.bin"`, "--stream", file, "--mandatory")
				published = code == 0
			}
		case <-timeout:
			t.Fatal("warren subscribe --count 1 did not exit")
		}
	}
	if r.code != 0 || !strings.Contains(r.out, `"payload":"data.bin"`) || !strings.Contains(r.out, `"stream_size":1400000`) {
		t.Fatalf("subscribe: exit %d %q %s", r.code, r.out, r.err)
	}
	if code, _, errOut := warren("publish", p+".file", "--stream", filepath.Join(t.TempDir(), "nope")); code != 2 {
		t.Errorf("--stream of a missing file: exit %d %s; want a usage error", code, errOut)
	}
}

// TestEventUsageErrors: what publish and subscribe can tell is wrong
// before dialling is a usage error (exit 2) naming the flag, never a
// broker's refusal or a Go API's wording (exit 1).
func TestEventUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"publish", "a.b", "1", "--ttl", "2000h"}, "--ttl 2000h0m0s: at most 1193h"},
		{[]string{"publish", "a.b", "1", "--timeout", "0s"}, "--timeout 0s: want a positive duration"},
		{[]string{"subscribe", "a.#", "--durable"}, "--durable --mode all needs --identity"},
		{[]string{"subscribe", "a.#", "--mode", "one", "--group", "g/x"}, "--group: "},
		{[]string{"subscribe", "a.#", "--mode", "host", "--group", "g", "--host", "a b"}, "--host: "},
		{[]string{"subscribe", "a.#", "--identity", "a\x1bb"}, "--identity: "},
	} {
		code, out, errOut := run(t, t.Context(), append(tc.args, "--broker", "amqp://127.0.0.1:1/")...)
		if code != 2 || !strings.Contains(errOut, tc.want) || out != "" {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
}
