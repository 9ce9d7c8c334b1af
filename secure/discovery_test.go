package secure

import (
	"testing"
	"time"

	"github.com/warrenrpc/warren/discovery"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
)

// TestFabricDiscovery: in secure mode a signed discovery question gets
// the agents' answers (envelopes, opened by the asker); an unsigned one,
// from a client without a certificate, gets none.
func TestFabricDiscovery(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		p := testPKI(t)
		actor := fabrictest.Actor()
		fred := startSecureAgent(t, connect, p.caConfig("fred"), actor)
		tr, err := Wrap(connect(t), p.caConfig("mapper1"), WithLogger(testenv.Logger(t)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		pings, err := discovery.Ping(t.Context(), tr, discovery.Query{Name: actor, From: "mapper1"})
		if err != nil || len(pings) != 1 || pings[0].ID != fred.a.Identity() || pings[0].Name != actor {
			t.Fatalf("signed PING: %+v %v", pings, err)
		}
		raw, err := discovery.Ping(t.Context(), connect(t), discovery.Query{Name: actor, Wait: 300 * time.Millisecond})
		if err != nil || len(raw) != 0 {
			t.Errorf("unsigned PING: %+v %v, want no answer", raw, err)
		}
	})
}
