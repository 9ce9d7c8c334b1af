package transporttest

import (
	"time"

	"github.com/warrenrpc/warren/transport"
)

// death is one expected entry of the x-death header.
type death struct {
	queue, reason, exchange string
	keys                    []string
	count                   int64
	// originalExpiration is the per-message TTL in milliseconds that the
	// message had, "" when it had none.
	originalExpiration string
}

// deadLetterQueue declares a fanout exchange and a queue bound to it, and
// returns both names and a consumer on the queue.
func (e *env) deadLetterQueue(tr transport.Transport) (dlx, dlq string, c consumer) {
	dlx = e.exchange(tr, transport.Fanout)
	dlq = e.queue(tr, transport.Queue{})
	e.bind(tr, dlx, dlq, "")
	return dlx, dlq, e.consume(tr, dlq, transport.ConsumeOptions{Prefetch: 10})
}

// checkDeaths checks the dead-letter headers RabbitMQ adds: x-death, an
// array of tables, newest first, and x-first-death-*.
func (e *env) checkDeaths(d *transport.Delivery, since time.Time, first death, want ...death) {
	e.t.Helper()
	raw, ok := d.Headers["x-death"]
	if !ok {
		e.t.Fatalf("dead letter %q has no x-death header; headers %#v", d.Body, d.Headers)
	}
	deaths, ok := raw.([]any)
	if !ok || len(deaths) != len(want) {
		e.t.Fatalf("x-death = %#v (%T), want an array of %d tables", raw, raw, len(want))
	}
	for i, w := range want {
		entry, ok := deaths[i].(map[string]any)
		if !ok {
			e.t.Fatalf("x-death[%d] = %#v (%T), want map[string]any", i, deaths[i], deaths[i])
		}
		keys := make([]any, len(w.keys))
		for j, k := range w.keys {
			keys[j] = k
		}
		fields := map[string]any{
			"queue":        w.queue,
			"reason":       w.reason,
			"exchange":     w.exchange,
			"count":        w.count,
			"routing-keys": keys,
		}
		if w.originalExpiration != "" {
			fields["original-expiration"] = w.originalExpiration
		}
		for k, v := range fields {
			if !sameValue(entry[k], v) {
				e.t.Errorf("x-death[%d][%q] = %#v (%T), want %#v (%T)", i, k, entry[k], entry[k], v, v)
			}
		}
		tm, ok := entry["time"].(time.Time)
		if !ok || tm.Before(since.Add(-time.Second)) || tm.After(time.Now().Add(time.Second)) {
			e.t.Errorf("x-death[%d][\"time\"] = %#v, want a time.Time near now", i, entry["time"])
		}
		for k := range entry {
			if _, ok := fields[k]; !ok && k != "time" {
				e.t.Errorf("x-death[%d] has unexpected field %q = %#v", i, k, entry[k])
			}
		}
	}
	for k, v := range map[string]string{
		"x-first-death-queue":    first.queue,
		"x-first-death-reason":   first.reason,
		"x-first-death-exchange": first.exchange,
	} {
		if got := d.Headers[k]; got != v {
			e.t.Errorf("header %s = %#v, want %q", k, got, v)
		}
	}
	if d.Redelivered {
		e.t.Errorf("dead letter has Redelivered set")
	}
}

func nackWithoutRequeueDeadLetters(e *env) {
	tr := e.open()
	dlx, _, dc := e.deadLetterQueue(tr)
	q := e.queue(tr, transport.Queue{DeadLetterExchange: dlx})
	since := time.Now()
	e.publishMsg(tr, transport.DefaultExchange, q, transport.Message{
		Body: []byte("m1"), MessageID: "id-1", Headers: map[string]any{"app": "kept"},
	})
	c := e.consume(tr, q, transport.ConsumeOptions{})
	e.nack(e.recvBody(c, "m1"), false)
	d := e.recvBody(dc, "m1")
	e.ack(d)
	if d.Exchange != dlx || d.RoutingKey != q {
		e.t.Errorf("dead letter exchange %q key %q, want %q %q", d.Exchange, d.RoutingKey, dlx, q)
	}
	if d.MessageID != "id-1" || d.Headers["app"] != "kept" {
		e.t.Errorf("dead letter lost properties: MessageID %q, headers %#v", d.MessageID, d.Headers)
	}
	first := death{queue: q, reason: "rejected", exchange: "", keys: []string{q}, count: 1}
	e.checkDeaths(d, since, first, first)
	e.none(c)
}

func nackWithoutDLXDrops(e *env) {
	tr := e.open()
	q := e.queue(tr, transport.Queue{})
	// A dead-letter exchange that does not exist drops too.
	q2 := e.queue(tr, transport.Queue{DeadLetterExchange: e.name("missing")})
	for _, q := range []string{q, q2} {
		e.publish(tr, transport.DefaultExchange, q, "m1")
		c := e.consume(tr, q, transport.ConsumeOptions{})
		e.nack(e.recvBody(c, "m1"), false)
		e.closedAfter(c)
		e.equalStrings("queue after nack without requeue", e.contents(tr, q), nil)
	}
}

func queueTTLExpiresToDLX(e *env) {
	tr := e.open()
	dlx, _, dc := e.deadLetterQueue(tr)
	q := e.queue(tr, transport.Queue{MessageTTL: 100 * time.Millisecond, DeadLetterExchange: dlx})
	since := time.Now()
	e.publish(tr, transport.DefaultExchange, q, "m1")
	d := e.recvBody(dc, "m1")
	e.ack(d)
	if waited := time.Since(since); waited < 90*time.Millisecond {
		e.t.Errorf("expired after %v, want at least the 100ms TTL", waited)
	}
	first := death{queue: q, reason: "expired", exchange: "", keys: []string{q}, count: 1}
	e.checkDeaths(d, since, first, first)
	e.equalStrings("queue after expiry", e.contents(tr, q), nil)
}

func perMessageExpirationToDLX(e *env) {
	tr := e.open()
	dlx, _, dc := e.deadLetterQueue(tr)
	q := e.queue(tr, transport.Queue{DeadLetterExchange: dlx})
	since := time.Now()
	e.publishMsg(tr, transport.DefaultExchange, q, transport.Message{Body: []byte("m1"), Expiration: 150 * time.Millisecond})
	d := e.recvBody(dc, "m1")
	e.ack(d)
	if waited := time.Since(since); waited < 140*time.Millisecond {
		e.t.Errorf("expired after %v, want at least the 150ms expiration", waited)
	}
	if d.Expiration != 0 {
		e.t.Errorf("dead letter Expiration = %v, want 0 (moved to original-expiration)", d.Expiration)
	}
	first := death{queue: q, reason: "expired", exchange: "", keys: []string{q}, count: 1, originalExpiration: "150"}
	e.checkDeaths(d, since, first, first)

	// A message consumed in time does not expire.
	e.publishMsg(tr, transport.DefaultExchange, q, transport.Message{Body: []byte("m2"), Expiration: time.Minute})
	c := e.consume(tr, q, transport.ConsumeOptions{})
	e.ack(e.recvBody(c, "m2"))
}

func maxLengthDropsOrDeadLettersOldest(e *env) {
	tr := e.open()
	dlx, _, dc := e.deadLetterQueue(tr)
	q := e.queue(tr, transport.Queue{MaxLength: 2, DeadLetterExchange: dlx})
	since := time.Now()
	for _, m := range []string{"m1", "m2", "m3"} {
		e.publish(tr, transport.DefaultExchange, q, m)
	}
	d := e.recvBody(dc, "m1")
	e.ack(d)
	first := death{queue: q, reason: "maxlen", exchange: "", keys: []string{q}, count: 1}
	e.checkDeaths(d, since, first, first)
	e.none(dc)
	// contents adds a marker, which itself pushes out m2.
	e.equalStrings("queue at max length", e.contents(tr, q), []string{"m3"})

	// Unacknowledged messages do not count, only ready ones.
	q2 := e.queue(tr, transport.Queue{MaxLength: 1})
	e.publish(tr, transport.DefaultExchange, q2, "a")
	c := e.consume(tr, q2, transport.ConsumeOptions{})
	da := e.recvBody(c, "a")
	e.publish(tr, transport.DefaultExchange, q2, "b")
	e.publish(tr, transport.DefaultExchange, q2, "c")
	e.ack(da)
	e.ack(e.recvBody(c, "c"))
	e.none(c)
}

func deadLetterRoutingKey(e *env) {
	tr := e.open()
	dlx := e.exchange(tr, transport.Direct)
	dlq := e.queue(tr, transport.Queue{})
	e.bind(tr, dlx, dlq, "dead")
	q := e.queue(tr, transport.Queue{DeadLetterExchange: dlx, DeadLetterRoutingKey: "dead"})
	since := time.Now()
	e.publish(tr, transport.DefaultExchange, q, "m1")
	c := e.consume(tr, q, transport.ConsumeOptions{})
	e.nack(e.recvBody(c, "m1"), false)
	dc := e.consume(tr, dlq, transport.ConsumeOptions{})
	d := e.recvBody(dc, "m1")
	e.ack(d)
	if d.Exchange != dlx || d.RoutingKey != "dead" {
		e.t.Errorf("dead letter exchange %q key %q, want %q %q", d.Exchange, d.RoutingKey, dlx, "dead")
	}
	first := death{queue: q, reason: "rejected", exchange: "", keys: []string{q}, count: 1}
	e.checkDeaths(d, since, first, first)
}

// deadLetterCountIncrements sends a message around a cycle q1 -reject-> q2
// -expire-> q1 twice: a repeated death in the same queue for the same
// reason increments its x-death count and moves it to the front.
func deadLetterCountIncrements(e *env) {
	tr := e.open()
	x := e.exchange(tr, transport.Direct)
	q1 := e.queue(tr, transport.Queue{DeadLetterExchange: x, DeadLetterRoutingKey: "to2"})
	q2 := e.queue(tr, transport.Queue{MessageTTL: 100 * time.Millisecond, DeadLetterExchange: x, DeadLetterRoutingKey: "to1"})
	e.bind(tr, x, q2, "to2")
	e.bind(tr, x, q1, "to1")
	since := time.Now()
	e.publish(tr, transport.DefaultExchange, q1, "m")
	c := e.consume(tr, q1, transport.ConsumeOptions{})
	e.nack(e.recvBody(c, "m"), false)

	rejected := death{queue: q1, reason: "rejected", exchange: "", keys: []string{q1}, count: 1}
	expired := death{queue: q2, reason: "expired", exchange: x, keys: []string{"to2"}, count: 1}
	d := e.recvBody(c, "m")
	if d.Exchange != x || d.RoutingKey != "to1" {
		e.t.Errorf("second delivery exchange %q key %q, want %q %q", d.Exchange, d.RoutingKey, x, "to1")
	}
	e.checkDeaths(d, since, rejected, expired, rejected)
	e.nack(d, false)

	d = e.recvBody(c, "m")
	e.ack(d)
	rejected.count, expired.count = 2, 2
	e.checkDeaths(d, since, death{queue: q1, reason: "rejected", exchange: ""}, expired, rejected)
}

func quorumDeliveryLimit(e *env) {
	tr := e.open()
	dlx, _, dc := e.deadLetterQueue(tr)
	q := e.queue(tr, transport.Queue{Type: transport.Quorum, Durable: true, DeliveryLimit: 2, DeadLetterExchange: dlx})
	since := time.Now()
	e.publish(tr, transport.DefaultExchange, q, "m1")
	c := e.consume(tr, q, transport.ConsumeOptions{})
	// Delivered limit+1 times; x-delivery-count counts the returns.
	for i := range int64(3) {
		d := e.recvBody(c, "m1")
		count, has := d.Headers["x-delivery-count"]
		switch {
		case i == 0 && has:
			e.t.Errorf("first delivery has x-delivery-count %#v", count)
		case i > 0 && !sameValue(count, i):
			e.t.Errorf("delivery %d: x-delivery-count = %#v (%T), want int64(%d)", i+1, count, count, i)
		}
		if d.Redelivered != (i > 0) {
			e.t.Errorf("delivery %d: Redelivered = %v", i+1, d.Redelivered)
		}
		e.nack(d, true)
	}
	d := e.recvBody(dc, "m1")
	e.ack(d)
	if _, has := d.Headers["x-delivery-count"]; has {
		e.t.Errorf("dead letter carries x-delivery-count %#v", d.Headers["x-delivery-count"])
	}
	first := death{queue: q, reason: "delivery_limit", exchange: "", keys: []string{q}, count: 1}
	e.checkDeaths(d, since, first, first)
	e.none(c)

	// A consumer that goes away unsettled counts as a return too.
	e.publish(tr, transport.DefaultExchange, q, "m2")
	e.recvBody(c, "m2")
	c.cancel()
	e.closed(c)
	c2 := e.consume(tr, q, transport.ConsumeOptions{})
	d = e.recvBody(c2, "m2")
	if !sameValue(d.Headers["x-delivery-count"], int64(1)) || !d.Redelivered {
		e.t.Errorf("after consumer cancel: x-delivery-count %#v, Redelivered %v; want int64(1), true", d.Headers["x-delivery-count"], d.Redelivered)
	}
	e.ack(d)
}
