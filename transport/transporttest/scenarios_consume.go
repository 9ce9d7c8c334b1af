package transporttest

import (
	"context"
	"fmt"
	"sync"

	"github.com/warrenrpc/warren/transport"
)

func competingConsumersRoundRobin(e *env) {
	a, b := e.open(), e.open()
	q := e.queue(a, transport.Queue{})
	ca := e.consume(a, q, transport.ConsumeOptions{Prefetch: 1})
	cb := e.consume(b, q, transport.ConsumeOptions{Prefetch: 1})
	e.publish(a, transport.DefaultExchange, q, "m1")
	e.publish(a, transport.DefaultExchange, q, "m2")
	e.publish(a, transport.DefaultExchange, q, "m3")
	// With prefetch 1 each consumer holds one message; the third waits.
	da, db := e.recv(ca), e.recv(cb)
	if got := string(da.Body) + string(db.Body); got != "m1m2" && got != "m2m1" {
		e.t.Fatalf("consumers got %q and %q, want m1 and m2 shared", da.Body, db.Body)
	}
	e.none(ca)
	e.none(cb)
	e.ack(db)
	e.ack(e.recvBody(cb, "m3"))
	e.ack(da)
	e.closedAfter(ca)
	e.closedAfter(cb)

	// Work is shared: 20 messages to two consumers that ack at once.
	ca2 := e.consume(a, q, transport.ConsumeOptions{Prefetch: 1})
	cb2 := e.consume(b, q, transport.ConsumeOptions{Prefetch: 1})
	const n = 20
	counts := make([]int, 2)
	var wg sync.WaitGroup
	var mu sync.Mutex
	total := 0
	done := make(chan struct{})
	for i, c := range []consumer{ca2, cb2} {
		wg.Go(func() {
			for d := range c.ch {
				if d.Ack() != nil {
					continue
				}
				mu.Lock()
				counts[i]++
				total++
				if total == n {
					close(done)
				}
				mu.Unlock()
			}
		})
	}
	for i := range n {
		e.publish(a, transport.DefaultExchange, q, fmt.Sprint("w", i))
	}
	e.await(done, "20 messages consumed")
	ca2.cancel()
	cb2.cancel()
	wg.Wait()
	if total != n || counts[0] == 0 || counts[1] == 0 {
		e.t.Fatalf("consumers took %v of %d messages, want all shared by both", counts, n)
	}
}

func prefetchBoundsUnacked(e *env) {
	tr := e.open()
	q := e.queue(tr, transport.Queue{})
	for i := range 5 {
		e.publish(tr, transport.DefaultExchange, q, fmt.Sprint("m", i))
	}
	c := e.consume(tr, q, transport.ConsumeOptions{Prefetch: 3})
	d0 := e.recvBody(c, "m0")
	d1 := e.recvBody(c, "m1")
	e.recvBody(c, "m2")
	e.none(c)
	e.ack(d1)
	d3 := e.recvBody(c, "m3")
	e.none(c)
	e.ack(d0)
	e.ack(d3)
	e.recvBody(c, "m4")
}

func unackedRedeliveredOnConsumerCancel(e *env) {
	tr := e.open()
	q := e.queue(tr, transport.Queue{})
	e.publish(tr, transport.DefaultExchange, q, "m1")
	e.publish(tr, transport.DefaultExchange, q, "m2")
	e.publish(tr, transport.DefaultExchange, q, "m3")
	c := e.consume(tr, q, transport.ConsumeOptions{Prefetch: 3})
	for _, want := range []string{"m1", "m2", "m3"} {
		if d := e.recvBody(c, want); d.Redelivered {
			e.t.Fatalf("first delivery of %s has Redelivered set", want)
		}
	}
	c.cancel()
	e.closed(c)
	c2 := e.consume(tr, q, transport.ConsumeOptions{Prefetch: 3})
	for _, want := range []string{"m1", "m2", "m3"} {
		d := e.recvBody(c2, want)
		if !d.Redelivered {
			e.t.Errorf("redelivery of %s: Redelivered not set", want)
		}
		e.ack(d)
	}
	e.none(c2)
}

func unackedRedeliveredOnClose(e *env) {
	a, b := e.open(), e.open()
	q := e.queue(b, transport.Queue{})
	e.publish(b, transport.DefaultExchange, q, "m1")
	e.publish(b, transport.DefaultExchange, q, "m2")
	c := e.consume(a, q, transport.ConsumeOptions{Prefetch: 1})
	d := e.recvBody(c, "m1")
	if err := a.Close(); err != nil {
		e.t.Fatalf("close: %v", err)
	}
	e.closed(c)
	if err := d.Ack(); err == nil {
		e.t.Errorf("ack after Close returned nil; the message was requeued")
	}
	c2 := e.consume(b, q, transport.ConsumeOptions{Prefetch: 2})
	d = e.recvBody(c2, "m1")
	if !d.Redelivered {
		e.t.Errorf("redelivery after Close: Redelivered not set")
	}
	e.ack(d)
	d = e.recvBody(c2, "m2")
	if d.Redelivered {
		e.t.Errorf("m2 was never delivered but has Redelivered set")
	}
	e.ack(d)
}

func nackRequeue(e *env) {
	tr := e.open()
	q := e.queue(tr, transport.Queue{})
	e.publish(tr, transport.DefaultExchange, q, "m1")
	e.publish(tr, transport.DefaultExchange, q, "m2")
	c := e.consume(tr, q, transport.ConsumeOptions{Prefetch: 1})
	e.nack(e.recvBody(c, "m1"), true)
	// Back at its place, the head of the queue.
	d := e.recvBody(c, "m1")
	if !d.Redelivered {
		e.t.Errorf("requeued message: Redelivered not set")
	}
	e.ack(d)
	d = e.recvBody(c, "m2")
	if d.Redelivered {
		e.t.Errorf("m2: Redelivered set")
	}
	e.ack(d)
}

// requeueOrder: where requeued messages go. Messages a consumer held when
// it went away go in front of those never delivered, in their order. A
// message nacked with requeue goes back to its original position in a
// classic queue, in front in a quorum queue with a delivery limit, and to
// the back of a quorum queue without one (RabbitMQ 3.10).
func requeueOrder(e *env) {
	tr := e.open()
	for _, tc := range []struct {
		name      string
		typ       transport.QueueType
		limit     int
		afterNack []string
	}{
		{"classic", transport.Classic, 0, []string{"m1", "m2", "m3"}},
		{"quorum", transport.Quorum, 0, []string{"m2", "m3", "m1"}},
		{"quorum with delivery limit", transport.Quorum, 10, []string{"m1", "m2", "m3"}},
	} {
		q := e.queue(tr, transport.Queue{Type: tc.typ, Durable: true, DeliveryLimit: tc.limit})
		for _, m := range []string{"m1", "m2", "m3", "m4"} {
			e.publish(tr, transport.DefaultExchange, q, m)
		}
		c := e.consume(tr, q, transport.ConsumeOptions{Prefetch: 2})
		e.recvBody(c, "m1")
		e.recvBody(c, "m2")
		e.closedAfter(c)
		e.equalStrings(tc.name+" queue after its consumer went away", e.contents(tr, q), []string{"m1", "m2", "m3", "m4"})

		for _, m := range []string{"m1", "m2", "m3"} {
			e.publish(tr, transport.DefaultExchange, q, m)
		}
		c = e.consume(tr, q, transport.ConsumeOptions{Prefetch: 1})
		e.nack(e.recvBody(c, "m1"), true)
		var got []string
		for range 3 {
			d := e.recv(c)
			e.ack(d)
			got = append(got, string(d.Body))
		}
		e.equalStrings(tc.name+" queue after a nack with requeue", got, tc.afterNack)
		e.closedAfter(c)
	}
}

func autoAckNotRedelivered(e *env) {
	tr := e.open()
	q := e.queue(tr, transport.Queue{})
	e.publish(tr, transport.DefaultExchange, q, "m1")
	c := e.consume(tr, q, transport.ConsumeOptions{AutoAck: true})
	d := e.recvBody(c, "m1")
	if err := d.Ack(); err != nil {
		e.t.Errorf("Ack of an auto-acknowledged delivery: %v, want nil", err)
	}
	if err := d.Nack(true); err != nil {
		e.t.Errorf("Nack of an auto-acknowledged delivery: %v, want nil", err)
	}
	c.cancel()
	e.closed(c)
	e.equalStrings("queue after auto-ack consumer", e.contents(tr, q), nil)
}

func ackTwiceErrAlreadySettled(e *env) {
	tr := e.open()
	q := e.queue(tr, transport.Queue{})
	for i := range 4 {
		e.publish(tr, transport.DefaultExchange, q, fmt.Sprint("m", i))
	}
	c := e.consume(tr, q, transport.ConsumeOptions{Prefetch: 1})
	d := e.recvBody(c, "m0")
	e.ack(d)
	e.wantErr("second Ack", d.Ack(), transport.ErrAlreadySettled)
	e.wantErr("Nack after Ack", d.Nack(true), transport.ErrAlreadySettled)
	d = e.recvBody(c, "m1")
	e.nack(d, false)
	e.wantErr("Ack after Nack", d.Ack(), transport.ErrAlreadySettled)
	d = e.recvBody(c, "m2")
	e.nack(d, true)
	e.wantErr("Nack after Nack", d.Nack(true), transport.ErrAlreadySettled)
	// The consumer keeps working: m2 comes back, then m3.
	d = e.recvBody(c, "m2")
	e.ack(d)
	e.ack(e.recvBody(c, "m3"))
}

func exclusiveConsumer(e *env) {
	a, b := e.open(), e.open()
	q := e.queue(a, transport.Queue{})
	ca := e.consume(a, q, transport.ConsumeOptions{Exclusive: true})
	_, err := b.Consume(e.ctx(), q, transport.ConsumeOptions{})
	e.wantErr("consume a queue with an exclusive consumer", err, transport.ErrPrecondition)
	_, err = b.Consume(e.ctx(), q, transport.ConsumeOptions{Exclusive: true})
	e.wantErr("second exclusive consumer", err, transport.ErrPrecondition)
	e.publish(b, transport.DefaultExchange, q, "m1")
	e.ack(e.recvBody(ca, "m1"))
	ca.cancel()
	e.closed(ca)
	// The queue is free again, but an exclusive consumer needs it to itself.
	var cb consumer
	e.eventually("consume after the exclusive consumer ended", func() error {
		ctx, cancel := context.WithCancel(e.ctx())
		ch, err := b.Consume(ctx, q, transport.ConsumeOptions{})
		if err != nil {
			cancel()
			return err
		}
		e.t.Cleanup(cancel)
		cb = consumer{ch: ch, cancel: cancel}
		return nil
	})
	_, err = a.Consume(e.ctx(), q, transport.ConsumeOptions{Exclusive: true})
	e.wantErr("exclusive consume of a queue with a consumer", err, transport.ErrPrecondition)
	e.publish(a, transport.DefaultExchange, q, "m2")
	e.ack(e.recvBody(cb, "m2"))
}

func consumeCtxCancelClosesChannel(e *env) {
	tr := e.open()
	q := e.queue(tr, transport.Queue{})
	c := e.consume(tr, q, transport.ConsumeOptions{})
	c.cancel()
	e.closed(c)
	// The cancelled consumer takes nothing more.
	e.publish(tr, transport.DefaultExchange, q, "after")
	e.equalStrings("queue", e.contents(tr, q), []string{"after"})
}

func deleteQueueEndsConsumer(e *env) {
	a, b := e.open(), e.open()
	q := e.queue(a, transport.Queue{})
	c := e.consume(a, q, transport.ConsumeOptions{Prefetch: 2})
	e.publish(b, transport.DefaultExchange, q, "m1")
	d := e.recvBody(c, "m1")
	if err := b.DeleteQueue(e.ctx(), q); err != nil {
		e.t.Fatalf("delete queue: %v", err)
	}
	e.closed(c)
	// Settling a message of a deleted queue is harmless.
	_ = d.Ack()
	// The transport that consumed still works.
	q2 := e.queue(a, transport.Queue{})
	e.publish(a, transport.DefaultExchange, q2, "m2")
	e.equalStrings("another queue", e.contents(a, q2), []string{"m2"})
}

// concurrentPublishConsume has publishers and consumers on several
// connections at once; with acks, each message arrives exactly once.
func concurrentPublishConsume(e *env) {
	const publishers, perPublisher, consumers = 4, 50, 3
	const n = publishers * perPublisher
	setup := e.open()
	q := e.queue(setup, transport.Queue{})
	var mu sync.Mutex
	seen := make(map[string]int)
	total := 0
	done := make(chan struct{})
	var wg sync.WaitGroup
	var cs []consumer
	for i := range consumers {
		c := e.consume(e.open(), q, transport.ConsumeOptions{Prefetch: 1 + 4*i})
		cs = append(cs, c)
		wg.Go(func() {
			for d := range c.ch {
				err := d.Ack()
				mu.Lock()
				if err != nil {
					if total < n {
						e.t.Errorf("ack: %v", err)
					}
					mu.Unlock()
					continue
				}
				seen[string(d.Body)]++
				total++
				if total == n {
					close(done)
				}
				mu.Unlock()
			}
		})
	}
	var pwg sync.WaitGroup
	for p := range publishers {
		tr := e.open()
		pwg.Go(func() {
			for i := range perPublisher {
				opts := transport.PublishOptions{Confirm: i%2 == 0}
				if err := tr.Publish(e.ctx(), transport.DefaultExchange, q, transport.Message{Body: fmt.Appendf(nil, "p%d-%d", p, i)}, opts); err != nil {
					e.t.Errorf("publish: %v", err)
					return
				}
			}
		})
	}
	pwg.Wait()
	e.await(done, "all messages consumed")
	for _, c := range cs {
		c.cancel()
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	for p := range publishers {
		for i := range perPublisher {
			if k := seen[fmt.Sprintf("p%d-%d", p, i)]; k != 1 {
				e.t.Errorf("message p%d-%d received %d times, want 1", p, i, k)
			}
		}
	}
	if total != n {
		e.t.Errorf("received %d deliveries, want %d", total, n)
	}
}

// exclusiveConsumerQuorum: a quorum queue ignores consumer exclusivity, as
// RabbitMQ 3.10 does: an exclusive consumer does not keep others out, nor
// is one refused when others consume. InspectQueue counts them all.
func exclusiveConsumerQuorum(e *env) {
	a, b := e.open(), e.open()
	q := e.queue(a, transport.Queue{Name: e.name("qq"), Type: transport.Quorum, Durable: true})
	e.consume(a, q, transport.ConsumeOptions{Exclusive: true})
	e.consume(b, q, transport.ConsumeOptions{Exclusive: true})
	e.consume(b, q, transport.ConsumeOptions{})
	e.eventually("three consumers", func() error {
		info, err := a.InspectQueue(e.ctx(), q)
		if err == nil && info.Consumers != 3 {
			err = fmt.Errorf("%d consumers", info.Consumers)
		}
		return err
	})
}
