package mem

import (
	"fmt"
	"sync"
	"time"

	"github.com/warrenrpc/warren/transport"
)

// qmsg is one message in one queue: ready, or unacknowledged and owned by a
// consumer.
type qmsg struct {
	m        *message
	seq      uint64 // publish order in this queue: requeue goes back here
	expireAt int64  // unix nanoseconds; 0 means never
	// returns counts the times the message came back unsettled: it is
	// redelivered when not 0, and a quorum queue's x-delivery-count. (No
	// flag for the one: a message is in the 576-byte size class.)
	returns int64
	// c owns the message while it is unacknowledged; prev and next link it
	// into c's list of unacknowledged messages.
	c          *consumer
	prev, next *qmsg
}

// ring is a double-ended queue of messages. Classic queues keep it in seq
// order, so that insert puts a requeued message back at its place.
type ring struct {
	buf  []*qmsg
	head int
	n    int
}

func (r *ring) len() int { return r.n }

func (r *ring) at(i int) *qmsg { return r.buf[(r.head+i)%len(r.buf)] }

func (r *ring) grow() {
	nb := make([]*qmsg, max(16, 2*len(r.buf)))
	for i := range r.n {
		nb[i] = r.at(i)
	}
	r.buf, r.head = nb, 0
}

func (r *ring) pushBack(m *qmsg) {
	if r.n == len(r.buf) {
		r.grow()
	}
	r.buf[(r.head+r.n)%len(r.buf)] = m
	r.n++
}

func (r *ring) front() *qmsg { return r.buf[r.head] }

func (r *ring) popFront() *qmsg {
	m := r.buf[r.head]
	r.buf[r.head] = nil
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	return m
}

// insert puts m back at its place by seq, usually at or near the front.
func (r *ring) insert(m *qmsg) {
	i := 0
	for i < r.n && r.at(i).seq < m.seq {
		i++
	}
	if r.n == len(r.buf) {
		r.grow()
	}
	// Shift the tail right by one, from the back.
	for j := r.n; j > i; j-- {
		r.buf[(r.head+j)%len(r.buf)] = r.buf[(r.head+j-1)%len(r.buf)]
	}
	r.buf[(r.head+i)%len(r.buf)] = m
	r.n++
}

func (r *ring) clear() {
	clear(r.buf)
	r.head, r.n = 0, 0
}

// queue is one queue of the broker. Its fields after mu are guarded by mu.
type queue struct {
	b     *Broker
	name  string
	cfg   transport.Queue // normalised: Type is never ""
	owner *Conn           // exclusive owner, nil for a shared queue

	mu       sync.Mutex
	deleted  bool
	nextSeq  uint64
	ready    ring // classic queues: in seq order
	returned ring // quorum queues: messages of consumers that went away, delivered first
	// consumers in round-robin order; rr is the next one to try.
	consumers   []*consumer
	rr          int
	hadConsumer bool
	exclusive   bool // consumers[0] is exclusive

	ttlTimer *time.Timer
	ttlAt    int64 // when ttlTimer fires; 0 when idle
	expTimer *time.Timer
	expGen   uint64 // bumped on each use, so a stale x-expires timer is ignored
}

func (q *queue) quorum() bool { return q.cfg.Type == transport.Quorum }

func (q *queue) readyLen() int { return q.ready.len() + q.returned.len() }

func (q *queue) head() *qmsg {
	if q.returned.len() > 0 {
		return q.returned.front()
	}
	if q.ready.len() > 0 {
		return q.ready.front()
	}
	return nil
}

func (q *queue) popHead() *qmsg {
	if q.returned.len() > 0 {
		return q.returned.popFront()
	}
	return q.ready.popFront()
}

// enqueue adds a published message, delivers what it can and enforces
// x-max-length. Called with q.mu held.
func (q *queue) enqueue(m *message, clk *clock, dl *[]deadLetter) {
	if q.deleted {
		return
	}
	var qm *qmsg
	if !m.firstUsed {
		m.firstUsed = true
		qm = &m.first
		qm.m = m
	} else {
		qm = &qmsg{m: m}
	}
	qm.seq = q.nextSeq
	q.nextSeq++
	if ttl := q.cfg.MessageTTL; ttl > 0 {
		qm.expireAt = clk.now() + int64(ttl)
	}
	if ttl := m.ttl(); ttl >= 0 {
		if at := clk.now() + ttl*int64(time.Millisecond); qm.expireAt == 0 || at < qm.expireAt {
			qm.expireAt = at
		}
	}
	q.ready.pushBack(qm)
	q.dispatch(clk, dl)
	if max := q.cfg.MaxLength; max > 0 {
		for q.readyLen() > max {
			q.deadLetter(q.popHead(), reasonMaxLen, dl)
		}
	}
	q.armTTL(clk)
}

// deadLetter routes qm to the dead-letter exchange, if any, once q.mu is
// released; without one the message is dropped.
func (q *queue) deadLetter(qm *qmsg, reason string, dl *[]deadLetter) {
	if q.cfg.DeadLetterExchange == "" {
		return
	}
	*dl = append(*dl, deadLetter{
		m: qm.m, reason: reason, queue: q.name,
		dlx: q.cfg.DeadLetterExchange, dlrk: q.cfg.DeadLetterRoutingKey,
	})
}

// expired reports whether qm has outlived its TTL.
func expired(qm *qmsg, clk *clock) bool { return qm.expireAt != 0 && qm.expireAt < clk.now() }

// clock reads the time once, when first needed: most messages have no TTL
// and need none. It also carries, for a publish or a settlement, the one
// callback consumer (ConsumeFunc) whose deliveries the goroutine hands
// over itself once it has released the queue's lock.
type clock struct {
	t int64
	// inline is set by a caller that runs run after releasing q.mu.
	inline bool
	run    *consumer
}

func (c *clock) now() int64 {
	if c.t == 0 {
		c.t = time.Now().UnixNano()
	}
	return c.t
}

// dispatch hands ready messages to consumers with credit, round robin,
// expiring dead messages it meets at the head. Called with q.mu held.
func (q *queue) dispatch(clk *clock, dl *[]deadLetter) {
	for q.readyLen() > 0 && len(q.consumers) > 0 {
		c := q.nextConsumer()
		if c == nil {
			return
		}
		qm := q.popHead()
		if expired(qm, clk) {
			q.deadLetter(qm, reasonExpired, dl)
			continue
		}
		c.take(qm, clk)
	}
}

func (q *queue) nextConsumer() *consumer {
	n := len(q.consumers)
	for i := range n {
		j := (q.rr + i) % n
		if c := q.consumers[j]; c.autoAck || c.unacked < c.prefetch {
			q.rr = (j + 1) % n
			return c
		}
	}
	return nil
}

// expireHead drops or dead-letters expired messages at the head: like
// RabbitMQ's classic queues, a message expires only once it reaches the
// head. Called with q.mu held.
func (q *queue) expireHead(clk *clock, dl *[]deadLetter) {
	for {
		h := q.head()
		if h == nil || !expired(h, clk) {
			return
		}
		q.deadLetter(q.popHead(), reasonExpired, dl)
	}
}

// armTTL makes sure the TTL timer fires when the head expires.
func (q *queue) armTTL(clk *clock) {
	h := q.head()
	if h == nil || h.expireAt == 0 || q.deleted {
		return
	}
	if q.ttlAt != 0 && q.ttlAt <= h.expireAt {
		return
	}
	q.ttlAt = h.expireAt
	d := time.Duration(h.expireAt - clk.now() + 1)
	if q.ttlTimer == nil {
		q.ttlTimer = time.AfterFunc(d, q.onTTL)
	} else {
		q.ttlTimer.Reset(d)
	}
}

func (q *queue) onTTL() {
	if !q.b.enterTimer() {
		return
	}
	defer q.b.leaveTimer()
	var dl []deadLetter
	q.mu.Lock()
	var clk clock
	q.ttlAt = 0
	if !q.deleted {
		q.expireHead(&clk, &dl)
		q.armTTL(&clk)
	}
	q.mu.Unlock()
	q.b.publishDeadLetters(dl)
}

// requeue puts an unsettled message back, redelivered. A classic queue puts
// it at its original position. A quorum queue counts the return and
// dead-letters the message past the delivery limit; it puts the message in
// front of the ready ones, except that without a delivery limit a message
// nacked with requeue goes to the back (RabbitMQ 3.10 re-enqueues it, so
// that a poison message does not block the queue). Called with q.mu held.
func (q *queue) requeue(qm *qmsg, nacked bool, dl *[]deadLetter) {
	qm.c = nil
	qm.returns++
	if !q.quorum() {
		q.ready.insert(qm)
		return
	}
	if lim := q.cfg.DeliveryLimit; lim > 0 && qm.returns > int64(lim) {
		q.deadLetter(qm, reasonDeliveryLimit, dl)
		return
	}
	if nacked && q.cfg.DeliveryLimit == 0 {
		q.ready.pushBack(qm)
	} else {
		q.returned.pushBack(qm)
	}
}

// settle acknowledges or rejects qm held by c.
func (q *queue) settle(c *consumer, qm *qmsg, ack, requeue bool) error {
	var dl []deadLetter
	clk := clock{inline: true}
	q.mu.Lock()
	if c.gone {
		q.mu.Unlock()
		if c.queueDeleted {
			return nil // the message went with its queue
		}
		return fmt.Errorf("mem: settle on queue %q: consumer %q ended and its message was requeued: %w", q.name, c.tag, transport.ErrClosed)
	}
	c.unlink(qm)
	switch {
	case ack:
	case requeue:
		q.requeue(qm, true, &dl)
	default:
		q.deadLetter(qm, reasonRejected, &dl)
	}
	q.dispatch(&clk, &dl)
	q.armTTL(&clk)
	q.mu.Unlock()
	if clk.run != nil {
		clk.run.feed()
	}
	q.b.publishDeadLetters(dl)
	return nil
}

// addConsumer attaches c. Called with q.mu held.
func (q *queue) addConsumer(c *consumer) error {
	if q.quorum() {
		c.exclusive = false // RabbitMQ (3.10) ignores consumer exclusivity on quorum queues
	}
	if c.exclusive && len(q.consumers) > 0 {
		return fmt.Errorf("mem: exclusive consume on queue %q: queue has consumers: %w", q.name, transport.ErrPrecondition)
	}
	if q.exclusive {
		return fmt.Errorf("mem: consume on queue %q: queue in exclusive use: %w", q.name, transport.ErrPrecondition)
	}
	q.consumers = append(q.consumers, c)
	q.exclusive = c.exclusive
	q.hadConsumer = true
	q.expGen++
	if q.expTimer != nil {
		q.expTimer.Stop()
	}
	return nil
}

// removeConsumer detaches c and requeues what it held. It reports whether
// the queue should now be auto-deleted.
func (q *queue) removeConsumer(c *consumer) (autoDelete bool) {
	var dl []deadLetter
	q.mu.Lock()
	if c.gone {
		q.mu.Unlock()
		return false
	}
	c.end()
	for i, x := range q.consumers {
		if x == c {
			q.consumers = append(q.consumers[:i], q.consumers[i+1:]...)
			if q.rr > i {
				q.rr--
			}
			break
		}
	}
	if len(q.consumers) == 0 {
		q.rr = 0
	}
	q.exclusive = false
	for qm := c.list.next; qm != &c.list; {
		next := qm.next
		qm.prev, qm.next = nil, nil
		q.requeue(qm, false, &dl)
		qm = next
	}
	c.list.next, c.list.prev = &c.list, &c.list
	c.unacked = 0
	var clk clock
	q.dispatch(&clk, &dl)
	q.armTTL(&clk)
	if len(q.consumers) == 0 && !q.deleted {
		autoDelete = q.cfg.AutoDelete
		q.armExpires()
	}
	q.mu.Unlock()
	q.b.publishDeadLetters(dl)
	return autoDelete
}

// armExpires (re)starts the x-expires timer: the queue is unused from now.
// Called with q.mu held.
func (q *queue) armExpires() {
	if q.cfg.Expires <= 0 || len(q.consumers) > 0 || q.deleted {
		return
	}
	q.expGen++
	gen := q.expGen
	if q.expTimer != nil {
		q.expTimer.Stop()
	}
	q.expTimer = time.AfterFunc(q.cfg.Expires, func() {
		if !q.b.enterTimer() {
			return
		}
		defer q.b.leaveTimer()
		q.b.deleteQueueIf(q, func() bool { return q.expGen == gen && len(q.consumers) == 0 })
	})
}

// stopTimers is called with q.mu held when the queue goes away.
func (q *queue) stopTimers() {
	if q.ttlTimer != nil {
		q.ttlTimer.Stop()
	}
	if q.expTimer != nil {
		q.expTimer.Stop()
	}
	q.expGen++
}
