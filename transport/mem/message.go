package mem

import (
	"bytes"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/warrenrpc/warren/transport"
)

// message is a published message as the broker keeps it. It is immutable
// once built, so every queue it was routed to shares it and consumers read
// it without locks.
type message struct {
	// msg.Expiration is the per-message TTL as it travels on the wire,
	// whole milliseconds (see ttl).
	msg      transport.Message
	exchange string
	key      string

	// first is the queue entry of the first queue the message is routed
	// to, allocated with it: most messages go to one queue.
	first qmsg
	// firstSettlement is the Delivery and settlement of first's first
	// delivery, allocated with the message; used and guarded as first is.
	firstSettlement settlement

	// The flags together, after the rest: a message is two of the
	// broker's allocations per round trip, and this keeps it in the
	// 576-byte size class.
	firstUsed bool // set by the one goroutine that enqueues the message
	// sole is set, before the message is enqueued, when it is routed to
	// one queue only: an AutoAck consumer then takes the broker's own copy,
	// since once delivered nothing else can read it.
	sole bool
	// sharedHeaders is set when msg.Headers is the publisher's own map,
	// which it may still read: every consumer gets a copy.
	sharedHeaders  bool
	firstDelivered bool // guarded as first is
}

// ttl is the per-message expiration in milliseconds, -1 when none.
func (m *message) ttl() int64 {
	if m.msg.Expiration <= 0 {
		return -1
	}
	return int64(m.msg.Expiration / time.Millisecond)
}

// newMessage copies msg into a message the broker owns, normalised as an
// AMQP 0-9-1 round trip through amqp091-go would normalise it.
func newMessage(exchange, key string, msg transport.Message) (*message, error) {
	m := &message{exchange: exchange, key: key, msg: msg}
	m.msg.Body = bytes.Clone(msg.Body)
	switch {
	case msg.Headers == nil:
	case normal(msg.Headers, 1):
		// Already as amqp091-go would decode it: kept as it is, not
		// copied (transport.Message.Headers: the publisher does not
		// modify it any more). Deliveries get copies of their own.
		m.sharedHeaders = true
	default:
		h, err := normTable(msg.Headers)
		if err != nil {
			return nil, err
		}
		m.msg.Headers = unreadable(h)
	}
	if !msg.Timestamp.IsZero() {
		m.msg.Timestamp = time.Unix(msg.Timestamp.Unix(), 0).UTC()
	}
	switch {
	case msg.Expiration < 0:
		return nil, fmt.Errorf("mem: negative Expiration %v", msg.Expiration)
	case msg.Expiration > transport.MaxExpiration:
		return nil, fmt.Errorf("mem: expiration %v is over the limit of %v (2^32-1 ms, RabbitMQ's)", msg.Expiration, transport.MaxExpiration)
	case msg.Expiration > 0:
		// Milliseconds on the wire, rounded up: never sooner than asked.
		m.msg.Expiration = (msg.Expiration + time.Millisecond - 1) / time.Millisecond * time.Millisecond
	}
	return m, nil
}

// normal reports whether h, a table at depth (1 for the headers), is
// normalised already (normTable would return an equal table) and readable
// (unreadable would remove nothing), without allocating. Times are not
// checked: a table holding one is not normal.
func normal(h map[string]any, depth int) bool {
	if container(depth, len(h)) != "" {
		return false
	}
	for _, v := range h {
		if !normalValue(v, depth+1) {
			return false
		}
	}
	return true
}

func normalValue(v any, depth int) bool {
	switch x := v.(type) {
	case nil, string, bool, int32, int64, float64:
		return true
	case []byte:
		return x != nil
	case []any:
		if container(depth, len(x)) != "" {
			return false
		}
		for _, e := range x {
			if !normalValue(e, depth+1) {
				return false
			}
		}
		return true
	case map[string]any:
		return normal(x, depth)
	}
	return false
}

// normTable returns a deep copy of h with every value converted to the Go
// type amqp091-go decodes it as (see transport.Message.Headers).
func normTable(h map[string]any) (map[string]any, error) {
	out := make(map[string]any, len(h))
	for k, v := range h {
		nv, err := normValue(v)
		if err != nil {
			return nil, fmt.Errorf("mem: header %q: %w", k, err)
		}
		out[k] = nv
	}
	return out, nil
}

func normValue(v any) (any, error) {
	switch x := v.(type) {
	case nil, string, bool, int32, int64, float64:
		return x, nil
	case []byte:
		if x == nil {
			return []byte{}, nil
		}
		return bytes.Clone(x), nil
	case int:
		return int64(x), nil
	case int8:
		return int64(x), nil
	case int16:
		return int64(x), nil
	case uint:
		if uint64(x) > math.MaxInt64 {
			return nil, fmt.Errorf("integer %d overflows int64", x)
		}
		return int64(x), nil
	case uint8:
		return int64(x), nil
	case uint16:
		return int64(x), nil
	case uint32:
		return int64(x), nil
	case uint64:
		if x > math.MaxInt64 {
			return nil, fmt.Errorf("integer %d overflows int64", x)
		}
		return int64(x), nil
	case float32:
		return float64(x), nil
	case time.Time:
		return time.Unix(x.Unix(), 0), nil
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			ne, err := normValue(e)
			if err != nil {
				return nil, err
			}
			out[i] = ne
		}
		return out, nil
	case map[string]any:
		return normTable(x)
	default:
		return nil, fmt.Errorf("unsupported header value type %T", v)
	}
}

// copyTable deep-copies a normalised table so that a consumer owns what it
// receives.
func copyTable(h map[string]any, extra int) map[string]any {
	out := make(map[string]any, len(h)+extra)
	for k, v := range h {
		out[k] = copyValue(v)
	}
	return out
}

func copyValue(v any) any {
	switch x := v.(type) {
	case []byte:
		return bytes.Clone(x)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = copyValue(e)
		}
		return out
	case map[string]any:
		return copyTable(x, 0)
	default:
		return v
	}
}

// Dead-letter reasons, as RabbitMQ writes them in x-death.
const (
	reasonRejected      = "rejected"
	reasonExpired       = "expired"
	reasonMaxLen        = "maxlen"
	reasonDeliveryLimit = "delivery_limit"
)

// deadLetter is a message leaving a queue for its dead-letter exchange.
type deadLetter struct {
	m      *message
	reason string
	queue  string
	dlx    string
	dlrk   string // "" keeps the message's routing key
}

// build returns the message republished to the dead-letter exchange, with
// the headers RabbitMQ 3.10 adds (rabbit_dead_letter:make_msg): an x-death
// entry per (queue, reason), newest first, whose count grows on a repeated
// death, x-first-death-* on the first death, and the per-message expiration
// moved into x-death as original-expiration.
func (d deadLetter) build(now time.Time) *message {
	old := d.m
	nm := &message{exchange: d.dlx, key: old.key, msg: old.msg}
	if d.dlrk != "" {
		nm.key = d.dlrk
	}
	nm.msg.Expiration = 0
	h := copyTable(old.msg.Headers, 4)
	info := map[string]any{
		"count":        int64(1),
		"reason":       d.reason,
		"queue":        d.queue,
		"time":         time.Unix(now.Unix(), 0),
		"exchange":     old.exchange,
		"routing-keys": []any{old.key},
	}
	if ttl := old.ttl(); ttl >= 0 {
		info["original-expiration"] = strconv.FormatInt(ttl, 10)
	}
	switch deaths := h["x-death"].(type) {
	case nil:
		h["x-death"] = []any{info}
		h["x-first-death-exchange"] = old.exchange
		h["x-first-death-reason"] = d.reason
		h["x-first-death-queue"] = d.queue
	case []any:
		first := info
		match := -1
		for i, e := range deaths {
			if t, ok := e.(map[string]any); ok && t["queue"] == d.queue && t["reason"] == d.reason {
				t["count"] = deathCount(t["count"]) + 1
				first, match = t, i
				break
			}
		}
		out := make([]any, 0, len(deaths)+1)
		out = append(out, first)
		for i, e := range deaths {
			if i != match {
				out = append(out, e)
			}
		}
		h["x-death"] = out
	}
	nm.msg.Headers = h
	return nm
}

func deathCount(v any) int64 {
	switch n := v.(type) {
	case int64:
		return n
	case int32:
		return int64(n)
	}
	return 0
}

// isCycle reports whether dead-lettering m into queue closes a fully
// automatic cycle, one with no rejection in it, which RabbitMQ breaks by
// dropping the message (rabbit_dead_letter:is_cycle).
func isCycle(queue string, m *message) bool {
	deaths, _ := m.msg.Headers["x-death"].([]any)
	for i, e := range deaths {
		t, ok := e.(map[string]any)
		if !ok {
			return false
		}
		if t["queue"] != queue {
			continue
		}
		for _, e := range deaths[:i+1] {
			t, ok := e.(map[string]any)
			if !ok || t["reason"] == reasonRejected {
				return false
			}
		}
		return true
	}
	return false
}

// What amqp091-go v1.16.0 refuses to read: a table or array nested deeper
// than maxDepth, or holding more than maxEntries entries. RabbitMQ takes
// such headers, and transport/amqp delivers the message with them removed
// and transport.HeaderMalformed set; so does the embedded broker.
const (
	maxDepth   = 32
	maxEntries = 8192
)

// unreadable returns h without the headers that an AMQP consumer on
// amqp091-go could not read, with transport.HeaderMalformed saying which,
// as transport/amqp delivers them; h itself when all are readable.
func unreadable(h map[string]any) map[string]any {
	if readable(h) {
		return h
	}
	var removed []string
	keys := slices.Sorted(maps.Keys(h))
	for _, k := range keys {
		if why := tooDeep(h[k], 1); why != "" {
			removed = append(removed, fmt.Sprintf("%q (%s)", k, why))
			delete(h, k)
		}
	}
	if len(h) > maxEntries {
		keys = slices.Sorted(maps.Keys(h))
		for _, k := range keys[maxEntries-1:] {
			delete(h, k)
		}
		removed = append(removed, fmt.Sprintf("entries beyond %d (more than amqp091 reads)", maxEntries-1))
	}
	if len(removed) == 0 {
		return h
	}
	h[transport.HeaderMalformed] = "headers removed: " + strings.Join(removed, ", ")
	return h
}

// readable reports whether amqp091 reads all of h, without allocating.
func readable(h map[string]any) bool {
	if len(h) > maxEntries {
		return false
	}
	for _, v := range h {
		if tooDeep(v, 1) != "" {
			return false
		}
	}
	return true
}

// tooDeep says why amqp091 would refuse v, a value at depth (the depth of
// the table or array holding it plus one), or "".
func tooDeep(v any, depth int) string {
	switch x := v.(type) {
	case map[string]any:
		if why := container(depth, len(x)); why != "" {
			return why
		}
		for _, e := range x {
			if why := tooDeep(e, depth+1); why != "" {
				return why
			}
		}
	case []any:
		if why := container(depth, len(x)); why != "" {
			return why
		}
		for _, e := range x {
			if why := tooDeep(e, depth+1); why != "" {
				return why
			}
		}
	}
	return ""
}

func container(depth, n int) string {
	switch {
	case depth > maxDepth:
		return fmt.Sprintf("nested deeper than %d levels", maxDepth)
	case n > maxEntries:
		return fmt.Sprintf("more than %d entries", maxEntries)
	}
	return ""
}
