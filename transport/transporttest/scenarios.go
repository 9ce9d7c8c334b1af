package transporttest

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/warrenrpc/warren/transport"
)

// scenarios in the order they run; the serial ones run first, alone.
var scenarios = []scenario{
	{name: "PersistenceAcrossRestart", fn: persistenceAcrossRestart, serial: true},

	{name: "PropertiesRoundTrip", fn: propertiesRoundTrip},
	{name: "EmptyMessageRoundTrip", fn: emptyMessageRoundTrip},
	{name: "LargeBodyRoundTrip", fn: largeBodyRoundTrip},
	{name: "ExpirationLimit", fn: expirationLimit},
	{name: "CancelledContextFails", fn: cancelledContextFails},
	{name: "DefaultExchangeRoutesByQueueName", fn: defaultExchangeRoutesByQueueName},
	{name: "DirectRouting", fn: directRouting},
	{name: "FanoutToAllBoundQueues", fn: fanoutToAllBoundQueues},
	{name: "PublishedHeadersKept", fn: publishedHeadersKept},
	{name: "TopicWildcards", fn: topicWildcards},
	{name: "ServerNamedQueue", fn: serverNamedQueue},
	{name: "MandatoryUnroutable", fn: mandatoryUnroutable},
	{name: "UnconfirmedReturned", fn: unconfirmedReturned},
	{name: "UnconfirmedChannelBreak", fn: unconfirmedChannelBreak},
	{name: "ConfirmedPublish", fn: confirmedPublish},
	{name: "PublishToMissingExchange", fn: publishToMissingExchange},
	{name: "UnreadableHeadersDelivered", fn: unreadableHeadersDelivered},

	{name: "CompetingConsumersRoundRobin", fn: competingConsumersRoundRobin},
	{name: "PrefetchBoundsUnacked", fn: prefetchBoundsUnacked},
	{name: "UnackedRedeliveredOnConsumerCancel", fn: unackedRedeliveredOnConsumerCancel},
	{name: "UnackedRedeliveredOnClose", fn: unackedRedeliveredOnClose},
	{name: "NackRequeue", fn: nackRequeue},
	{name: "RequeueOrder", fn: requeueOrder},
	{name: "AutoAckNotRedelivered", fn: autoAckNotRedelivered},
	{name: "AckTwiceErrAlreadySettled", fn: ackTwiceErrAlreadySettled},
	{name: "ExclusiveConsumer", fn: exclusiveConsumer},
	{name: "ExclusiveConsumerQuorum", fn: exclusiveConsumerQuorum},
	{name: "ConsumeCtxCancelClosesChannel", fn: consumeCtxCancelClosesChannel},
	{name: "DeleteQueueEndsConsumer", fn: deleteQueueEndsConsumer},
	{name: "ConcurrentPublishConsume", fn: concurrentPublishConsume},

	{name: "NackWithoutRequeueDeadLetters", fn: nackWithoutRequeueDeadLetters},
	{name: "NackWithoutDLXDrops", fn: nackWithoutDLXDrops},
	{name: "QueueTTLExpiresToDLX", fn: queueTTLExpiresToDLX},
	{name: "PerMessageExpirationToDLX", fn: perMessageExpirationToDLX},
	{name: "MaxLengthDropsOrDeadLettersOldest", fn: maxLengthDropsOrDeadLettersOldest},
	{name: "DeadLetterRoutingKey", fn: deadLetterRoutingKey},
	{name: "DeadLetterCountIncrements", fn: deadLetterCountIncrements},
	{name: "QuorumDeliveryLimit", fn: quorumDeliveryLimit},

	{name: "ExclusiveQueueDeletedOnClose", fn: exclusiveQueueDeletedOnClose},
	{name: "ExclusiveQueueOtherConnection", fn: exclusiveQueueOtherConnection},
	{name: "AutoDeleteQueueGoesWithLastConsumer", fn: autoDeleteQueueGoesWithLastConsumer},
	{name: "AutoDeleteExchangeGoesWithLastBinding", fn: autoDeleteExchangeGoesWithLastBinding},
	{name: "QueueExpiresWhenUnused", fn: queueExpiresWhenUnused},
	{name: "InspectQueue", fn: inspectQueue},
	{name: "DeclareIdempotent", fn: declareIdempotent},
	{name: "DeclareConflictIsPrecondition", fn: declareConflictIsPrecondition},
	{name: "ReservedNamesRefused", fn: reservedNamesRefused},
	{name: "ConsumeMissingQueueNotFound", fn: consumeMissingQueueNotFound},
	{name: "DeleteQueueDropsMessages", fn: deleteQueueDropsMessages},
	{name: "ConcurrentClose", fn: concurrentClose},
	{name: "OperationsAfterCloseErrClosed", fn: operationsAfterCloseErrClosed},
}

// sameValue compares header values by type and value, times by instant.
func sameValue(got, want any) bool {
	switch w := want.(type) {
	case time.Time:
		g, ok := got.(time.Time)
		return ok && g.Equal(w)
	case []byte:
		g, ok := got.([]byte)
		return ok && bytes.Equal(g, w)
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return false
		}
		for i := range w {
			if !sameValue(g[i], w[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok || len(g) != len(w) {
			return false
		}
		for k, v := range w {
			if gv, ok := g[k]; !ok || !sameValue(gv, v) {
				return false
			}
		}
		return true
	default:
		return got == want
	}
}

func propertiesRoundTrip(e *env) {
	tr := e.open()
	q := e.queue(tr, transport.Queue{})
	ts := time.Unix(1700000000, 0)
	msg := transport.Message{
		Body:            []byte{0, 1, 2, 0xff, 'x'},
		ContentType:     "application/json",
		ContentEncoding: "gzip",
		Headers: map[string]any{
			"string":  "värde",
			"bytes":   []byte{0, 1, 0xfe},
			"true":    true,
			"false":   false,
			"int32":   int32(-7),
			"int64":   int64(1) << 40,
			"int":     42,        // other integers arrive as int64
			"uint16":  uint16(7), // likewise
			"float64": 1.25,      //
			"time":    ts.Add(999 * time.Millisecond),
			"array":   []any{"a", int64(1), true, []any{"nested"}},
			"table": map[string]any{
				"k":      "v",
				"n":      int32(3),
				"nested": map[string]any{"list": []any{int64(2), "b"}},
			},
		},
		MessageID:     "id-1",
		CorrelationID: "corr-1",
		ReplyTo:       "reply.queue",
		Type:          "test.type",
		AppID:         "transporttest",
		Timestamp:     ts.Add(123456789 * time.Nanosecond),
		Expiration:    time.Minute,
		Persistent:    true,
		Priority:      5,
	}
	e.publishMsg(tr, transport.DefaultExchange, q, msg)
	c := e.consume(tr, q, transport.ConsumeOptions{Tag: "wt-props-tag"})
	d := e.recv(c)
	defer e.ack(d)

	wantHeaders := map[string]any{
		"string":  "värde",
		"bytes":   []byte{0, 1, 0xfe},
		"true":    true,
		"false":   false,
		"int32":   int32(-7),
		"int64":   int64(1) << 40,
		"int":     int64(42),
		"uint16":  int64(7),
		"float64": 1.25,
		"time":    ts, // second resolution
		"array":   []any{"a", int64(1), true, []any{"nested"}},
		"table": map[string]any{
			"k":      "v",
			"n":      int32(3),
			"nested": map[string]any{"list": []any{int64(2), "b"}},
		},
	}
	for k, want := range wantHeaders {
		got, ok := d.Headers[k]
		if !ok {
			e.t.Errorf("header %q missing", k)
			continue
		}
		if !sameValue(got, want) {
			e.t.Errorf("header %q = %#v (%T), want %#v (%T)", k, got, got, want, want)
		}
	}
	for k := range d.Headers {
		if _, ok := wantHeaders[k]; !ok {
			e.t.Errorf("unexpected header %q = %#v", k, d.Headers[k])
		}
	}
	checks := []struct {
		field     string
		got, want any
	}{
		{"Body", string(d.Body), string(msg.Body)},
		{"ContentType", d.ContentType, msg.ContentType},
		{"ContentEncoding", d.ContentEncoding, msg.ContentEncoding},
		{"MessageID", d.MessageID, msg.MessageID},
		{"CorrelationID", d.CorrelationID, msg.CorrelationID},
		{"ReplyTo", d.ReplyTo, msg.ReplyTo},
		{"Type", d.Type, msg.Type},
		{"AppID", d.AppID, msg.AppID},
		{"Timestamp.Unix", d.Timestamp.Unix(), ts.Unix()},
		{"Timestamp.Nanosecond", d.Timestamp.Nanosecond(), 0},
		{"Expiration", d.Expiration, time.Minute},
		{"Persistent", d.Persistent, true},
		{"Priority", d.Priority, uint8(5)},
		{"Exchange", d.Exchange, transport.DefaultExchange},
		{"RoutingKey", d.RoutingKey, q},
		{"Redelivered", d.Redelivered, false},
		{"ConsumerTag", d.ConsumerTag, "wt-props-tag"},
	}
	for _, c := range checks {
		if c.got != c.want {
			e.t.Errorf("%s = %#v, want %#v", c.field, c.got, c.want)
		}
	}
}

func emptyMessageRoundTrip(e *env) {
	tr := e.open()
	q := e.queue(tr, transport.Queue{})
	e.publishMsg(tr, transport.DefaultExchange, q, transport.Message{})
	c := e.consume(tr, q, transport.ConsumeOptions{})
	d := e.recv(c)
	e.ack(d)
	if len(d.Body) != 0 || len(d.Headers) != 0 || d.ContentType != "" || d.MessageID != "" ||
		d.CorrelationID != "" || d.ReplyTo != "" || d.Type != "" || d.AppID != "" ||
		!d.Timestamp.IsZero() || d.Expiration != 0 || d.Persistent || d.Priority != 0 {
		e.t.Errorf("empty message came back with fields set: %+v", d.Message)
	}
	if d.ConsumerTag == "" {
		e.t.Errorf("ConsumerTag empty: the transport must pick one")
	}
	// Expiration travels in whole milliseconds, rounded up.
	for _, tc := range []struct{ sent, want time.Duration }{
		{2500 * time.Microsecond, 3 * time.Millisecond},
		{time.Nanosecond, time.Millisecond},
	} {
		e.publishMsg(tr, transport.DefaultExchange, q, transport.Message{Expiration: tc.sent + time.Hour})
		d := e.recv(c)
		e.ack(d)
		if d.Expiration != tc.want+time.Hour {
			e.t.Errorf("Expiration %v came back as %v, want %v", tc.sent+time.Hour, d.Expiration, tc.want+time.Hour)
		}
	}
}

// expirationLimit: an expiration of MaxExpiration is taken; a longer one
// is refused before anything is sent (RabbitMQ would close the channel).
func expirationLimit(e *env) {
	tr := e.open()
	q := e.queue(tr, transport.Queue{})
	c := e.consume(tr, q, transport.ConsumeOptions{})
	err := tr.Publish(e.ctx(), transport.DefaultExchange, q, transport.Message{Body: []byte("over"), Expiration: transport.MaxExpiration + time.Millisecond}, transport.PublishOptions{Confirm: true})
	if err == nil {
		e.t.Errorf("an expiration over MaxExpiration was taken")
	}
	e.publishMsg(tr, transport.DefaultExchange, q, transport.Message{Body: []byte("max"), Expiration: transport.MaxExpiration})
	d := e.recv(c)
	e.ack(d)
	if string(d.Body) != "max" || d.Expiration != transport.MaxExpiration {
		e.t.Errorf("got %q with expiration %v, want \"max\" with %v", d.Body, d.Expiration, transport.MaxExpiration)
	}
	e.none(c)
}

func largeBodyRoundTrip(e *env) {
	tr := e.open()
	q := e.queue(tr, transport.Queue{})
	body := make([]byte, 1<<20+17) // more than one AMQP frame
	for i := range body {
		body[i] = byte(i * 7)
	}
	e.publishMsg(tr, transport.DefaultExchange, q, transport.Message{Body: body})
	c := e.consume(tr, q, transport.ConsumeOptions{})
	d := e.recv(c)
	e.ack(d)
	if !bytes.Equal(d.Body, body) {
		e.t.Fatalf("body of %d bytes came back as %d bytes, different", len(body), len(d.Body))
	}
}

// cancelledContextFails: every method given a context that has already
// ended fails with its error.
func cancelledContextFails(e *env) {
	tr := e.open()
	q := e.queue(tr, transport.Queue{})
	ctx, cancel := context.WithCancel(e.ctx())
	cancel()
	qname := e.name("q")
	e.track(qname)
	_, declareErr := tr.DeclareQueue(ctx, transport.Queue{Name: qname})
	_, consumeErr := tr.Consume(ctx, q, transport.ConsumeOptions{})
	b := transport.Binding{Exchange: "amq.direct", Queue: q, Key: e.name("k")}
	x := e.name("x")
	e.trackExchange(x)
	for op, err := range map[string]error{
		"DeclareExchange": tr.DeclareExchange(ctx, transport.Exchange{Name: x, Kind: transport.Direct, AutoDelete: true}),
		"DeclareQueue":    declareErr,
		"Bind":            tr.Bind(ctx, b),
		"Publish confirm": tr.Publish(ctx, transport.DefaultExchange, q, transport.Message{Body: []byte("x")}, transport.PublishOptions{Confirm: true}),
		"Consume":         consumeErr,
	} {
		e.wantErr(op+" with a cancelled context", err, context.Canceled)
	}
	// The transport is still fine.
	e.publish(tr, transport.DefaultExchange, q, "ok")
	got := e.contents(tr, q)
	if len(got) == 0 || got[len(got)-1] != "ok" {
		e.t.Fatalf("queue holds %q, want it to end with \"ok\"", got)
	}
}

func defaultExchangeRoutesByQueueName(e *env) {
	tr := e.open()
	q1 := e.queue(tr, transport.Queue{})
	q2 := e.queue(tr, transport.Queue{})
	e.publish(tr, transport.DefaultExchange, q1, "one")
	e.publish(tr, transport.DefaultExchange, q2, "two")
	e.publish(tr, transport.DefaultExchange, e.name("missing"), "nowhere")
	c := e.consume(tr, q1, transport.ConsumeOptions{})
	d := e.recvBody(c, "one")
	if d.Exchange != transport.DefaultExchange || d.RoutingKey != q1 {
		e.t.Errorf("delivery exchange %q key %q, want %q %q", d.Exchange, d.RoutingKey, "", q1)
	}
	e.ack(d)
	e.closedAfter(c)
	e.equalStrings("queue 2", e.contents(tr, q2), []string{"two"})

	err := tr.Bind(e.ctx(), transport.Binding{Exchange: transport.DefaultExchange, Queue: q1, Key: "x"})
	e.wantErr("bind to the default exchange", err, transport.ErrPrecondition)
	e.equalStrings("queue 1 after refused bind", e.contents(tr, q1), nil)
}

func directRouting(e *env) {
	tr := e.open()
	x := e.exchange(tr, transport.Direct)
	q1 := e.queue(tr, transport.Queue{})
	q2 := e.queue(tr, transport.Queue{})
	q3 := e.queue(tr, transport.Queue{})
	e.bind(tr, x, q1, "k1")
	e.bind(tr, x, q2, "k2")
	e.bind(tr, x, q3, "k1")
	e.bind(tr, x, q3, "k2")
	for _, k := range []string{"k1", "k2", "k3", "K1", ""} {
		e.publish(tr, x, k, k)
	}
	e.equalStrings("q1", e.contents(tr, q1), []string{"k1"})
	e.equalStrings("q2", e.contents(tr, q2), []string{"k2"})
	e.equalStrings("q3 (bound twice, one copy each)", e.contents(tr, q3), []string{"k1", "k2"})

	if err := tr.Unbind(e.ctx(), transport.Binding{Exchange: x, Queue: q3, Key: "k1"}); err != nil {
		e.t.Fatalf("unbind: %v", err)
	}
	e.publish(tr, x, "k1", "after")
	e.publish(tr, x, "k2", "after2")
	e.equalStrings("q3 after unbinding k1", e.contents(tr, q3), []string{"after2"})
	e.equalStrings("q1 after unbinding k1 from q3", e.contents(tr, q1), []string{"after"})

	c := e.consume(tr, q1, transport.ConsumeOptions{})
	e.publish(tr, x, "k1", "routed")
	d := e.recvBody(c, "routed")
	if d.Exchange != x || d.RoutingKey != "k1" {
		e.t.Errorf("delivery exchange %q key %q, want %q %q", d.Exchange, d.RoutingKey, x, "k1")
	}
	e.ack(d)
}

func fanoutToAllBoundQueues(e *env) {
	tr := e.open()
	x := e.exchange(tr, transport.Fanout)
	q1 := e.queue(tr, transport.Queue{})
	q2 := e.queue(tr, transport.Queue{})
	q3 := e.queue(tr, transport.Queue{})
	e.bind(tr, x, q1, "")
	e.bind(tr, x, q2, "ignored")
	e.bind(tr, x, q3, "")
	if err := tr.Unbind(e.ctx(), transport.Binding{Exchange: x, Queue: q3, Key: ""}); err != nil {
		e.t.Fatalf("unbind: %v", err)
	}
	e.publish(tr, x, "any.key", "m1")
	e.publish(tr, x, "", "m2")
	e.equalStrings("q1", e.contents(tr, q1), []string{"m1", "m2"})
	e.equalStrings("q2", e.contents(tr, q2), []string{"m1", "m2"})
	e.equalStrings("q3 (unbound)", e.contents(tr, q3), nil)
}

// publishedHeadersKept: the transport does not modify the headers it is
// given to publish (transport.Message.Headers: it may keep them), and
// every delivery's headers are its consumer's own: what a consumer changes
// in them reaches neither the publisher's map, nor another queue's
// delivery of the message, nor a redelivery. A quorum queue's
// x-delivery-count goes into the redelivery only.
func publishedHeadersKept(e *env) {
	tr := e.open()
	headers := func() map[string]any {
		return map[string]any{"k": "v", "n": int64(1), "list": []any{"a", int64(2)}, "table": map[string]any{"x": "y"}}
	}
	spoil := func(h map[string]any) {
		h["k"] = "changed"
		h["added"] = true
		if l, ok := h["list"].([]any); ok && len(l) > 0 {
			l[0] = "changed"
		}
		if t, ok := h["table"].(map[string]any); ok {
			t["x"] = "changed"
		}
	}
	same := func(what string, got map[string]any, extra map[string]any) {
		e.t.Helper()
		want := headers()
		for k, v := range extra {
			want[k] = v
		}
		if !sameValue(got, want) {
			e.t.Errorf("%s: headers %v, want %v", what, got, want)
		}
	}

	// To two queues: a quorum queue (for x-delivery-count) and one
	// consumed with AutoAck.
	x := e.exchange(tr, transport.Fanout)
	q1 := e.queue(tr, transport.Queue{Type: transport.Quorum, Durable: true})
	q2 := e.queue(tr, transport.Queue{})
	e.bind(tr, x, q1, "")
	e.bind(tr, x, q2, "")
	h := headers()
	e.publishMsg(tr, x, "", transport.Message{Body: []byte("m"), Headers: h})
	// Each on a connection of its own, as two processes would (a secure
	// transport takes one copy of a message only).
	c1 := e.consume(e.open(), q1, transport.ConsumeOptions{Prefetch: 1})
	c2 := e.consume(e.open(), q2, transport.ConsumeOptions{AutoAck: true})
	d1 := e.recvBody(c1, "m")
	spoil(d1.Headers)
	d2 := e.recvBody(c2, "m")
	same("the AutoAck queue's delivery after the quorum queue's consumer changed its own", d2.Headers, nil)
	spoil(d2.Headers)
	same("the published map after consumers changed their deliveries' headers", h, nil)
	e.nack(d1, true)
	d1 = e.recvBody(c1, "m")
	same("the quorum queue's redelivery", d1.Headers, map[string]any{"x-delivery-count": int64(1)})
	e.ack(d1)
	same("the published map after a redelivery", h, nil)

	// To one queue consumed with AutoAck: the delivery is the consumer's
	// alone, but not the publisher's map.
	q3 := e.queue(tr, transport.Queue{})
	h = headers()
	e.publishMsg(tr, transport.DefaultExchange, q3, transport.Message{Body: []byte("m"), Headers: h})
	d3 := e.recvBody(e.consume(tr, q3, transport.ConsumeOptions{AutoAck: true}), "m")
	spoil(d3.Headers)
	same("the published map after the one AutoAck consumer changed its delivery's headers", h, nil)
}

func topicWildcards(e *env) {
	tr := e.open()
	x := e.exchange(tr, transport.Topic)
	keys := []string{"", "a", "a.b", "a.x.b", "b", "a.b.c", "x.b"}
	cases := []struct {
		pattern string
		want    []string
	}{
		{"#", keys},
		{"*", []string{"a", "b"}},
		{"a.#", []string{"a", "a.b", "a.x.b", "a.b.c"}}, // # matches zero words too
		{"a.*", []string{"a.b"}},
		{"#.b", []string{"a.b", "a.x.b", "b", "x.b"}},
		{"a.#.b", []string{"a.b", "a.x.b"}},
		{"*.*", []string{"a.b", "x.b"}},
		{"a.*.#", []string{"a.b", "a.x.b", "a.b.c"}},
		{"a.b", []string{"a.b"}},
	}
	qs := make([]string, len(cases))
	for i, c := range cases {
		qs[i] = e.queue(tr, transport.Queue{})
		e.bind(tr, x, qs[i], c.pattern)
	}
	// A queue gets one copy however many of its bindings match.
	both := e.queue(tr, transport.Queue{})
	e.bind(tr, x, both, "a.*")
	e.bind(tr, x, both, "#.b")
	for _, k := range keys {
		e.publish(tr, x, k, "key="+k)
	}
	e.equalStrings("queue bound with a.* and #.b", e.contents(tr, both), []string{"key=a.b", "key=a.x.b", "key=b", "key=x.b"})
	for i, c := range cases {
		var want []string
		for _, k := range c.want {
			want = append(want, "key="+k)
		}
		e.equalStrings(fmt.Sprintf("pattern %q", c.pattern), e.contents(tr, qs[i]), want)
	}
}

func serverNamedQueue(e *env) {
	tr := e.open()
	q1, err := tr.DeclareQueue(e.ctx(), transport.Queue{Exclusive: true, AutoDelete: true})
	if err != nil {
		e.t.Fatalf("declare server-named queue: %v", err)
	}
	q2, err := tr.DeclareQueue(e.ctx(), transport.Queue{Exclusive: true})
	if err != nil {
		e.t.Fatalf("declare server-named queue: %v", err)
	}
	if q1 == "" || q2 == "" || q1 == q2 {
		e.t.Fatalf("server-named queues %q and %q: want two distinct names", q1, q2)
	}
	e.publish(tr, transport.DefaultExchange, q1, "hello")
	c := e.consume(tr, q1, transport.ConsumeOptions{})
	e.ack(e.recvBody(c, "hello"))
	e.equalStrings("q2", e.contents(tr, q2), nil)
}

func mandatoryUnroutable(e *env) {
	tr := e.open()
	x := e.exchange(tr, transport.Direct)
	q := e.queue(tr, transport.Queue{})
	e.bind(tr, x, q, "bound")
	mandatory := transport.PublishOptions{Mandatory: true}
	err := tr.Publish(e.ctx(), transport.DefaultExchange, e.name("missing"), transport.Message{Body: []byte("a")}, mandatory)
	e.wantErr("mandatory publish to a missing queue", err, transport.ErrUnroutable)
	err = tr.Publish(e.ctx(), x, "unbound", transport.Message{Body: []byte("b")}, mandatory)
	e.wantErr("mandatory publish with an unbound key", err, transport.ErrUnroutable)
	if err := tr.Publish(e.ctx(), x, "bound", transport.Message{Body: []byte("c")}, mandatory); err != nil {
		e.t.Fatalf("mandatory publish with a bound key: %v", err)
	}
	if err := tr.Publish(e.ctx(), x, "unbound", transport.Message{Body: []byte("d")}, transport.PublishOptions{}); err != nil {
		e.t.Fatalf("publish that is not mandatory, unroutable: %v", err)
	}
	e.equalStrings("queue", e.contents(tr, q), []string{"c"})
}

func confirmedPublish(e *env) {
	tr := e.open()
	q := e.queue(tr, transport.Queue{})
	const n = 20
	errs := make(chan error, n)
	for i := range n {
		go func() {
			errs <- tr.Publish(e.ctx(), transport.DefaultExchange, q, transport.Message{Body: []byte(fmt.Sprint(i))}, transport.PublishOptions{Confirm: true})
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			e.t.Fatalf("confirmed publish: %v", err)
		}
	}
	// Confirmed messages are in the queue: a consumer on another connection
	// sees all of them.
	got := e.contents(e.open(), q)
	slices.Sort(got)
	var want []string
	for i := range n {
		want = append(want, fmt.Sprint(i))
	}
	slices.Sort(want)
	e.equalStrings("queue", got, want)
}

func publishToMissingExchange(e *env) {
	tr := e.open()
	q := e.queue(tr, transport.Queue{})
	missing := e.name("missing")
	err := tr.Publish(e.ctx(), missing, "k", transport.Message{Body: []byte("a")}, transport.PublishOptions{Confirm: true})
	e.wantErr("confirmed publish to a missing exchange", err, transport.ErrNotFound)
	err = tr.Publish(e.ctx(), missing, "k", transport.Message{Body: []byte("b")}, transport.PublishOptions{Mandatory: true})
	e.wantErr("mandatory publish to a missing exchange", err, transport.ErrNotFound)
	err = tr.Publish(e.ctx(), missing, "k", transport.Message{Body: []byte("c")}, transport.PublishOptions{})
	if err != nil {
		e.wantErr("unconfirmed publish to a missing exchange", err, transport.ErrNotFound)
	}
	// The transport recovers: a confirmed publish works again soon.
	e.eventually("confirmed publish after a refused one", func() error {
		return tr.Publish(e.ctx(), transport.DefaultExchange, q, transport.Message{Body: []byte("ok")}, transport.PublishOptions{Confirm: true})
	})
	got := e.contents(tr, q)
	if len(got) == 0 || slices.ContainsFunc(got, func(s string) bool { return s != "ok" }) {
		e.t.Fatalf("queue holds %q, want one or more \"ok\"", got)
	}
}

// nestedTables returns n tables, one inside the other.
func nestedTables(n int) any {
	var v any = "bottom"
	for range n {
		v = map[string]any{"n": v}
	}
	return v
}

// unreadableHeadersDelivered: RabbitMQ takes headers that amqp091-go cannot
// read (a table nested 33 deep); the message is delivered all the same,
// on a classic, an exclusive and a quorum queue, with that header removed
// and transport.HeaderMalformed saying so, and the consumer goes on. 32
// levels come through unchanged.
func unreadableHeadersDelivered(e *env) {
	tr := e.open()
	for _, q := range []transport.Queue{{}, {Exclusive: true}, {Type: transport.Quorum}} {
		name := e.queue(tr, q)
		e.publishMsg(tr, transport.DefaultExchange, name, transport.Message{Body: []byte("poison"), MessageID: "poison",
			Headers: map[string]any{"keep": "me", "deep": nestedTables(33)}})
		e.publishMsg(tr, transport.DefaultExchange, name, transport.Message{Body: []byte("fine"),
			Headers: map[string]any{"deep": nestedTables(32)}})
		c := e.consume(tr, name, transport.ConsumeOptions{Prefetch: 2})
		d := e.recvBody(c, "poison")
		why, _ := d.Headers[transport.HeaderMalformed].(string)
		if !strings.Contains(why, `"deep" (nested deeper than 32 levels)`) || d.Headers["keep"] != "me" || d.Headers["deep"] != nil || d.MessageID != "poison" {
			e.t.Errorf("%s queue: poison delivered with id %q headers %v", q.Type, d.MessageID, d.Headers)
		}
		e.ack(d)
		d = e.recvBody(c, "fine")
		if d.Headers[transport.HeaderMalformed] != nil || d.Headers["deep"] == nil {
			e.t.Errorf("%s queue: 32 levels delivered with headers %v", q.Type, d.Headers)
		}
		e.ack(d)
		c.cancel()
	}
}
