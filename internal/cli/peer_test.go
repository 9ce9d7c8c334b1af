package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/peer"
	"github.com/warrenrpc/warren/transport/amqp"
)

// TestPeerSendCall: warren call gets a Go peer's reply, warren send
// reaches it with no reply queue, and a peer that is absent or silent is
// one clear line and exit 1.
func TestPeerSendCall(t *testing.T) {
	url := testenv.AMQPURL(t)
	tr, err := amqp.Dial(t.Context(), url, amqp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	name, silent := fabrictest.Actor(), fabrictest.Actor()
	srv, err := peer.New(tr, peer.Config{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	fabrictest.RunUntilCleanup(t, "peer", srv.Run, srv.Ready())
	sent := make(chan string, 1)
	go func() {
		for m := range srv.Requests() {
			if m.ReplyTo == "" {
				sent <- m.ID + " " + string(m.Body)
			} else {
				_ = srv.Reply(context.Background(), m, map[string]any{"got": m.Body})
			}
			_ = m.Ack()
		}
	}()
	quiet, err := peer.New(tr, peer.Config{Name: silent})
	if err != nil {
		t.Fatal(err)
	}
	fabrictest.RunUntilCleanup(t, "silent peer", quiet.Run, quiet.Ready())

	code, out, errOut := run(t, t.Context(), "call", name, `"hi"`, "--broker", url)
	if code != 0 || strings.Join(strings.Fields(out), "") != `{"got":"hi"}` {
		t.Fatalf("call: exit %d: %s%s", code, out, errOut)
	}
	code, out, errOut = run(t, t.Context(), "send", name, `[1,2]`, "--broker", url)
	id := strings.TrimSpace(out)
	if code != 0 || id == "" {
		t.Fatalf("send: exit %d: %s%s", code, out, errOut)
	}
	select {
	case got := <-sent:
		if got != id+" [1,2]" {
			t.Fatalf("the peer got %q, want %q", got, id+" [1,2]")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the peer got nothing")
	}
	code, _, errOut = run(t, t.Context(), "call", fabrictest.Actor(), "1", "--broker", url)
	if code != 1 || !strings.Contains(errOut, "peer: no such peer") {
		t.Fatalf("call to nobody: exit %d: %s", code, errOut)
	}
	code, _, errOut = run(t, t.Context(), "call", silent, "1", "--broker", url, "--timeout", "300ms")
	if code != 1 || !strings.Contains(errOut, "no reply from peer "+silent+" within 300ms") {
		t.Fatalf("call to a silent peer: exit %d: %s", code, errOut)
	}
}
