package amqp_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// dial returns a Transport on the test broker, closed with the test.
func dial(t testing.TB, cfg amqp.Config) *amqp.Transport {
	t.Helper()
	url := testenv.AMQPURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := amqp.Dial(ctx, url, cfg, amqp.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// name returns a broker-wide unique name for an entity of test t.
func name(t testing.TB, what string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	n := strings.NewReplacer("/", ".", " ", "_").Replace(t.Name())
	return fmt.Sprintf("warren-test.%s.%s.%s", n, what, hex.EncodeToString(b[:]))
}

// tempQueue declares an auto-deleted classic queue, deleted with the test.
func tempQueue(t testing.TB, tr transport.Transport, q transport.Queue) string {
	t.Helper()
	if q.Name == "" {
		q.Name = name(t, "q")
	}
	n, err := tr.DeclareQueue(t.Context(), q)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.DeleteQueue(context.Background(), n) })
	return n
}

func receive(t testing.TB, ch <-chan *transport.Delivery) *transport.Delivery {
	t.Helper()
	select {
	case d, ok := <-ch:
		if !ok {
			t.Fatal("delivery channel closed")
		}
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery within 10s")
	}
	return nil
}

func waitClosed(t testing.TB, ch <-chan *transport.Delivery) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case d, ok := <-ch:
			if !ok {
				return
			}
			t.Errorf("unexpected delivery %q while waiting for close", d.Body)
		case <-timeout:
			t.Fatal("delivery channel not closed within 10s")
		}
	}
}

func TestDialErrorNamesURLWithoutPassword(t *testing.T) {
	_, err := amqp.Dial(t.Context(), "amqp://guest:secret@127.0.0.1:1/", amqp.Config{})
	if err == nil {
		t.Fatal("Dial succeeded")
	}
	want := "amqp: cannot connect to amqp://guest:xxxxx@127.0.0.1:1/: connection refused"
	if err.Error() != want {
		t.Fatalf("err = %q, want %q", err, want)
	}
	var de *amqp.DialError
	if !errors.As(err, &de) {
		t.Fatalf("err %T is not a *DialError", err)
	}
}

func TestDialBadURL(t *testing.T) {
	_, err := amqp.Dial(t.Context(), "http://x:pw@host/", amqp.Config{})
	if err == nil || strings.Contains(err.Error(), "pw") {
		t.Fatalf("err = %v", err)
	}
}

func TestDialBadCredentials(t *testing.T) {
	url := testenv.AMQPURL(t)
	bad := strings.Replace(url, "guest:guest@", "guest:wrong@", 1)
	if bad == url {
		t.Skip("WARREN_AMQP_URL does not use guest:guest")
	}
	_, err := amqp.Dial(t.Context(), bad, amqp.Config{})
	if err == nil || strings.Contains(err.Error(), "wrong") || !strings.HasPrefix(err.Error(), "amqp: cannot connect to amqp://guest:xxxxx@") {
		t.Fatalf("err = %v", err)
	}
}

func TestPropertiesRoundTrip(t *testing.T) {
	tr := dial(t, amqp.Config{})
	q := tempQueue(t, tr, transport.Queue{})
	ts := time.Unix(1700000000, 0).UTC()
	msg := transport.Message{
		Body:            []byte("hello"),
		ContentType:     "application/json",
		ContentEncoding: "gzip",
		Headers: map[string]any{
			"s": "x", "b": []byte{1, 2}, "t": true, "i32": int32(-3), "i64": int64(1 << 40),
			"f": 1.5, "ts": ts, "a": []any{"x", int64(1)}, "m": map[string]any{"k": "v"},
			"int": 7, "u16": uint16(9),
		},
		MessageID:     "mid",
		CorrelationID: "cid",
		ReplyTo:       "rt",
		Type:          "ty",
		AppID:         "app",
		Timestamp:     ts,
		Expiration:    time.Hour,
		Persistent:    true,
		Priority:      3,
	}
	ds, err := tr.Consume(t.Context(), q, transport.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(t.Context(), "", q, msg, transport.PublishOptions{Confirm: true}); err != nil {
		t.Fatal(err)
	}
	d := receive(t, ds)
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
	want := msg
	want.Headers = map[string]any{
		"s": "x", "b": []byte{1, 2}, "t": true, "i32": int32(-3), "i64": int64(1 << 40),
		"f": 1.5, "ts": ts, "a": []any{"x", int64(1)}, "m": map[string]any{"k": "v"},
		"int": int64(7), "u16": int64(9),
	}
	if got := fmt.Sprintf("%#v", d.Message); got != fmt.Sprintf("%#v", want) {
		t.Errorf("got  %s\nwant %s", got, fmt.Sprintf("%#v", want))
	}
	if d.Exchange != "" || d.RoutingKey != q || d.Redelivered || d.ConsumerTag == "" {
		t.Errorf("delivery info: %q %q %v %q", d.Exchange, d.RoutingKey, d.Redelivered, d.ConsumerTag)
	}
}

func TestBadHeaderIsAnError(t *testing.T) {
	tr := dial(t, amqp.Config{})
	err := tr.Publish(t.Context(), "", "nowhere", transport.Message{Headers: map[string]any{"x": struct{}{}}}, transport.PublishOptions{})
	if err == nil || !strings.Contains(err.Error(), `header "x"`) {
		t.Fatalf("err = %v", err)
	}
}

// TestLongestExpiration: RabbitMQ takes an expiration of MaxExpiration; a
// longer one is refused before it is sent, not reported as a lost
// connection after RabbitMQ closed the channel over it.
func TestLongestExpiration(t *testing.T) {
	tr := dial(t, amqp.Config{})
	q := tempQueue(t, tr, transport.Queue{})
	if err := tr.Publish(t.Context(), "", q, transport.Message{Body: []byte("x"), Expiration: amqp.MaxExpiration}, transport.PublishOptions{Confirm: true}); err != nil {
		t.Fatalf("MaxExpiration: %v", err)
	}
	err := tr.Publish(t.Context(), "", q, transport.Message{Body: []byte("x"), Expiration: 1000000 * time.Hour}, transport.PublishOptions{Confirm: true})
	if err == nil || errors.Is(err, transport.ErrConnectionLost) || !strings.Contains(err.Error(), "over RabbitMQ's limit") {
		t.Fatalf("expiration 1000000h: err = %v", err)
	}
}

func TestMandatory(t *testing.T) {
	tr := dial(t, amqp.Config{})
	q := tempQueue(t, tr, transport.Queue{})
	err := tr.Publish(t.Context(), "", name(t, "none"), transport.Message{Body: []byte("x")}, transport.PublishOptions{Mandatory: true})
	if !errors.Is(err, transport.ErrUnroutable) {
		t.Fatalf("unroutable: err = %v", err)
	}
	if err := tr.Publish(t.Context(), "", q, transport.Message{Body: []byte("x")}, transport.PublishOptions{Mandatory: true}); err != nil {
		t.Fatalf("routable: %v", err)
	}
}

// TestMandatoryConcurrent interleaves routable and unroutable mandatory
// publishes: each must get its own outcome.
// eachPublishChannels runs f with the default publish channel count and
// with several channels, whose slots publishes are spread over.
func eachPublishChannels(t *testing.T, f func(t *testing.T, cfg amqp.Config)) {
	for _, n := range []int{0, 4} {
		t.Run(fmt.Sprintf("PublishChannels=%d", n), func(t *testing.T) { f(t, amqp.Config{PublishChannels: n}) })
	}
}

func TestPublishChannelsOutOfRange(t *testing.T) {
	for _, n := range []int{-1, 65} {
		if _, err := amqp.Dial(t.Context(), "amqp://guest:guest@127.0.0.1:1/", amqp.Config{PublishChannels: n}); err == nil || !strings.Contains(err.Error(), "PublishChannels") {
			t.Errorf("PublishChannels %d: err = %v", n, err)
		}
	}
}

func TestMandatoryConcurrent(t *testing.T) { eachPublishChannels(t, testMandatoryConcurrent) }

func testMandatoryConcurrent(t *testing.T, cfg amqp.Config) {
	tr := dial(t, cfg)
	q := tempQueue(t, tr, transport.Queue{})
	none := name(t, "none")
	var wg sync.WaitGroup
	errs := make([]error, 64)
	for i := range errs {
		wg.Go(func() {
			key := q
			if i%2 == 1 {
				key = none
			}
			errs[i] = tr.Publish(t.Context(), "", key, transport.Message{Body: []byte{byte(i)}}, transport.PublishOptions{Mandatory: true})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if i%2 == 1 && !errors.Is(err, transport.ErrUnroutable) {
			t.Errorf("publish %d (unroutable): err = %v", i, err)
		}
		if i%2 == 0 && err != nil {
			t.Errorf("publish %d (routable): err = %v", i, err)
		}
	}
}

func TestConcurrentConfirmedPublishes(t *testing.T) {
	eachPublishChannels(t, testConcurrentConfirmedPublishes)
}

func testConcurrentConfirmedPublishes(t *testing.T, cfg amqp.Config) {
	tr := dial(t, cfg)
	q := tempQueue(t, tr, transport.Queue{})
	const n = 64
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := tr.Publish(t.Context(), "", q, transport.Message{Body: []byte{byte(i)}}, transport.PublishOptions{Confirm: true}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	ds, err := tr.Consume(t.Context(), q, transport.ConsumeOptions{Prefetch: n, AutoAck: true})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[byte]bool{}
	for range n {
		seen[receive(t, ds).Body[0]] = true
	}
	if len(seen) != n {
		t.Fatalf("received %d distinct messages, want %d", len(seen), n)
	}
}

func TestPublishMissingExchange(t *testing.T) { eachPublishChannels(t, testPublishMissingExchange) }

func testPublishMissingExchange(t *testing.T, cfg amqp.Config) {
	tr := dial(t, cfg)
	ex := name(t, "ex")
	err := tr.Publish(t.Context(), ex, "k", transport.Message{}, transport.PublishOptions{Confirm: true})
	if !errors.Is(err, transport.ErrNotFound) || !strings.Contains(err.Error(), ex) {
		t.Fatalf("err = %v", err)
	}
	// Unconfirmed: returns nil, and the channel it broke is replaced.
	for range 10 {
		if err := tr.Publish(t.Context(), ex, "k", transport.Message{}, transport.PublishOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	q := tempQueue(t, tr, transport.Queue{})
	for range 10 {
		if err := tr.Publish(t.Context(), "", q, transport.Message{}, transport.PublishOptions{Confirm: true}); err != nil {
			t.Fatalf("publish after a channel error: %v", err)
		}
	}
}

func TestDeclareErrors(t *testing.T) {
	tr := dial(t, amqp.Config{})
	ctx := t.Context()
	q := tempQueue(t, tr, transport.Queue{})
	if _, err := tr.DeclareQueue(ctx, transport.Queue{Name: q}); err != nil {
		t.Fatalf("idempotent redeclare: %v", err)
	}
	_, err := tr.DeclareQueue(ctx, transport.Queue{Name: q, Durable: true})
	if !errors.Is(err, transport.ErrPrecondition) || !strings.Contains(err.Error(), q) {
		t.Fatalf("conflicting queue: err = %v", err)
	}
	ex := name(t, "ex")
	if err := tr.DeclareExchange(ctx, transport.Exchange{Name: ex, Kind: transport.Topic, AutoDelete: true}); err != nil {
		t.Fatal(err)
	}
	err = tr.DeclareExchange(ctx, transport.Exchange{Name: ex, Kind: transport.Fanout, AutoDelete: true})
	if !errors.Is(err, transport.ErrPrecondition) {
		t.Fatalf("conflicting exchange: err = %v", err)
	}
	err = tr.Bind(ctx, transport.Binding{Exchange: name(t, "missing"), Queue: q, Key: "k"})
	if !errors.Is(err, transport.ErrNotFound) {
		t.Fatalf("bind missing exchange: err = %v", err)
	}
	err = tr.Bind(ctx, transport.Binding{Exchange: ex, Queue: name(t, "missing"), Key: "k"})
	if !errors.Is(err, transport.ErrNotFound) {
		t.Fatalf("bind missing queue: err = %v", err)
	}
	if err := tr.Unbind(ctx, transport.Binding{Exchange: ex, Queue: q, Key: "never-bound"}); err != nil {
		t.Fatalf("unbind missing binding: %v", err)
	}
	if err := tr.DeleteQueue(ctx, name(t, "missing")); err != nil {
		t.Fatalf("delete missing queue: %v", err)
	}
	// The channel errors above broke nothing. (A second binding keeps the
	// auto-delete exchange after the unbind below.)
	if err := tr.Bind(ctx, transport.Binding{Exchange: ex, Queue: q, Key: "other"}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Bind(ctx, transport.Binding{Exchange: ex, Queue: q, Key: "a.*"}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctx, ex, "a.b", transport.Message{}, transport.PublishOptions{Mandatory: true}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Unbind(ctx, transport.Binding{Exchange: ex, Queue: q, Key: "a.*"}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctx, ex, "a.b", transport.Message{}, transport.PublishOptions{Mandatory: true}); !errors.Is(err, transport.ErrUnroutable) {
		t.Fatalf("after unbind: err = %v", err)
	}
}

func TestServerNamedExclusiveQueue(t *testing.T) {
	tr := dial(t, amqp.Config{})
	q, err := tr.DeclareQueue(t.Context(), transport.Queue{Exclusive: true})
	if err != nil || q == "" {
		t.Fatalf("DeclareQueue = %q, %v", q, err)
	}
	ds, err := tr.Consume(t.Context(), q, transport.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(t.Context(), "", q, transport.Message{Body: []byte("x")}, transport.PublishOptions{Mandatory: true}); err != nil {
		t.Fatal(err)
	}
	receive(t, ds).Ack()

	other := dial(t, amqp.Config{})
	if _, err := other.Consume(t.Context(), q, transport.ConsumeOptions{}); !errors.Is(err, transport.ErrPrecondition) {
		t.Fatalf("consume another connection's exclusive queue: err = %v", err)
	}
	named := name(t, "excl")
	if _, err := tr.DeclareQueue(t.Context(), transport.Queue{Name: named, Exclusive: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := other.DeclareQueue(t.Context(), transport.Queue{Name: named, Exclusive: true}); !errors.Is(err, transport.ErrPrecondition) {
		t.Fatalf("redeclare another connection's exclusive queue: err = %v", err)
	}
	tr.Close()
	// Close deleted it: the other transport can declare it now.
	testenv.WaitFor(t, 5*time.Second, func() error {
		_, err := other.DeclareQueue(t.Context(), transport.Queue{Name: named, Exclusive: true})
		return err
	})
}

func TestConsumeErrors(t *testing.T) {
	tr := dial(t, amqp.Config{})
	ctx := t.Context()
	if _, err := tr.Consume(ctx, name(t, "missing"), transport.ConsumeOptions{}); !errors.Is(err, transport.ErrNotFound) {
		t.Fatalf("missing queue: err = %v", err)
	}
	q := tempQueue(t, tr, transport.Queue{})
	if _, err := tr.Consume(ctx, q, transport.ConsumeOptions{Exclusive: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Consume(ctx, q, transport.ConsumeOptions{}); !errors.Is(err, transport.ErrPrecondition) {
		t.Fatalf("second consumer of an exclusive consumer's queue: err = %v", err)
	}
	q2 := tempQueue(t, tr, transport.Queue{})
	if _, err := tr.Consume(ctx, q2, transport.ConsumeOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Consume(ctx, q2, transport.ConsumeOptions{Exclusive: true}); !errors.Is(err, transport.ErrPrecondition) {
		t.Fatalf("exclusive consumer of a consumed queue: err = %v", err)
	}
}

func TestSettle(t *testing.T) {
	tr := dial(t, amqp.Config{})
	q := tempQueue(t, tr, transport.Queue{})
	ctx, cancel := context.WithCancel(t.Context())
	ds, err := tr.Consume(ctx, q, transport.ConsumeOptions{Prefetch: 10})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"a", "b", "c"} {
		if err := tr.Publish(t.Context(), "", q, transport.Message{Body: []byte(b)}, transport.PublishOptions{Confirm: true}); err != nil {
			t.Fatal(err)
		}
	}
	a, b, c := receive(t, ds), receive(t, ds), receive(t, ds)
	if err := a.Ack(); err != nil {
		t.Fatal(err)
	}
	if err := a.Ack(); !errors.Is(err, transport.ErrAlreadySettled) {
		t.Fatalf("second ack: err = %v", err)
	}
	if err := a.Nack(true); !errors.Is(err, transport.ErrAlreadySettled) {
		t.Fatalf("nack after ack: err = %v", err)
	}
	if err := b.Nack(true); err != nil {
		t.Fatal(err)
	}
	b2 := receive(t, ds)
	if string(b2.Body) != "b" || !b2.Redelivered {
		t.Fatalf("after nack requeue: got %q redelivered=%v", b2.Body, b2.Redelivered)
	}
	cancel()
	waitClosed(t, ds)
	if err := c.Ack(); !errors.Is(err, transport.ErrConnectionLost) {
		t.Fatalf("ack after consumer end: err = %v", err)
	}
	// c and b2 were requeued.
	ds2, err := tr.Consume(t.Context(), q, transport.ConsumeOptions{Prefetch: 10})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for range 2 {
		d := receive(t, ds2)
		if !d.Redelivered {
			t.Errorf("%q not marked redelivered", d.Body)
		}
		got[string(d.Body)] = true
		d.Ack()
	}
	if !got["b"] || !got["c"] {
		t.Fatalf("redelivered %v, want b and c", got)
	}
}

func TestQueueDeletedClosesConsumer(t *testing.T) {
	tr := dial(t, amqp.Config{})
	q := tempQueue(t, tr, transport.Queue{})
	ds, err := tr.Consume(t.Context(), q, transport.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.DeleteQueue(t.Context(), q); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, ds)
}

func TestCloseConsumersAndErrClosed(t *testing.T) {
	tr := dial(t, amqp.Config{})
	q := tempQueue(t, tr, transport.Queue{})
	ds, err := tr.Consume(t.Context(), q, transport.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { tr.Close() })
	}
	wg.Wait()
	waitClosed(t, ds)
	ctx := t.Context()
	checks := map[string]error{
		"publish":  tr.Publish(ctx, "", q, transport.Message{}, transport.PublishOptions{}),
		"declare":  tr.DeclareExchange(ctx, transport.Exchange{Name: "x", Kind: transport.Direct}),
		"delete":   tr.DeleteQueue(ctx, q),
		"bind":     tr.Bind(ctx, transport.Binding{Queue: q}),
		"unbind":   tr.Unbind(ctx, transport.Binding{Queue: q}),
		"close":    nil,
		"consumer": func() error { _, err := tr.Consume(ctx, q, transport.ConsumeOptions{}); return err }(),
	}
	_, checks["queue"] = tr.DeclareQueue(ctx, transport.Queue{Name: q})
	for op, err := range checks {
		if op == "close" {
			continue
		}
		if !errors.Is(err, transport.ErrClosed) {
			t.Errorf("%s after Close: err = %v", op, err)
		}
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCtxEndsBlockingWork(t *testing.T) {
	tr := dial(t, amqp.Config{ConfirmWindow: 1})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := tr.Publish(ctx, "", "x", transport.Message{}, transport.PublishOptions{Confirm: true}); !errors.Is(err, context.Canceled) {
		t.Fatalf("publish: err = %v", err)
	}
	if _, err := tr.DeclareQueue(ctx, transport.Queue{Name: name(t, "q")}); !errors.Is(err, context.Canceled) {
		t.Fatalf("declare: err = %v", err)
	}
	if _, err := tr.Consume(ctx, "x", transport.ConsumeOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("consume: err = %v", err)
	}
}

// TestReconnectAfterConnectionClosed closes the transport's publishing
// connection from the broker side: the transport closes its consuming
// connection too, consumers end, settling a delivery of the old consumer
// fails with ErrConnectionLost (the broker redelivers it), and the
// transport reconnects by itself: publishes, declarations and consumers
// work again.
func TestReconnectAfterConnectionClosed(t *testing.T) {
	connName := name(t, "conn")
	tr := dial(t, amqp.Config{ConnectionName: connName})
	q := tempQueue(t, dial(t, amqp.Config{}), transport.Queue{})
	ds, err := tr.Consume(t.Context(), q, transport.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(t.Context(), "", q, transport.Message{Body: []byte("x")}, transport.PublishOptions{Confirm: true}); err != nil {
		t.Fatal(err)
	}
	d := receive(t, ds)

	closeConnection(t, connName+" (publish)")
	waitClosed(t, ds)
	if err := d.Ack(); !errors.Is(err, transport.ErrConnectionLost) {
		t.Errorf("ack: err = %v", err)
	}
	// New operations wait for the reconnection.
	if err := tr.Publish(t.Context(), "", q, transport.Message{Body: []byte("y")}, transport.PublishOptions{Confirm: true}); err != nil {
		t.Fatalf("publish after the loss: %v", err)
	}
	if _, err := tr.DeclareQueue(t.Context(), transport.Queue{Name: q}); err != nil {
		t.Fatalf("declare after the loss: %v", err)
	}
	ds, err = tr.Consume(t.Context(), q, transport.ConsumeOptions{})
	if err != nil {
		t.Fatalf("consume after the loss: %v", err)
	}
	d = receive(t, ds)
	if string(d.Body) != "x" || !d.Redelivered {
		t.Fatalf("got %q redelivered=%v, want x redelivered", d.Body, d.Redelivered)
	}
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
	if d := receive(t, ds); string(d.Body) != "y" {
		t.Fatalf("got %q, want y", d.Body)
	}
	if s := tr.Stats(); s.Losses != 1 || s.Reconnects != 1 || s.Attempts < 1 {
		t.Errorf("stats %+v, want one loss and one reconnect", s)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(t.Context(), "", q, transport.Message{}, transport.PublishOptions{}); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("publish after Close: err = %v", err)
	}
}

// closeConnection closes the connection named name from the broker side,
// waiting for it to appear first.
func closeConnection(t *testing.T, name string) {
	t.Helper()
	var pid string
	testenv.WaitFor(t, 10*time.Second, func() error {
		for line := range strings.Lines(testenv.Rabbitmqctl(t, "list_connections", "-q", "--no-table-headers", "pid", "client_properties")) {
			if strings.Contains(line, name) {
				pid = strings.Fields(line)[0]
				return nil
			}
		}
		return fmt.Errorf("no connection named %s", name)
	})
	testenv.Rabbitmqctl(t, "close_connection", pid, "test: connection lost")
}

// TestLongNamesAreErrors checks that strings too long for AMQP are refused
// before anything is written: amqp091 would break the whole connection.
func TestLongNamesAreErrors(t *testing.T) {
	tr := dial(t, amqp.Config{})
	ctx := t.Context()
	q := tempQueue(t, tr, transport.Queue{})
	long := strings.Repeat("x", 256)
	errs := map[string]error{
		"routing key": tr.Publish(ctx, "", long, transport.Message{}, transport.PublishOptions{}),
		"exchange":    tr.Publish(ctx, long, "k", transport.Message{}, transport.PublishOptions{}),
		"header key":  tr.Publish(ctx, "", q, transport.Message{Headers: map[string]any{"m": map[string]any{long: 1}}}, transport.PublishOptions{}),
		"message id":  tr.Publish(ctx, "", q, transport.Message{MessageID: long}, transport.PublishOptions{}),
		"bind key":    tr.Bind(ctx, transport.Binding{Exchange: "amq.direct", Queue: q, Key: long}),
		"consume":     func() error { _, err := tr.Consume(ctx, long, transport.ConsumeOptions{}); return err }(),
		"tag":         func() error { _, err := tr.Consume(ctx, q, transport.ConsumeOptions{Tag: long}); return err }(),
	}
	_, errs["declare"] = tr.DeclareQueue(ctx, transport.Queue{Name: long})
	for what, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "more than AMQP's 255") {
			t.Errorf("%s: err = %v", what, err)
		}
	}
	if err := tr.Publish(ctx, "", q, transport.Message{}, transport.PublishOptions{Confirm: true}); err != nil {
		t.Fatalf("transport broken: %v", err)
	}
}

// TestSettleRacingStop: acks sent while the consumer stops (its context
// ends) never reach the broker after the channel's close, where RabbitMQ
// closes the whole connection (504 CHANNEL_ERROR "expected
// 'channel.open'"): the connection survives every round, and each ack
// either went out or says the broker requeues the message.
func TestSettleRacingStop(t *testing.T) {
	tr := dial(t, amqp.Config{})
	const rounds, msgs = 40, 8
	for range rounds {
		q, err := tr.DeclareQueue(t.Context(), transport.Queue{AutoDelete: true})
		if err != nil {
			t.Fatal(err)
		}
		for range msgs {
			if err := tr.Publish(t.Context(), "", q, transport.Message{Body: []byte("x")}, transport.PublishOptions{Confirm: true}); err != nil {
				t.Fatal(err)
			}
		}
		ctx, stop := context.WithCancel(t.Context())
		ch, err := tr.Consume(ctx, q, transport.ConsumeOptions{Prefetch: msgs})
		if err != nil {
			t.Fatal(err)
		}
		var ds []*transport.Delivery
		for range msgs {
			ds = append(ds, <-ch)
		}
		var wg sync.WaitGroup
		for i, d := range ds {
			wg.Go(func() {
				// Spread over the stop (basic.cancel, then channel.close),
				// so that some acks come while the channel closes. The
				// outcome does not depend on when they come.
				time.Sleep(time.Duration(i) * 250 * time.Microsecond)
				if err := d.Ack(); err != nil && !errors.Is(err, transport.ErrConnectionLost) {
					t.Errorf("ack: %v", err)
				}
			})
		}
		stop()
		wg.Wait()
		for range ch {
		}
		if s := tr.Stats(); s.Losses != 0 {
			t.Fatalf("the connection was lost: %+v", s)
		}
	}
}
