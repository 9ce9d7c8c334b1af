package mem

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenrpc/warren/transport"
)

// Conn is one connection to a [Broker]: a [transport.Transport]. Its
// exclusive queues and its consumers are its own, as on an AMQP connection.
// All methods are safe for concurrent use.
type Conn struct {
	b          *Broker
	ownsBroker bool // New made the broker: Close closes it too

	closed    atomic.Bool
	closeOnce sync.Once
	wg        sync.WaitGroup // consumer goroutines

	mu        sync.Mutex // guards the maps; taken before Broker.mu
	consumers map[*consumer]struct{}
	exclusive map[*queue]struct{}

	// returns gets the returns of Unconfirmed publishes (NotifyReturn).
	returns transport.Returns
}

var (
	_ transport.Transport    = (*Conn)(nil)
	_ transport.Returner     = (*Conn)(nil)
	_ transport.FuncConsumer = (*Conn)(nil)
)

var ctagSeq atomic.Uint64

// maxChannelBuffer bounds the buffer of a consumer's channel; deliveries
// beyond it, for a large prefetch or AutoAck, wait in the consumer's
// overflow.
const maxChannelBuffer = 256

func (c *Conn) check(ctx context.Context) error {
	if c.closed.Load() {
		return transport.ErrClosed
	}
	return ctx.Err()
}

// DeclareExchange implements [transport.Transport].
func (c *Conn) DeclareExchange(ctx context.Context, ex transport.Exchange) error {
	if err := c.check(ctx); err != nil {
		return err
	}
	switch ex.Kind {
	case transport.Direct, transport.Fanout, transport.Topic:
	default:
		return fmt.Errorf("mem: declare exchange %q: unknown kind %q", ex.Name, ex.Kind)
	}
	if ex.Name == transport.DefaultExchange {
		return fmt.Errorf("mem: declare exchange: the default exchange cannot be declared: %w", transport.ErrPrecondition)
	}
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if old := b.exchanges[ex.Name]; old != nil {
		if old.cfg != ex {
			return fmt.Errorf("mem: declare exchange %q: %+v conflicts with existing %+v: %w", ex.Name, ex, old.cfg, transport.ErrPrecondition)
		}
		return nil
	}
	if strings.HasPrefix(ex.Name, "amq.") {
		return fmt.Errorf("mem: declare exchange %q: reserved prefix amq.: %w", ex.Name, transport.ErrPrecondition)
	}
	b.exchanges[ex.Name] = newExchange(ex)
	return nil
}

// normQueue validates q and returns it as the broker compares it: Type
// set, durations at the millisecond resolution of the wire.
func normQueue(q transport.Queue) (transport.Queue, error) {
	bad := func(format string, args ...any) (transport.Queue, error) {
		return q, fmt.Errorf("mem: declare queue %q: %s: %w", q.Name, fmt.Sprintf(format, args...), transport.ErrPrecondition)
	}
	switch q.Type {
	case "":
		q.Type = transport.Classic
	case transport.Classic, transport.Quorum:
	default:
		return bad("unknown queue type %q", q.Type)
	}
	if q.Type == transport.Quorum {
		if q.Exclusive {
			return bad("quorum queues cannot be exclusive")
		}
		if q.AutoDelete {
			return bad("quorum queues cannot be auto-delete")
		}
		q.Durable = true
	} else if q.DeliveryLimit != 0 {
		return bad("DeliveryLimit needs a quorum queue")
	}
	if q.MessageTTL < 0 || q.Expires < 0 || q.MaxLength < 0 || q.DeliveryLimit < 0 {
		return bad("negative argument")
	}
	q.MessageTTL = q.MessageTTL.Truncate(time.Millisecond)
	if q.Expires > 0 && q.Expires < time.Millisecond {
		return bad("Expires must be at least 1ms")
	}
	q.Expires = q.Expires.Truncate(time.Millisecond)
	return q, nil
}

// DeclareQueue implements [transport.Transport].
func (c *Conn) DeclareQueue(ctx context.Context, q transport.Queue) (string, error) {
	if err := c.check(ctx); err != nil {
		return "", err
	}
	cfg, err := normQueue(q)
	if err != nil {
		return "", err
	}
	if cfg.Name == "" {
		cfg.Name = generatedName()
	} else if strings.HasPrefix(cfg.Name, "amq.") {
		return "", fmt.Errorf("mem: declare queue %q: reserved prefix amq.: %w", cfg.Name, transport.ErrPrecondition)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return "", transport.ErrClosed
	}
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if old := b.queues[cfg.Name]; old != nil {
		if err := old.access(c); err != nil {
			return "", err
		}
		if old.cfg.Exclusive != cfg.Exclusive {
			return "", fmt.Errorf("mem: declare queue %q: exclusive does not match the existing queue: %w", cfg.Name, transport.ErrPrecondition)
		}
		if old.cfg != cfg {
			return "", fmt.Errorf("mem: declare queue %q: %+v conflicts with existing %+v: %w", cfg.Name, cfg, old.cfg, transport.ErrPrecondition)
		}
		old.mu.Lock()
		old.armExpires() // a declaration is a use
		old.mu.Unlock()
		return cfg.Name, nil
	}
	nq := &queue{b: b, name: cfg.Name, cfg: cfg}
	if cfg.Exclusive {
		nq.owner = c
		c.exclusive[nq] = struct{}{}
	}
	b.queues[cfg.Name] = nq
	nq.mu.Lock()
	nq.armExpires()
	nq.mu.Unlock()
	return cfg.Name, nil
}

// access refuses a connection that does not own an exclusive queue, as
// RabbitMQ does with 405 RESOURCE_LOCKED (reported as ErrPrecondition).
func (q *queue) access(c *Conn) error {
	if q.owner != nil && q.owner != c {
		return fmt.Errorf("mem: queue %q is exclusive to another connection: %w", q.name, transport.ErrPrecondition)
	}
	return nil
}

// InspectQueue implements [transport.Transport]. Like RabbitMQ's passive
// declare it counts as a use of the queue (x-expires starts again).
func (c *Conn) InspectQueue(ctx context.Context, name string) (transport.QueueInfo, error) {
	if err := c.check(ctx); err != nil {
		return transport.QueueInfo{}, err
	}
	c.b.mu.RLock()
	q := c.b.queues[name]
	c.b.mu.RUnlock()
	if q == nil {
		return transport.QueueInfo{}, fmt.Errorf("mem: inspect queue %q: %w", name, transport.ErrNotFound)
	}
	if err := q.access(c); err != nil {
		return transport.QueueInfo{}, err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.deleted {
		return transport.QueueInfo{}, fmt.Errorf("mem: inspect queue %q: %w", name, transport.ErrNotFound)
	}
	q.armExpires()
	return transport.QueueInfo{Messages: q.readyLen(), Consumers: len(q.consumers)}, nil
}

// DeleteQueue implements [transport.Transport].
func (c *Conn) DeleteQueue(ctx context.Context, name string) error {
	if err := c.check(ctx); err != nil {
		return err
	}
	c.b.mu.RLock()
	q := c.b.queues[name]
	c.b.mu.RUnlock()
	if q == nil {
		return nil
	}
	if err := q.access(c); err != nil {
		return err
	}
	c.b.deleteQueueIf(q, nil)
	return nil
}

// Bind implements [transport.Transport].
func (c *Conn) Bind(ctx context.Context, bd transport.Binding) error {
	if err := c.check(ctx); err != nil {
		return err
	}
	if bd.Exchange == transport.DefaultExchange {
		return fmt.Errorf("mem: bind queue %q: the default exchange takes no bindings: %w", bd.Queue, transport.ErrPrecondition)
	}
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	ex := b.exchanges[bd.Exchange]
	if ex == nil {
		return fmt.Errorf("mem: bind queue %q to exchange %q: exchange: %w", bd.Queue, bd.Exchange, transport.ErrNotFound)
	}
	q := b.queues[bd.Queue]
	if q == nil {
		return fmt.Errorf("mem: bind queue %q to exchange %q: queue: %w", bd.Queue, bd.Exchange, transport.ErrNotFound)
	}
	if err := q.access(c); err != nil {
		return err
	}
	ex.bind(q, bd.Key)
	return nil
}

// Unbind implements [transport.Transport].
func (c *Conn) Unbind(ctx context.Context, bd transport.Binding) error {
	if err := c.check(ctx); err != nil {
		return err
	}
	if bd.Exchange == transport.DefaultExchange {
		return fmt.Errorf("mem: unbind queue %q: the default exchange takes no bindings: %w", bd.Queue, transport.ErrPrecondition)
	}
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	ex, q := b.exchanges[bd.Exchange], b.queues[bd.Queue]
	if ex == nil || q == nil {
		return nil
	}
	if err := q.access(c); err != nil {
		return err
	}
	if ex.unbind(q, bd.Key, false) && ex.cfg.AutoDelete && len(ex.binds) == 0 {
		delete(b.exchanges, bd.Exchange)
	}
	return nil
}

// Publish implements [transport.Transport]. The broker takes the message
// before Publish returns, so a confirm costs nothing extra.
func (c *Conn) Publish(ctx context.Context, exchange, key string, msg transport.Message, opts transport.PublishOptions) error {
	if err := c.check(ctx); err != nil {
		return err
	}
	m, err := newMessage(exchange, key, msg)
	if err != nil {
		return err
	}
	err = c.b.publish(m, opts.Mandatory)
	if opts.Mandatory && opts.Unconfirmed && !opts.Confirm && errors.Is(err, transport.ErrUnroutable) {
		// As RabbitMQ's basic.return, after Publish has returned.
		r := transport.Return{Exchange: exchange, Key: key, MessageID: msg.MessageID, CorrelationID: msg.CorrelationID, Err: err}
		go c.returns.Report(r)
		return nil
	}
	return err
}

// NotifyReturn implements [transport.Returner]: f gets, from a goroutine
// of its own, each Unconfirmed mandatory publish of this connection that
// no queue took. A publish to a missing exchange is ErrNotFound from
// Publish, as without Unconfirmed.
func (c *Conn) NotifyReturn(f func(transport.Return)) (stop func(), ok bool) {
	return c.returns.Add(f), true
}

// Consume implements [transport.Transport].
func (c *Conn) Consume(ctx context.Context, queue string, opts transport.ConsumeOptions) (<-chan *transport.Delivery, error) {
	cs, err := c.consume(ctx, queue, opts, nil)
	if err != nil {
		return nil, err
	}
	return cs.out, nil
}

// ConsumeFunc is Consume with the deliveries handed to f instead of a
// channel, in the order a channel would give them and one call at a time.
// f runs on the goroutine that published the message (or settled the one
// before it, which made room in the prefetch), once the broker has let go
// of it, or on one of the broker's: there is no hand-off to a goroutine
// reading a channel. f must return soon, without blocking on what the
// publishers of its queue or the settlers of its deliveries do, nor take a
// lock that they hold while they publish or settle. Without AutoAck, f
// settles what it is given as from a channel, at any time after, or
// leaves it unsettled until the consumer ends. The consumer ends as
// Consume's does; the channel returned is then closed, after f's last call
// has returned.
//
// It is the embedded broker's fast path for a mapper's reply queue and an
// agent's own queue (Warren's mappers and agents use it when their
// transport is a *Conn): it implements [transport.FuncConsumer], which the
// [transport.Transport] interface does not include.
func (c *Conn) ConsumeFunc(ctx context.Context, queue string, opts transport.ConsumeOptions, f func(*transport.Delivery)) (<-chan struct{}, error) {
	if f == nil {
		return nil, fmt.Errorf("mem: consume queue %q with a callback: nil callback", queue)
	}
	cs, err := c.consume(ctx, queue, opts, f)
	if err != nil {
		return nil, err
	}
	return cs.done, nil
}

func (c *Conn) consume(ctx context.Context, queue string, opts transport.ConsumeOptions, f func(*transport.Delivery)) (*consumer, error) {
	if err := c.check(ctx); err != nil {
		return nil, err
	}
	if opts.Prefetch < 0 {
		return nil, fmt.Errorf("mem: consume queue %q: negative prefetch %d", queue, opts.Prefetch)
	}
	cs := &consumer{
		conn:      c,
		tag:       opts.Tag,
		prefetch:  max(opts.Prefetch, 1),
		autoAck:   opts.AutoAck,
		exclusive: opts.Exclusive,
		stop:      make(chan struct{}),
		fn:        f,
	}
	buf := min(cs.prefetch, maxChannelBuffer)
	if cs.autoAck {
		// basic.qos does not bound an AutoAck consumer: a buffer of its
		// prefetch (1 by default) sends every delivery that finds the
		// consumer busy through the pump, a goroutine hop more (the
		// mapper's replies at 64 in flight).
		buf = maxChannelBuffer
	}
	if f != nil {
		cs.done = make(chan struct{})
	} else {
		cs.out = make(chan *transport.Delivery, buf)
	}
	if cs.tag == "" {
		cs.tag = "amq.ctag-mem-" + strconv.FormatUint(ctagSeq.Add(1), 10)
	}
	cs.list.next, cs.list.prev = &cs.list, &cs.list

	var dl []deadLetter
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return nil, transport.ErrClosed
	}
	b := c.b
	b.mu.RLock()
	q := b.queues[queue]
	err := func() error {
		if q == nil {
			return fmt.Errorf("mem: consume queue %q: %w", queue, transport.ErrNotFound)
		}
		if err := q.access(c); err != nil {
			return err
		}
		q.mu.Lock()
		defer q.mu.Unlock()
		if err := q.addConsumer(cs); err != nil {
			return err
		}
		cs.q = q
		var clk clock
		q.dispatch(&clk, &dl)
		q.armTTL(&clk)
		return nil
	}()
	b.mu.RUnlock()
	if err != nil {
		c.mu.Unlock()
		return nil, err
	}
	c.consumers[cs] = struct{}{}
	c.wg.Add(1)
	c.mu.Unlock()
	go cs.watch(ctx)
	b.publishDeadLetters(dl)
	return cs, nil
}

// Close implements [transport.Transport]: it ends the consumers, requeueing
// their unsettled messages, deletes the exclusive queues and waits for the
// consumer goroutines. Concurrent and repeated calls wait for the first.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed.Store(true)
		cs := make([]*consumer, 0, len(c.consumers))
		for x := range c.consumers {
			cs = append(cs, x)
		}
		qs := make([]*queue, 0, len(c.exclusive))
		for q := range c.exclusive {
			qs = append(qs, q)
		}
		c.mu.Unlock()
		for _, x := range cs {
			x.detach()
		}
		c.wg.Wait()
		for _, q := range qs {
			c.b.deleteQueueIf(q, nil)
		}
		c.b.forgetConn(c)
		if c.ownsBroker {
			c.b.Close()
		}
	})
	return nil
}

func (c *Conn) forgetQueue(q *queue) {
	c.mu.Lock()
	delete(c.exclusive, q)
	c.mu.Unlock()
}

func (c *Conn) forgetConsumer(cs *consumer) {
	c.mu.Lock()
	delete(c.consumers, cs)
	c.mu.Unlock()
}

// consumer is one Consume call: its place in the queue, its
// unacknowledged messages, and the channel the caller receives from.
//
// The queue sends deliveries on out itself, under its lock, without ever
// blocking: out has room for prefetch deliveries (up to maxChannelBuffer;
// always maxChannelBuffer for AutoAck) and a consumer holds at most
// prefetch unacknowledged ones, each either in out or with the caller.
// Deliveries that do not fit (AutoAck consumers, which basic.qos does not
// bound, or a prefetch above maxChannelBuffer)
// wait in overflow, which a pump goroutine feeds into out. A watcher goroutine per consumer ends it when
// its context does.
type consumer struct {
	q         *queue
	conn      *Conn
	tag       string
	prefetch  int
	autoAck   bool
	exclusive bool
	out       chan *transport.Delivery // nil with fn
	stop      chan struct{}            // closed when the consumer ends
	// fn takes the deliveries instead of out (ConsumeFunc): each goes to
	// overflow, and a feed (the publisher's, or the pump's) calls fn;
	// done is closed when the consumer has ended and fn returned.
	fn   func(*transport.Delivery)
	done chan struct{}

	// Guarded by q.mu.
	unacked      int
	list         qmsg // sentinel of the unacknowledged messages
	gone         bool // detached from the queue
	queueDeleted bool
	overflow     []*transport.Delivery
	ohead        int
	pumping      bool
}

// take gives qm to c. Called with q.mu held.
func (c *consumer) take(qm *qmsg, clk *clock) {
	if !c.autoAck {
		qm.c = c
		qm.prev, qm.next = c.list.prev, &c.list
		c.list.prev.next = qm
		c.list.prev = qm
		c.unacked++
	}
	d := c.delivery(qm)
	if !c.pumping && c.fn == nil {
		select {
		case c.out <- d:
			return
		default:
		}
	}
	c.overflow = append(c.overflow, d)
	if !c.pumping {
		c.pumping = true
		if c.fn != nil && clk.inline && clk.run == nil {
			clk.run = c // the publisher feeds it, without q.mu
			return
		}
		c.conn.wg.Add(1)
		go c.pump()
	}
}

// pump feeds c on a goroutine of its own.
func (c *consumer) pump() {
	defer c.conn.wg.Done()
	c.feed()
}

// feed hands overflow to out or fn until overflow is empty or the consumer
// ends. It runs while c.pumping, once at a time.
func (c *consumer) feed() {
	q := c.q
	for {
		q.mu.Lock()
		if c.gone || c.ohead == len(c.overflow) {
			clear(c.overflow)
			c.overflow, c.ohead, c.pumping = c.overflow[:0], 0, false
			if c.gone {
				c.closeOut()
			}
			q.mu.Unlock()
			return
		}
		d := c.overflow[c.ohead]
		c.overflow[c.ohead] = nil
		c.ohead++
		q.mu.Unlock()
		if c.fn != nil {
			c.fn(d)
			continue
		}
		select {
		case c.out <- d:
		case <-c.stop:
		}
	}
}

// end marks c gone and closes its channel, or leaves that to the pump.
// Deliveries still buffered in out are dropped unless AutoAck: their
// messages are back in the queue. Called with q.mu held.
func (c *consumer) end() {
	c.gone = true
	close(c.stop)
	if !c.pumping {
		c.closeOut()
	}
}

func (c *consumer) closeOut() {
	if c.fn != nil {
		close(c.done)
		return
	}
	if !c.autoAck {
	drain:
		for {
			select {
			case <-c.out:
			default:
				break drain
			}
		}
	}
	close(c.out)
}

// watch ends the consumer when ctx does; it returns when the consumer has
// ended either way.
func (c *consumer) watch(ctx context.Context) {
	defer c.conn.wg.Done()
	select {
	case <-ctx.Done():
		c.detach()
	case <-c.stop:
	}
	c.conn.forgetConsumer(c)
}

// detach removes c from its queue, requeueing what it held, and deletes an
// auto-delete queue that it leaves without consumers.
func (c *consumer) detach() {
	if c.q.removeConsumer(c) {
		c.q.b.deleteQueueIf(c.q, func() bool { return len(c.q.consumers) == 0 })
	}
}

// delivery builds what the caller receives: its own copy of the message.
// A message that went to no other queue, taken with AutoAck, is no longer
// the broker's: the caller gets the broker's copy (but for headers that
// are the publisher's map). Called with q.mu held.
func (c *consumer) delivery(qm *qmsg) *transport.Delivery {
	m := qm.m
	msg := m.msg
	own := c.autoAck && m.sole // the caller may have the broker's copy
	if !own && msg.Body != nil {
		msg.Body = bytes.Clone(msg.Body)
	}
	copied := false
	if msg.Headers != nil && (!own || m.sharedHeaders) {
		msg.Headers = copyTable(msg.Headers, 1)
		copied = true
	}
	if qm.returns > 0 && c.q.quorum() {
		if !copied {
			msg.Headers = copyTable(msg.Headers, 1)
		}
		msg.Headers["x-delivery-count"] = qm.returns
	}
	// One allocation for the delivery and its settlement state, none for
	// the first delivery of a message from the first queue it went to.
	var s *settlement
	if qm == &m.first && !m.firstDelivered {
		m.firstDelivered = true
		s = &m.firstSettlement
	} else {
		s = new(settlement)
	}
	if c.autoAck {
		s.d = *transport.NewDelivery(msg, nil)
	} else {
		s.c, s.qm = c, qm
		s.d = *transport.NewSettledDelivery(msg, s)
	}
	d := &s.d
	d.Exchange = m.exchange
	d.RoutingKey = m.key
	d.Redelivered = qm.returns > 0
	d.ConsumerTag = c.tag
	return d
}

// settlement is a Delivery with what it settles.
type settlement struct {
	d       transport.Delivery
	c       *consumer
	qm      *qmsg
	settled atomic.Bool
}

// Settle settles s once (transport.Settler).
func (s *settlement) Settle(ack, requeue bool) error {
	if !s.settled.CompareAndSwap(false, true) {
		return fmt.Errorf("mem: delivery from queue %q: %w", s.c.q.name, transport.ErrAlreadySettled)
	}
	return s.c.q.settle(s.c, s.qm, ack, requeue)
}

// unlink removes a settled message from c's list. Called with q.mu held.
func (c *consumer) unlink(qm *qmsg) {
	qm.prev.next = qm.next
	qm.next.prev = qm.prev
	qm.prev, qm.next, qm.c = nil, nil, nil
	c.unacked--
}
