package mapper_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

// TestBadHeartbeatsRefused: heartbeats whose record is not well-formed
// (identity, queue, paths, ping interval) do not make an agent; the mapper
// logs each with the reason.
func TestBadHeartbeatsRefused(t *testing.T) {
	b := mem.NewBroker()
	t.Cleanup(func() { b.Close() })
	var logs testenv.Buffer
	m, err := mapper.New(b.Connect(), mapper.Config{Identity: "m"}, mapper.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-m.Ready()

	tr := b.Connect()
	beat := func(body string) {
		t.Helper()
		msg := transport.Message{Type: wire.TypePing, ContentType: wire.ContentJSON, Body: []byte(body)}
		if err := tr.Publish(t.Context(), wire.HeartbeatExchange, "", msg, transport.PublishOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	record := func(id, queue, path string, ping int64) string {
		b, _ := json.Marshal(map[string]any{"identity": id, "queue": queue, "services": []string{path}, "status": 0, "ping_interval_ms": ping})
		return string(b)
	}
	bad := []struct{ body, says string }{
		{record("ghost\x1b[31m", "", "/s/e", 1000), "control characters"},
		{record("ghost", wire.DeadLetterQueue, "/s/e", 1000), `queue \"warren.dead\"`},
		{record("ghost", "", "/s/e\x00", 1000), "invalid service path"},
		{record("ghost", "", "/s/e", 1), "ping_interval_ms 1: want 10 to 3600000"},
		{`{"identity":"ghost","services":["/s/e"],"status":1e999,"ping_interval_ms":1000}`, "status"},
	}
	for _, h := range bad {
		beat(h.body)
	}
	// Heartbeats are read in order: once the good one is in, the bad ones
	// were read.
	beat(record("good", "", "/s/e", 1000))
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := len(m.Agents()); n == 0 {
			return fmt.Errorf("no agent yet")
		}
		return nil
	})
	if as := m.Agents(); len(as) != 1 || as[0].Identity != "good" || as[0].Queue != wire.AgentQueue("good") {
		t.Fatalf("agents %+v, want only good", as)
	}
	out := logs.String()
	for _, h := range bad {
		if !strings.Contains(out, h.says) {
			t.Errorf("no log line saying %q:\n%s", h.says, out)
		}
	}
	if n := strings.Count(out, `msg="heartbeat refused"`); n != len(bad) {
		t.Errorf("%d heartbeats refused, want %d:\n%s", n, len(bad), out)
	}
}
