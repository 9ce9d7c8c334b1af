package mem_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/transport/transporttest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformance(t *testing.T) {
	b := mem.NewBroker()
	t.Cleanup(func() { b.Close() })
	transporttest.Run(t, func(t *testing.T) transport.Transport { return b.Connect() }, transporttest.Harness{})
}

// A consumer whose caller stops reading holds up only itself: the broker
// keeps routing, to its queue and to others.
func TestSlowConsumerBlocksOnlyItself(t *testing.T) {
	ctx := t.Context()
	b := mem.NewBroker()
	defer b.Close()
	tr := b.Connect()
	declare := func() string {
		q, err := tr.DeclareQueue(ctx, transport.Queue{Exclusive: true})
		if err != nil {
			t.Fatal(err)
		}
		return q
	}
	stuck, stuckAuto, live := declare(), declare(), declare()
	if _, err := tr.Consume(ctx, stuck, transport.ConsumeOptions{Prefetch: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Consume(ctx, stuckAuto, transport.ConsumeOptions{AutoAck: true}); err != nil {
		t.Fatal(err)
	}
	ds, err := tr.Consume(ctx, live, transport.ConsumeOptions{Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		for _, q := range []string{stuck, stuckAuto, live} {
			if err := tr.Publish(ctx, transport.DefaultExchange, q, transport.Message{Body: []byte{byte(i)}}, transport.PublishOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		d := <-ds
		if d.Body[0] != byte(i) {
			t.Fatalf("live consumer got %d, want %d", d.Body[0], i)
		}
		d.Ack()
	}
	// Close ends the stuck consumers too, including an AutoAck one whose
	// overflow is waiting for a reader.
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
}

// AutoAck deliveries that overflow the channel keep their order.
func TestAutoAckOverflowKeepsOrder(t *testing.T) {
	tr := mem.New()
	defer tr.Close()
	ctx := t.Context()
	q, err := tr.DeclareQueue(ctx, transport.Queue{Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	ds, err := tr.Consume(ctx, q, transport.ConsumeOptions{AutoAck: true, Prefetch: 3})
	if err != nil {
		t.Fatal(err)
	}
	const n = 500
	for i := range n {
		tr.Publish(ctx, transport.DefaultExchange, q, transport.Message{Body: fmt.Appendf(nil, "%d", i)}, transport.PublishOptions{})
	}
	for i := range n {
		d := <-ds
		if want := fmt.Sprint(i); string(d.Body) != want {
			t.Fatalf("delivery %d has body %s", i, d.Body)
		}
	}
}

// Settling after the consumer ended fails with ErrClosed: the message is
// back in its queue. Settling after the queue was deleted is harmless.
func TestSettleAfterConsumerEnded(t *testing.T) {
	tr := mem.New()
	defer tr.Close()
	q, err := tr.DeclareQueue(t.Context(), transport.Queue{Name: "q"})
	if err != nil {
		t.Fatal(err)
	}
	tr.Publish(t.Context(), transport.DefaultExchange, q, transport.Message{Body: []byte("m")}, transport.PublishOptions{})
	ctx, cancel := context.WithCancel(t.Context())
	ds, err := tr.Consume(ctx, q, transport.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := <-ds
	cancel()
	for range ds {
	}
	if err := d.Ack(); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("ack after the consumer ended: %v, want ErrClosed", err)
	}
	if err := d.Ack(); !errors.Is(err, transport.ErrAlreadySettled) {
		t.Errorf("second ack: %v, want ErrAlreadySettled", err)
	}
	ds, err = tr.Consume(t.Context(), q, transport.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d = <-ds
	if !d.Redelivered {
		t.Errorf("redelivery without Redelivered")
	}
	tr.DeleteQueue(t.Context(), q)
	if _, ok := <-ds; ok {
		t.Errorf("delivery after the queue was deleted")
	}
	if err := d.Ack(); err != nil {
		t.Errorf("ack after the queue was deleted: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	tr := mem.New()
	defer tr.Close()
	ctx := t.Context()
	q, _ := tr.DeclareQueue(ctx, transport.Queue{Exclusive: true})
	if err := tr.Publish(ctx, transport.DefaultExchange, q, transport.Message{Headers: map[string]any{"bad": struct{}{}}}, transport.PublishOptions{}); err == nil {
		t.Errorf("publish with an unsupported header type: nil error")
	}
	if err := tr.Publish(ctx, transport.DefaultExchange, q, transport.Message{Expiration: -time.Second}, transport.PublishOptions{}); err == nil {
		t.Errorf("publish with a negative expiration: nil error")
	}
	if err := tr.DeclareExchange(ctx, transport.Exchange{Name: "x", Kind: "headers"}); err == nil {
		t.Errorf("declare an exchange of unknown kind: nil error")
	}
	for _, bad := range []transport.Queue{
		{Name: "a", Type: "stream"},
		{Name: "b", MessageTTL: -time.Second},
		{Name: "c", MaxLength: -1},
		{Name: "d", Expires: time.Microsecond},
	} {
		if _, err := tr.DeclareQueue(ctx, bad); !errors.Is(err, transport.ErrPrecondition) {
			t.Errorf("declare %+v: %v, want ErrPrecondition", bad, err)
		}
	}
	if _, err := tr.Consume(ctx, q, transport.ConsumeOptions{Prefetch: -1}); err == nil {
		t.Errorf("consume with negative prefetch: nil error")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := tr.Consume(cctx, q, transport.ConsumeOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("consume with a cancelled context: %v", err)
	}
}

// A connection from a closed broker is closed.
func TestConnectAfterBrokerClose(t *testing.T) {
	b := mem.NewBroker()
	tr := b.Connect()
	b.Close()
	if _, err := tr.DeclareQueue(t.Context(), transport.Queue{}); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("declare on a connection of a closed broker: %v", err)
	}
	if _, err := b.Connect().DeclareQueue(t.Context(), transport.Queue{}); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("declare on a connection made after Close: %v", err)
	}
}

// The broker works inside a synctest bubble, so that tests of heartbeats
// and timeouts built on it run on the fake clock: here a 10-minute TTL and a
// 1-hour queue expiry pass instantly.
func TestTimersUnderSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := mem.New()
		defer tr.Close()
		ctx := t.Context()
		tr.DeclareExchange(ctx, transport.Exchange{Name: "dlx", Kind: transport.Fanout})
		tr.DeclareQueue(ctx, transport.Queue{Name: "dead"})
		tr.Bind(ctx, transport.Binding{Exchange: "dlx", Queue: "dead"})
		tr.DeclareQueue(ctx, transport.Queue{Name: "q", MessageTTL: 10 * time.Minute, DeadLetterExchange: "dlx"})
		tr.DeclareQueue(ctx, transport.Queue{Name: "idle", Expires: time.Hour})
		start := time.Now()
		tr.Publish(ctx, transport.DefaultExchange, "q", transport.Message{Body: []byte("m")}, transport.PublishOptions{})
		dead, err := tr.Consume(ctx, "dead", transport.ConsumeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d := <-dead
		if waited := time.Since(start); waited < 10*time.Minute || waited > 10*time.Minute+time.Millisecond {
			t.Errorf("dead-lettered after %v, want 10m", waited)
		}
		d.Ack()
		time.Sleep(time.Hour)
		synctest.Wait()
		err = tr.Publish(ctx, transport.DefaultExchange, "idle", transport.Message{}, transport.PublishOptions{Mandatory: true})
		if !errors.Is(err, transport.ErrUnroutable) {
			t.Errorf("publish to the expired queue: %v, want ErrUnroutable", err)
		}
	})
}

// A prefetch larger than the channel's buffer works: the rest waits in the
// consumer's overflow, in order.
func TestLargePrefetch(t *testing.T) {
	tr := mem.New()
	defer tr.Close()
	ctx := t.Context()
	q, _ := tr.DeclareQueue(ctx, transport.Queue{Exclusive: true})
	const n = 1000
	for i := range n {
		tr.Publish(ctx, transport.DefaultExchange, q, transport.Message{Body: fmt.Appendf(nil, "%d", i)}, transport.PublishOptions{})
	}
	ds, err := tr.Consume(ctx, q, transport.ConsumeOptions{Prefetch: 100000})
	if err != nil {
		t.Fatal(err)
	}
	var held []*transport.Delivery
	for i := range n {
		d := <-ds
		if want := fmt.Sprint(i); string(d.Body) != want {
			t.Fatalf("delivery %d has body %s", i, d.Body)
		}
		held = append(held, d)
	}
	for _, d := range held {
		if err := d.Ack(); err != nil {
			t.Fatal(err)
		}
	}
}

// Deliveries never share memory with the publisher, with each other, or
// with what the broker keeps for a redelivery, whichever way they are
// taken: with acks, with AutoAck from a queue that alone got the message
// (which hands over the broker's copy), and with AutoAck beside another
// queue.
func TestDeliveriesShareNoMemory(t *testing.T) {
	ctx := t.Context()
	tr := mem.New()
	defer tr.Close()
	declare := func() string {
		q, err := tr.DeclareQueue(ctx, transport.Queue{Exclusive: true})
		if err != nil {
			t.Fatal(err)
		}
		return q
	}
	consume := func(q string, autoAck bool) <-chan *transport.Delivery {
		ch, err := tr.Consume(ctx, q, transport.ConsumeOptions{AutoAck: autoAck, Prefetch: 1})
		if err != nil {
			t.Fatal(err)
		}
		return ch
	}
	next := func(ch <-chan *transport.Delivery) *transport.Delivery {
		select {
		case d := <-ch:
			return d
		case <-time.After(10 * time.Second):
			t.Fatal("no delivery after 10s")
			return nil
		}
	}
	publish := func(ex, key string) (body []byte, list []any) {
		body, list = []byte("body"), []any{"x"}
		msg := transport.Message{Body: body, Headers: map[string]any{"k": "v", "list": list}}
		if err := tr.Publish(ctx, ex, key, msg, transport.PublishOptions{}); err != nil {
			t.Fatal(err)
		}
		return body, list
	}
	// scribble overwrites what the caller holds of a message.
	scribble := func(body []byte, h map[string]any) {
		copy(body, "XXXX")
		if l, ok := h["list"].([]any); ok {
			l[0] = "scribbled"
		}
		h["k"] = "scribbled"
	}
	check := func(what string, d *transport.Delivery) {
		t.Helper()
		if string(d.Body) != "body" || d.Headers["k"] != "v" || d.Headers["list"].([]any)[0] != "x" {
			t.Errorf("%s: got body %q headers %v, want the message as published", what, d.Body, d.Headers)
		}
	}

	// AutoAck from the only queue: the publisher's body stays its own (its
	// headers it does not modify once published: transport.Message), and
	// the consumer's changes to the headers do not reach the publisher's.
	sole := declare()
	body, list := publish("", sole)
	d := next(consume(sole, true))
	copy(body, "XXXX")
	check("sole AutoAck delivery after the publisher scribbled on its body", d)
	scribble(d.Body, d.Headers)
	if list[0] != "x" {
		t.Errorf("the published headers after the sole AutoAck consumer scribbled: list %v", list)
	}

	// With acks: a requeued message comes back as published.
	acked := declare()
	publish("", acked)
	ch := consume(acked, false)
	d = next(ch)
	scribble(d.Body, d.Headers)
	if err := d.Nack(true); err != nil {
		t.Fatal(err)
	}
	d = next(ch)
	check("redelivery after the first consumer scribbled", d)
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}

	// Fanout to two AutoAck queues: each gets its own copy.
	if err := tr.DeclareExchange(ctx, transport.Exchange{Name: "fan", Kind: transport.Fanout}); err != nil {
		t.Fatal(err)
	}
	qa, qb := declare(), declare()
	for _, q := range []string{qa, qb} {
		if err := tr.Bind(ctx, transport.Binding{Exchange: "fan", Queue: q}); err != nil {
			t.Fatal(err)
		}
	}
	publish("fan", "")
	da := next(consume(qa, true))
	scribble(da.Body, da.Headers)
	check("fanout AutoAck delivery after the other queue's consumer scribbled", next(consume(qb, true)))
}

// ConsumeFunc hands an AutoAck consumer's deliveries to its callback, in
// order and one call at a time; a message published while the callback is
// idle is handed over before Publish returns, on the publisher's
// goroutine; the channel returned closes once the consumer ended and the
// last call returned.
func TestConsumeFunc(t *testing.T) {
	ctx := t.Context()
	tr := mem.New()
	defer tr.Close()
	q, err := tr.DeclareQueue(ctx, transport.Queue{Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.ConsumeFunc(ctx, q, transport.ConsumeOptions{AutoAck: true}, nil); err == nil {
		t.Fatal("ConsumeFunc without a callback: no error")
	}
	publish := func(body string) { // on any goroutine
		if err := tr.Publish(ctx, transport.DefaultExchange, q, transport.Message{Body: []byte(body)}, transport.PublishOptions{}); err != nil {
			t.Error(err)
		}
	}
	publish("before") // waiting in the queue: a broker goroutine hands it over

	var (
		mu      sync.Mutex
		got     []string
		running atomic.Int32
		overlap atomic.Bool
		block   = make(chan struct{})
		blocked = make(chan struct{})
	)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done, err := tr.ConsumeFunc(cctx, q, transport.ConsumeOptions{AutoAck: true}, func(d *transport.Delivery) {
		if running.Add(1) > 1 {
			overlap.Store(true)
		}
		defer running.Add(-1)
		if string(d.Body) == "block" {
			close(blocked)
			<-block
		}
		mu.Lock()
		got = append(got, string(d.Body))
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(got)
	}
	for count() < 1 {
		time.Sleep(time.Millisecond) // the broker's goroutine, bounded by the test's timeout
	}
	// Idle: the publisher hands its message over itself.
	publish("inline")
	if n := count(); n != 2 {
		t.Fatalf("after Publish returned the callback had %d deliveries, want 2", n)
	}
	// Several publishers: one call at a time, each publisher's in order.
	const publishers, each = 4, 200
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := range each {
				publish(fmt.Sprintf("p%d-%d", p, i))
			}
		})
	}
	wg.Wait()
	if n := count(); n != 2+publishers*each {
		t.Fatalf("%d deliveries, want %d", n, 2+publishers*each)
	}
	if overlap.Load() {
		t.Error("callback calls overlapped")
	}
	mu.Lock()
	next := make([]int, publishers)
	for _, b := range got[2:] {
		var p, i int
		if _, err := fmt.Sscanf(b, "p%d-%d", &p, &i); err != nil || i != next[p] {
			t.Fatalf("delivery %q out of order (want p%d-%d next)", b, p, next[p])
		}
		next[p]++
	}
	mu.Unlock()

	// The consumer ends while a call runs: done closes after it returned.
	go publish("block")
	<-blocked
	cancel()
	select {
	case <-done:
		t.Fatal("done closed while the callback ran")
	case <-time.After(50 * time.Millisecond):
	}
	close(block)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("done not closed 10s after the consumer ended")
	}
}

// ConsumeFunc without AutoAck: prefetch bounds what the callback holds
// unsettled; the settlement that makes room hands the next delivery over
// before it returns, on its goroutine; what the consumer held when it
// ended is requeued.
func TestConsumeFuncAcks(t *testing.T) {
	ctx := t.Context()
	tr := mem.New()
	defer tr.Close()
	q, err := tr.DeclareQueue(ctx, transport.Queue{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"m1", "m2", "m3"} {
		if err := tr.Publish(ctx, transport.DefaultExchange, q, transport.Message{Body: []byte(b)}, transport.PublishOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var (
		mu  sync.Mutex
		got []*transport.Delivery
	)
	last := func() (*transport.Delivery, int) {
		mu.Lock()
		defer mu.Unlock()
		if len(got) == 0 {
			return nil, 0
		}
		return got[len(got)-1], len(got)
	}
	cctx, cancel := context.WithCancel(ctx)
	done, err := tr.ConsumeFunc(cctx, q, transport.ConsumeOptions{Prefetch: 1}, func(d *transport.Delivery) {
		mu.Lock()
		got = append(got, d)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	d, n := last()
	for n == 0 {
		time.Sleep(time.Millisecond) // a broker goroutine hands m1 over, bounded by the test's timeout
		d, n = last()
	}
	if string(d.Body) != "m1" {
		t.Fatalf("first delivery %q", d.Body)
	}
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
	if d, n = last(); n != 2 || string(d.Body) != "m2" {
		t.Fatalf("after the ack returned: %d deliveries, the last %q; want m2 handed over", n, d.Body)
	}
	if err := d.Nack(true); err != nil {
		t.Fatal(err)
	}
	if d, n = last(); n != 3 || string(d.Body) != "m2" || !d.Redelivered {
		t.Fatalf("after the nack returned: %d deliveries, the last %q (redelivered %v); want m2 again", n, d.Body, d.Redelivered)
	}
	cancel() // holding m2 unsettled
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("done not closed 10s after the consumer ended")
	}
	info, err := tr.InspectQueue(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if info.Messages != 2 {
		t.Fatalf("%d messages ready after the consumer ended, want 2 (m2 requeued, m3)", info.Messages)
	}
}
