package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/wire"
)

// rabbit connects to the test broker, with Warren's topology declared.
func rabbit(t *testing.T) (transport.Transport, string) {
	t.Helper()
	url := testenv.AMQPURL(t)
	tr, err := amqp.Dial(t.Context(), url, amqp.Config{}, amqp.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	if err := wire.Topology(t.Context(), tr); err != nil {
		t.Fatal(err)
	}
	return fabrictest.Recording(t, url, tr), url
}

// TestDLQListFiltersBeforeMax puts a letter that does not match ahead of one
// that does: list --max 1 --path finds it, show says when --hold stopped it
// short, and purge removes both.
func TestDLQListFiltersBeforeMax(t *testing.T) {
	tr, url := rabbit(t)
	actor := fabrictest.Actor()
	for _, l := range []struct{ id, path string }{{actor + "-other", "/" + actor + "/other"}, {actor + "-mine", "/" + actor + "/mine"}} {
		msg := transport.Message{Type: wire.TypePush, MessageID: l.id, Body: []byte(`1`), Headers: map[string]any{
			wire.HeaderPath: l.path, wire.HeaderReason: wire.CodeHandler, "warren-original-exchange": wire.RequestExchange, "warren-original-routing-key": actor,
		}}
		if err := tr.Publish(t.Context(), transport.DefaultExchange, wire.DeadLetterQueue, msg, transport.PublishOptions{Confirm: true}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		run(t, context.Background(), "dlq", "purge", actor+"-other", actor+"-mine", "--hold", "65534", "--broker", url)
	})
	// warren.dead on a shared broker may hold more than the default --hold.
	code, out, errOut := run(t, t.Context(), "dlq", "list", "--max", "1", "--path", "/"+actor+"/mine", "--json", "--hold", "65534", "--broker", url)
	var ls []letterJSON
	if code != 0 || json.Unmarshal([]byte(out), &ls) != nil || len(ls) != 1 || ls[0].MessageID != actor+"-mine" || ls[0].Reason != wire.CodeHandler {
		t.Fatalf("list --max 1 --path: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, errOut = run(t, t.Context(), "dlq", "show", actor+"-mine", "--hold", "1", "--broker", url)
	if code != 1 || !strings.Contains(errOut, "stopped before the end of the queue") || !strings.Contains(errOut, "--hold") {
		t.Fatalf("show --hold 1: exit %d\n%s\n%s", code, out, errOut)
	}
	t.Logf("show --hold 1: %s", strings.TrimSpace(errOut))
	code, out, errOut = run(t, t.Context(), "dlq", "show", actor+"-mine", "--json", "--hold", "65534", "--broker", url)
	var l letterJSON
	if code != 0 || json.Unmarshal([]byte(out), &l) != nil || l.MessageID != actor+"-mine" || l.Body != "1" || l.Time != nil {
		t.Fatalf("show --json: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, errOut = run(t, t.Context(), "dlq", "show", actor+"-mine", "--hold", "65534", "--broker", url)
	if code != 0 || !strings.Contains(out, "message id:  "+actor+"-mine\n") || !strings.Contains(out, "time:        unknown\n") {
		t.Fatalf("show: exit %d\n%s\n%s", code, out, errOut)
	}
	// An id that is not there is work not done: exit 1, saying which.
	for _, cmd := range []string{"replay", "purge"} {
		code, out, errOut = run(t, t.Context(), "dlq", cmd, actor+"-mine", actor+"-unknown", "--path", "/"+actor+"/other", "--hold", "65534", "--broker", url)
		if code != 1 || !strings.Contains(errOut, `no dead letter with that message id "`+actor+`-unknown" that matches --path /`+actor+`/other`) ||
			!strings.Contains(errOut, `"`+actor+`-mine"`) || !strings.Contains(out, " 0 dead letter(s)") {
			t.Fatalf("%s of unknown ids: exit %d\n%s\n%s", cmd, code, out, errOut)
		}
	}
	if code, _, errOut := run(t, t.Context(), "dlq", "list", "--hold", "0", "--broker", url); code != 2 || !strings.Contains(errOut, "--hold") {
		t.Fatalf("list --hold 0: exit %d %s", code, errOut)
	}
	code, out, errOut = run(t, t.Context(), "dlq", "purge", actor+"-other", actor+"-mine", "--hold", "65534", "--broker", url)
	if code != 0 || strings.TrimSpace(out) != "purged 2 dead letter(s)" {
		t.Fatalf("purge: exit %d\n%s\n%s", code, out, errOut)
	}
}
