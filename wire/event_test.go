package wire

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/transport"
)

func TestCheckEventKeyAndPattern(t *testing.T) {
	tests := []struct {
		s            string
		key, pattern bool
	}{
		{"file", true, true},
		{"file.encrypt", true, true},
		{"a.b.c.d", true, true},
		{"fichier.chiffré", true, true},
		{"*", false, true},
		{"#", false, true},
		{"file.*", false, true},
		{"#.log", false, true},
		{"a.#.b.*", false, true},
		{"", false, false},
		{".", false, false},
		{"a..b", false, false},
		{".a", false, false},
		{"a.", false, false},
		{"a b", false, false},
		{"a\tb", false, false},
		{"a\x1bb", false, false},
		{"a*", false, false},
		{"a.b#", false, false},
		{"**", false, false},
		{"\xff", false, false},
		{strings.Repeat("a", 255), true, true},
		{strings.Repeat("a", 256), false, false},
	}
	for _, tc := range tests {
		if err := CheckEventKey(tc.s); (err == nil) != tc.key || (err != nil && !errors.Is(err, ErrInvalidEventKey)) {
			t.Errorf("CheckEventKey(%q) = %v, want ok %v", tc.s, err, tc.key)
		}
		if err := CheckEventPattern(tc.s); (err == nil) != tc.pattern || (err != nil && !errors.Is(err, ErrInvalidEventPattern)) {
			t.Errorf("CheckEventPattern(%q) = %v, want ok %v", tc.s, err, tc.pattern)
		}
	}
}

func TestEventRoundTrip(t *testing.T) {
	msg := NewEvent("file.encrypt", "web-1", "id1", []byte(`{"f":1}`), time.Minute)
	if msg.Type != TypeEvent || msg.AppID != "web-1" || msg.MessageID != "id1" || msg.ContentType != ContentJSON || msg.Expiration <= 0 {
		t.Fatalf("event %+v", msg)
	}
	d := &transport.Delivery{Message: msg, Exchange: EventExchange, RoutingKey: "file.encrypt"}
	ev, err := ReadEvent(d)
	if err != nil || ev.Key != "file.encrypt" || time.Until(ev.Deadline) <= 0 {
		t.Fatalf("ReadEvent = %+v, %v", ev, err)
	}
	if m := NewEvent("k", "p", "i", nil, 0); m.Expiration != 0 || m.Headers[HeaderDeadline] != nil {
		t.Errorf("event without TTL has a deadline: %+v", m)
	}
	bad := []transport.Delivery{
		{Message: transport.Message{Type: TypeRequest}, RoutingKey: "a"},
		{Message: transport.Message{Type: TypeEvent}, RoutingKey: "a..b"},
		{Message: transport.Message{Type: TypeEvent, ContentType: "text/plain"}, RoutingKey: "a"},
		{Message: transport.Message{Headers: map[string]any{HeaderDeadline: "soon"}}, RoutingKey: "a"},
		{Message: transport.Message{Headers: map[string]any{transport.HeaderMalformed: "x"}}, RoutingKey: "a"},
	}
	for _, d := range bad {
		if _, err := ReadEvent(&d); err == nil {
			t.Errorf("ReadEvent(%+v) accepted", d)
		}
	}
}
