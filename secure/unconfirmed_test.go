package secure

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// TestFabricSecureReturned: in secure mode too, a request to an agent
// whose signed heartbeat says its queue is classic goes without a confirm
// (the secure transport reports the returns of the transport it wraps),
// and when that queue does not exist, the broker's return of the sealed
// request fails it at once, not at its deadline. A request to a live
// agent is answered as before.
func TestFabricSecureReturned(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		ca, issue := testCA(t, actor)
		auth := ca.Authority()
		fredID, ghostID, mapID := actor+"-fred", actor+"-ghost", actor+"-mapper"
		startSecureAgent(t, connect, Config{Identity: issue(fredID), Authority: auth}, actor)
		m, mtr := startSecureMapper(t, connect, Config{Identity: issue(mapID), Authority: auth})
		stop, ok := transport.NotifyReturn(mtr, func(transport.Return) {})
		if !ok {
			t.Fatal("the secure transport over a Returner is not one")
		}
		stop()

		// The ghost signs a heartbeat but has no queue.
		gtr, err := Wrap(connect(t), Config{Identity: issue(ghostID), Authority: auth}, WithLogger(testenv.Logger(t)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { gtr.Close() })
		echo := "/" + actor + "/echo"
		hb, err := wire.NewHeartbeat(wire.TypePing, wire.Heartbeat{Identity: ghostID, Services: []string{echo}, Status: -1000, PingInterval: 60000, QueueType: wire.QueueClassic})
		if err != nil {
			t.Fatal(err)
		}
		if err := gtr.Publish(t.Context(), wire.HeartbeatExchange, "", hb, transport.PublishOptions{Confirm: true}); err != nil {
			t.Fatal(err)
		}
		waitAgents(t, m, fredID, ghostID)

		r, err := m.Request(timeout(t, 10*time.Second), echo, "hi", mapper.To(fredID))
		if err != nil || r.Agent != fredID {
			t.Fatalf("request to fred: %+v, %v", r, err)
		}
		// A deadline far beyond what the return takes: a request that
		// waited for it would fail with ErrTimeout.
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		_, err = m.Request(ctx, echo, "hi", mapper.To(ghostID))
		if !errors.Is(err, mapper.ErrNoAgent) {
			t.Fatalf("request to the ghost: %v, want ErrNoAgent (it was unroutable, and dropped)", err)
		}
	})
}
