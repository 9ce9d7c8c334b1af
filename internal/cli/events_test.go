package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/fabrictest"
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
