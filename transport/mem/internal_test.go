package mem

import (
	"strings"
	"testing"
	"time"
	"unsafe"
)

func TestTopicMatch(t *testing.T) {
	// Expectations checked against RabbitMQ 3.10.
	tests := []struct {
		pattern, key string
		want         bool
	}{
		{"#", "", true},
		{"#", "a.b.c", true},
		{"*", "", false},
		{"*", "a", true},
		{"*", "a.b", false},
		{"*", ".", false},
		{"*.*", ".", true},
		{"a.#", "a", true},
		{"a.#", "a.", true},
		{"a.#", "ab", false},
		{"a.*", "a.", true},
		{"a.*", "a", false},
		{"#.b", ".b", true},
		{"#.b", "b", true},
		{"a.#.b", "a.b", true},
		{"a.#.b", "a.x.y.b", true},
		{"a.#.b", "a.x.y.c", false},
		{"a.*.#", "a", false},
		{"a.*.#", "a.b", true},
		{"#.#", "", true},
		{"", "", true},
		{"", "a", false},
		{"a.b", "a.b", true},
		{"a.b", "a.b.c", false},
	}
	for _, tc := range tests {
		if got := topicMatch(splitTopic(tc.pattern), splitTopic(tc.key)); got != tc.want {
			t.Errorf("topicMatch(%q, %q) = %v, want %v", tc.pattern, tc.key, got, tc.want)
		}
	}
}

func TestNormValue(t *testing.T) {
	ts := time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC)
	tests := []struct {
		in, want any
	}{
		{int(1), int64(1)},
		{int8(-2), int64(-2)},
		{uint32(3), int64(3)},
		{float32(0.5), float64(0.5)},
		{int32(4), int32(4)},
		{ts, time.Unix(ts.Unix(), 0)},
		{[]any{uint8(1)}, []any{int64(1)}},
		{map[string]any{"k": uint16(2)}, map[string]any{"k": int64(2)}},
		{[]byte(nil), []byte{}},
	}
	for _, tc := range tests {
		got, err := normValue(tc.in)
		if err != nil {
			t.Errorf("normValue(%#v): %v", tc.in, err)
			continue
		}
		if !equalValue(got, tc.want) {
			t.Errorf("normValue(%#v) = %#v, want %#v", tc.in, got, tc.want)
		}
	}
	for _, bad := range []any{struct{}{}, uint64(1 << 63), []any{complex(1, 1)}, map[string]any{"x": []int{1}}} {
		if _, err := normValue(bad); err == nil {
			t.Errorf("normValue(%#v) = nil error, want one", bad)
		}
	}
}

func equalValue(a, b any) bool {
	switch x := a.(type) {
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !equalValue(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k := range x {
			if !equalValue(x[k], y[k]) {
				return false
			}
		}
		return true
	case []byte:
		y, ok := b.([]byte)
		return ok && string(x) == string(y) && (x == nil) == (y == nil)
	case time.Time:
		y, ok := b.(time.Time)
		return ok && x.Equal(y)
	}
	return a == b
}

// TestDeadLetterHeaders follows a message through three deaths: the x-death
// entry of a repeated (queue, reason) counts up and moves to the front, and
// x-first-death-* keep the first.
func TestDeadLetterHeaders(t *testing.T) {
	now := time.Unix(1700000000, 0)
	m := &message{exchange: "", key: "q1"}
	m.msg.Headers = map[string]any{"app": "x"}
	m.msg.Expiration = 250 * time.Millisecond

	m1 := deadLetter{m: m, reason: reasonExpired, queue: "q1", dlx: "dlx"}.build(now)
	if m1.exchange != "dlx" || m1.key != "q1" || m1.msg.Expiration != 0 || m1.ttl() != -1 {
		t.Fatalf("first dead letter: exchange %q key %q expiration %v ttl %d", m1.exchange, m1.key, m1.msg.Expiration, m1.ttl())
	}
	m2 := deadLetter{m: m1, reason: reasonRejected, queue: "q2", dlx: "dlx2", dlrk: "to-q1"}.build(now)
	m3 := deadLetter{m: m2, reason: reasonExpired, queue: "q1", dlx: "dlx"}.build(now.Add(time.Second))

	deaths := m3.msg.Headers["x-death"].([]any)
	if len(deaths) != 2 {
		t.Fatalf("x-death has %d entries, want 2: %#v", len(deaths), deaths)
	}
	first, second := deaths[0].(map[string]any), deaths[1].(map[string]any)
	want0 := map[string]any{
		"count": int64(2), "reason": "expired", "queue": "q1", "exchange": "",
		"routing-keys": []any{"q1"}, "time": now, "original-expiration": "250",
	}
	want1 := map[string]any{
		"count": int64(1), "reason": "rejected", "queue": "q2", "exchange": "dlx",
		"routing-keys": []any{"q1"}, "time": now,
	}
	if !equalValue(first, want0) {
		t.Errorf("x-death[0] = %#v, want %#v", first, want0)
	}
	if !equalValue(second, want1) {
		t.Errorf("x-death[1] = %#v, want %#v", second, want1)
	}
	for k, v := range map[string]string{"x-first-death-queue": "q1", "x-first-death-reason": "expired", "x-first-death-exchange": ""} {
		if m3.msg.Headers[k] != v {
			t.Errorf("%s = %#v, want %q", k, m3.msg.Headers[k], v)
		}
	}
	if m3.msg.Headers["app"] != "x" {
		t.Errorf("application header lost: %#v", m3.msg.Headers)
	}
	// The earlier messages are untouched.
	if d := m1.msg.Headers["x-death"].([]any)[0].(map[string]any); d["count"] != int64(1) {
		t.Errorf("building a later dead letter changed an earlier one: %#v", d)
	}
	if _, ok := m.msg.Headers["x-death"]; ok {
		t.Errorf("the original message got x-death")
	}
}

func TestIsCycle(t *testing.T) {
	entry := func(q, reason string) any { return map[string]any{"queue": q, "reason": reason} }
	msg := func(deaths ...any) *message {
		m := &message{}
		m.msg.Headers = map[string]any{"x-death": deaths}
		return m
	}
	tests := []struct {
		name  string
		queue string
		m     *message
		want  bool
	}{
		{"no deaths", "q1", &message{}, false},
		{"queue not in deaths", "q3", msg(entry("q2", "expired"), entry("q1", "expired")), false},
		{"automatic cycle", "q1", msg(entry("q2", "expired"), entry("q1", "expired")), true},
		{"rejection in cycle", "q1", msg(entry("q2", "expired"), entry("q1", "rejected")), false},
		{"queue dead-letters to itself", "q2", msg(entry("q2", "expired"), entry("q1", "rejected")), true},
		{"unexpected entry", "q1", msg("junk", entry("q1", "expired")), false},
	}
	for _, tc := range tests {
		if got := isCycle(tc.queue, tc.m); got != tc.want {
			t.Errorf("%s: isCycle = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestRingInsertKeepsSeqOrder(t *testing.T) {
	var r ring
	for _, s := range []uint64{2, 4, 6, 8} {
		r.pushBack(&qmsg{seq: s})
	}
	r.popFront() // head moves, so inserts wrap around
	for _, s := range []uint64{1, 5, 9, 3} {
		r.insert(&qmsg{seq: s})
	}
	var got []string
	for r.len() > 0 {
		got = append(got, string(rune('0'+r.popFront().seq)))
	}
	if s := strings.Join(got, ""); s != "1345689" {
		t.Errorf("ring order %s, want 1345689", s)
	}
}

// A message, two per round trip, stays in the 576-byte size class (with
// the 8-byte header of an object over 512 bytes that holds pointers): one
// field more and it is 640.
func TestMessageSize(t *testing.T) {
	if n := unsafe.Sizeof(message{}); n+8 > 576 {
		t.Errorf("message is %d bytes, with its malloc header over the 576-byte size class", n)
	}
}
