package amqp

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenrpc/warren/transport"
)

// consumer forwards the deliveries of one AMQP consumer, on its own channel,
// to the channel returned by Consume.
type consumer struct {
	t     *Transport
	l     *link
	ch    *amqp091.Channel
	queue string
	tag   string
	out   chan *transport.Delivery
	done  chan struct{} // closed when run has returned

	// settling is held (read) by each ack or nack while it is sent, and
	// (write) by run when it closes the channel: once closing is set, no
	// ack or nack goes out. RabbitMQ closes the whole connection (504
	// CHANNEL_ERROR "expected 'channel.open'") on a frame that arrives on
	// a channel after its channel.close, and amqp091-go sends one if an
	// ack races the close.
	settling sync.RWMutex
	closing  bool
}

// Consume starts a consumer on queue, on its own channel of the consume
// connection with basic.qos prefetch opts.Prefetch (0 means 1). Deliveries
// arrive on the returned channel until ctx ends, the transport is closed,
// the connection is lost or the queue is deleted; then the consumer is
// cancelled, its channel closed (the broker requeues what was not settled)
// and the returned channel closed, in that order. A consumer does not
// outlive a connection loss: consume again once the transport has
// reconnected (Consume waits for that, honouring ctx).
//
// A missing queue is ErrNotFound; an exclusive consumer on a queue that
// already has consumers, or any consumer on a queue consumed exclusively or
// declared exclusive by another connection, is ErrPrecondition.
func (t *Transport) Consume(ctx context.Context, queue string, opts transport.ConsumeOptions) (<-chan *transport.Delivery, error) {
	const op = "consume queue"
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("amqp: %s %q: %w", op, queue, err)
	}
	if opts.Prefetch < 0 || opts.Prefetch > 65535 {
		return nil, fmt.Errorf("amqp: %s %q: prefetch %d out of range 0-65535", op, queue, opts.Prefetch)
	}
	prefetch := max(opts.Prefetch, 1)
	tag := opts.Tag
	if tag == "" {
		tag = newTag()
	}
	for _, f := range []struct{ what, s string }{{"queue name", queue}, {"consumer tag", tag}} {
		if err := checkShort(f.what, f.s); err != nil {
			return nil, fmt.Errorf("amqp: %s %q: %w", op, queue, err)
		}
	}

	l, err := t.link(ctx, op, queue)
	if err != nil {
		return nil, err
	}
	var (
		ch         *amqp091.Channel
		deliveries <-chan amqp091.Delivery
		closes     chan *amqp091.Error
		cancels    chan string
	)
	setup := func() error {
		c, err := l.cons.c.Channel()
		if err != nil {
			return err
		}
		ch = c
		// Registered before basic.consume so that nothing is missed. One
		// consumer per channel: one close and at most one cancel, so a
		// buffer of one means amqp091 never waits on us.
		closes = ch.NotifyClose(make(chan *amqp091.Error, 1))
		cancels = ch.NotifyCancel(make(chan string, 1))
		if err = ch.Qos(prefetch, 0, false); err == nil {
			deliveries, err = ch.Consume(queue, tag, opts.AutoAck, opts.Exclusive, false, false, nil)
		}
		if err != nil && !ch.IsClosed() {
			_ = ch.Close()
		}
		return err
	}
	for {
		ch = nil
		err = t.await(ctx, setup, func() {
			if ch != nil {
				_ = ch.Close()
			}
		})
		if (ctx.Err() != nil && err == ctx.Err()) || err == nil || ch != nil {
			break
		}
		// No channel could be opened: nothing was sent. When the link is
		// gone, wait for the next one.
		t.noticeLoss(l, err)
		if !l.isLost() || t.closed.Load() {
			break
		}
		if l, err = t.link(ctx, op, queue); err != nil {
			return nil, err
		}
	}
	if err != nil {
		if ctx.Err() != nil && err == ctx.Err() {
			return nil, fmt.Errorf("amqp: %s %q: %w", op, queue, err)
		}
		return nil, t.mapErr(l, op, queue, err)
	}

	c := &consumer{
		t:     t,
		l:     l,
		ch:    ch,
		queue: queue,
		tag:   tag,
		out:   make(chan *transport.Delivery),
		done:  make(chan struct{}),
	}
	t.mu.Lock()
	if t.closed.Load() {
		t.mu.Unlock()
		_ = ch.Close()
		return nil, fmt.Errorf("amqp: %s %q: %w", op, queue, transport.ErrClosed)
	}
	t.consumers[c] = struct{}{}
	t.mu.Unlock()
	go c.run(ctx, deliveries, closes, cancels, opts.AutoAck)
	return c.out, nil
}

func (c *consumer) run(ctx context.Context, deliveries <-chan amqp091.Delivery, closes <-chan *amqp091.Error, cancels <-chan string, autoAck bool) {
	t := c.t
	defer close(c.done)
	log := t.log.With("queue", c.queue, "consumer", c.tag)
	why := "context done"
	var chErr error // the channel's close error, if that ended the consumer
loop:
	for {
		select {
		case d, ok := <-deliveries:
			if !ok {
				why = "cancelled by the broker or channel closed"
				break loop
			}
			del := c.delivery(&d, autoAck)
			select {
			case c.out <- del:
			case <-ctx.Done():
				break loop
			case <-t.closing:
				why = "transport closed"
				break loop
			case <-c.l.lost:
				why = "connection lost"
				break loop
			case e := <-closes:
				why = fmt.Sprintf("channel closed: %v", e)
				chErr = amqpErr(e)
				break loop
			}
		case <-ctx.Done():
			break loop
		case <-t.closing:
			why = "transport closed"
			break loop
		case <-c.l.lost:
			why = "connection lost"
			break loop
		case e := <-closes:
			why = fmt.Sprintf("channel closed: %v", e)
			chErr = amqpErr(e)
			break loop
		case tag := <-cancels:
			log.Debug("consumer cancelled by the broker", "tag", tag)
			// deliveries closes next.
			cancels = nil
		}
	}
	if !c.ch.IsClosed() && !c.l.isLost() {
		// Stop deliveries, then close the channel: the broker requeues
		// whatever was delivered and not settled. (A lost link's
		// connections are closed by the supervisor, which may not get an
		// answer from the broker.) No ack or nack is sent from here on.
		c.settling.Lock()
		c.closing = true
		c.settling.Unlock()
		_ = c.ch.Cancel(c.tag, false)
		_ = c.ch.Close()
	}
	if chErr != nil || why == "cancelled by the broker or channel closed" {
		t.noticeLoss(c.l, chErr)
	}
	log.Debug("consumer stopped", "why", why)
	t.mu.Lock()
	delete(t.consumers, c)
	t.mu.Unlock()
	close(c.out)
}

// amqpErr returns e as an error, nil when e is nil.
func amqpErr(e *amqp091.Error) error {
	if e == nil {
		return nil
	}
	return e
}

// delivery converts d, with a settlement that refuses a second call and
// reports a closed channel as ErrConnectionLost.
func (c *consumer) delivery(d *amqp091.Delivery, autoAck bool) *transport.Delivery {
	var del *transport.Delivery
	if autoAck {
		del = transport.NewDelivery(fromDelivery(d), nil)
	} else {
		// One allocation for the delivery and its settlement.
		s := &settlement{c: c, tag: d.DeliveryTag}
		s.d = *transport.NewSettledDelivery(fromDelivery(d), s)
		del = &s.d
	}
	del.Exchange = d.Exchange
	del.RoutingKey = d.RoutingKey
	del.Redelivered = d.Redelivered
	del.ConsumerTag = c.tag
	return del
}

// settlement is a Delivery with what settles it.
type settlement struct {
	d       transport.Delivery
	settled atomic.Bool
	c       *consumer
	tag     uint64
}

// Settle acks or nacks the delivery once (transport.Settler).
func (s *settlement) Settle(ack, requeue bool) error {
	op := "ack"
	if !ack {
		op = "nack"
	}
	c := s.c
	if !s.settled.CompareAndSwap(false, true) {
		return fmt.Errorf("amqp: %s on queue %q: %w", op, c.queue, transport.ErrAlreadySettled)
	}
	c.settling.RLock()
	defer c.settling.RUnlock()
	if c.closing {
		return fmt.Errorf("amqp: %s on queue %q: the consumer has stopped, its channel is closing and the broker requeues the message: %w",
			op, c.queue, transport.ErrConnectionLost)
	}
	if c.l.isLost() {
		// The link is lost (its other connection, maybe): the supervisor
		// is closing this one too, and the broker requeues what it
		// delivered. Sent now, the ack might still reach the broker,
		// and the caller could not tell which happened.
		return fmt.Errorf("amqp: %s on queue %q: the connection is lost and the broker requeues the message: %w",
			op, c.queue, transport.ErrConnectionLost)
	}
	var err error
	if ack {
		err = c.ch.Ack(s.tag, false)
	} else {
		err = c.ch.Nack(s.tag, false, requeue)
	}
	if err != nil {
		return fmt.Errorf("amqp: %s on queue %q: the consumer's channel is closed and the broker requeues the message: %w (%v)",
			op, c.queue, transport.ErrConnectionLost, err)
	}
	return nil
}

// await runs fn, honouring ctx: when ctx ends first it returns ctx.Err() and
// leaves fn to finish in a goroutine owned by t, which then calls abandon.
// After Close it returns ErrClosed without calling fn.
func (t *Transport) await(ctx context.Context, fn func() error, abandon func()) error {
	if ctx.Done() == nil {
		return fn()
	}
	if !t.addWork() {
		return transport.ErrClosed
	}
	var (
		mu        sync.Mutex
		finished  bool
		abandoned bool
		result    error
		done      = make(chan struct{})
	)
	go func() {
		defer t.wg.Done()
		err := fn()
		mu.Lock()
		defer mu.Unlock()
		if abandoned {
			abandon()
			return
		}
		finished, result = true, err
		close(done)
	}()
	select {
	case <-done:
		return result
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		if finished {
			return result
		}
		abandoned = true
		return ctx.Err()
	}
}

// addWork counts a goroutine that Close must wait for; false after Close.
func (t *Transport) addWork() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed.Load() {
		return false
	}
	t.wg.Add(1)
	return true
}
