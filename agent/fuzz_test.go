package agent

import (
	"encoding/json"
	"testing"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

// FuzzParse feeds the agent's decoding of a delivery (parse, which checks
// type, path, content type, size, depth and JSON, and reads the deadline)
// and its reading of the attempts header with what any client could
// publish. It must never panic, must refuse what a handler must not see,
// and must keep what it accepts within the limits.
func FuzzParse(f *testing.F) {
	f.Add(wire.TypeRequest, "/simple/echo", wire.ContentJSON, []byte(`{"a":[1,2]}`), wire.RequestExchange, "fred", int64(1700000000000), int64(2))
	f.Add(wire.TypePush, "", "", []byte(`[[[[[[[[[1]]]]]]]]]`), wire.ServiceExchange, "/a/b", int64(-1), int64(-1<<62))
	f.Add("warren.bogus", "/a/b", "application/xml", []byte(`<a/>`), "", "", int64(0), int64(1<<62))
	f.Add("", "no/slash", wire.ContentJSON, []byte(`"\"[{"`), wire.ServiceExchange, "/x/ y", int64(9e15), int64(0))
	f.Add(wire.TypeRequest, "/a/b", "", []byte("{\"a\":"), "", "", int64(-9e15), int64(7))
	tr := mem.New()
	defer tr.Close()
	a, err := New(tr, Config{Identity: "fuzz", MaxMessageSize: 256, MaxDepth: 8})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, typ, path, contentType string, body []byte, exchange, key string, deadline, attemptsHeader int64) {
		h := map[string]any{wire.HeaderAttempts: attemptsHeader, wire.HeaderDeadline: deadline}
		if path != "" {
			h[wire.HeaderPath] = path
		}
		d := &transport.Delivery{
			Message:    transport.Message{Type: typ, ContentType: contentType, Body: body, Headers: h},
			Exchange:   exchange,
			RoutingKey: key,
		}
		req, code, err := a.parse(d)
		if req == nil {
			t.Fatal("nil request")
		}
		if (err == nil) != (code == "") {
			t.Fatalf("error %v with code %q", err, code)
		}
		if n := attempts(h, a.cfg.MaxDeliveries); n < 0 || n > int64(a.cfg.MaxDeliveries) {
			t.Fatalf("attempts %d read from %d: outside 0..%d", n, attemptsHeader, a.cfg.MaxDeliveries)
		}
		if err != nil {
			if code != wire.CodeBadRequest {
				t.Fatalf("code %q for %v", code, err)
			}
			return
		}
		if deadline <= 0 {
			t.Fatalf("accepted a warren-deadline of %d", deadline)
		}
		if err := wire.CheckPath(req.Path); err != nil {
			t.Fatalf("accepted path %q: %v", req.Path, err)
		}
		if len(body) > a.cfg.MaxMessageSize {
			t.Fatalf("accepted %d bytes over the limit %d", len(body), a.cfg.MaxMessageSize)
		}
		if len(body) > 0 && !json.Valid(body) {
			t.Fatalf("accepted invalid JSON %q", body)
		}
		if err := wire.CheckDepth(body, a.cfg.MaxDepth); err != nil {
			t.Fatalf("accepted %q: %v", body, err)
		}
		if !req.Deadline.IsZero() && req.Deadline.UnixMilli() != deadline {
			t.Fatalf("deadline %v from header %d", req.Deadline, deadline)
		}
		if !req.Push {
			t.Fatalf("a delivery without reply-to parsed as a request: %+v", req)
		}
	})
}
