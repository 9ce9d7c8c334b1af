package mem

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/warrenrpc/warren/transport"
)

// Broker is an in-process AMQP 0-9-1 broker: exchanges, queues and bindings
// shared by the connections that [Broker.Connect] returns. Its zero value
// is not usable; create one with [NewBroker]. All methods are safe for
// concurrent use.
type Broker struct {
	// mu guards the topology: exchanges, queues, bindings and conns. It is
	// taken before any queue's mu (see doc.go, Lock order).
	mu        sync.RWMutex
	exchanges map[string]*exchange
	queues    map[string]*queue
	conns     map[*Conn]struct{}
	closed    bool

	// timerMu gates timer callbacks: they hold it shared while they run, and
	// Close takes it exclusively to wait for them and turn them off.
	timerMu   sync.RWMutex
	timersOff bool
}

// NewBroker returns an empty broker with RabbitMQ's predeclared exchanges
// amq.direct, amq.fanout and amq.topic.
func NewBroker() *Broker {
	b := &Broker{
		exchanges: make(map[string]*exchange),
		queues:    make(map[string]*queue),
		conns:     make(map[*Conn]struct{}),
	}
	for _, k := range []transport.Kind{transport.Direct, transport.Fanout, transport.Topic} {
		b.exchanges["amq."+string(k)] = newExchange(transport.Exchange{Name: "amq." + string(k), Kind: k, Durable: true})
	}
	return b
}

// New returns a connection to a fresh broker of its own, which closing the
// connection closes too. It is the transport for tests, examples and
// single-process deployments; use [NewBroker] and [Broker.Connect] for
// several connections to one broker.
func New() *Conn {
	c := NewBroker().Connect()
	c.ownsBroker = true
	return c
}

// Connect returns a new connection to b. Each connection owns its
// exclusive queues and its consumers, as an AMQP connection does. After
// [Broker.Close] the connection returned is already closed.
func (b *Broker) Connect() *Conn {
	c := &Conn{b: b, consumers: make(map[*consumer]struct{}), exclusive: make(map[*queue]struct{})}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		c.closed.Store(true)
		c.closeOnce.Do(func() {})
		return c
	}
	b.conns[c] = struct{}{}
	return c
}

// Close closes every connection (requeueing what their consumers had not
// settled) and stops the broker's timers. It is idempotent. Queues and
// their messages stay, but nothing can reach them any more.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	conns := make([]*Conn, 0, len(b.conns))
	for c := range b.conns {
		conns = append(conns, c)
	}
	b.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	b.timerMu.Lock()
	b.timersOff = true
	b.timerMu.Unlock()
	b.mu.Lock()
	for _, q := range b.queues {
		q.mu.Lock()
		q.stopTimers()
		q.mu.Unlock()
	}
	b.mu.Unlock()
	return nil
}

func (b *Broker) forgetConn(c *Conn) {
	b.mu.Lock()
	delete(b.conns, c)
	b.mu.Unlock()
}

func (b *Broker) enterTimer() bool {
	b.timerMu.RLock()
	if b.timersOff {
		b.timerMu.RUnlock()
		return false
	}
	return true
}

func (b *Broker) leaveTimer() { b.timerMu.RUnlock() }

// exchange is one exchange and its bindings, guarded by Broker.mu.
type exchange struct {
	cfg    transport.Exchange
	binds  []binding
	direct map[string][]*queue // direct exchanges: queues by key
}

type binding struct {
	q     *queue
	key   string
	words []string // topic pattern
}

func newExchange(cfg transport.Exchange) *exchange {
	ex := &exchange{cfg: cfg}
	if cfg.Kind == transport.Direct {
		ex.direct = make(map[string][]*queue)
	}
	return ex
}

func (ex *exchange) bind(q *queue, key string) {
	for _, bd := range ex.binds {
		if bd.q == q && bd.key == key {
			return
		}
	}
	ex.binds = append(ex.binds, binding{q: q, key: key, words: splitTopic(key)})
	if ex.direct != nil {
		ex.direct[key] = append(ex.direct[key], q)
	}
}

// unbind removes the bindings of q (all of them when all is set, else the
// one with key) and reports whether one was removed.
func (ex *exchange) unbind(q *queue, key string, all bool) bool {
	removed := false
	kept := ex.binds[:0]
	for _, bd := range ex.binds {
		if bd.q == q && (all || bd.key == key) {
			removed = true
			if ex.direct != nil {
				qs := ex.direct[bd.key]
				for i, x := range qs {
					if x == q {
						qs = append(qs[:i], qs[i+1:]...)
						break
					}
				}
				if len(qs) == 0 {
					delete(ex.direct, bd.key)
				} else {
					ex.direct[bd.key] = qs
				}
			}
			continue
		}
		kept = append(kept, bd)
	}
	clear(ex.binds[len(kept):])
	ex.binds = kept
	return removed
}

// route appends to out the queues that take a message with key, each once.
func (ex *exchange) route(key string, out []*queue) []*queue {
	switch ex.cfg.Kind {
	case transport.Direct:
		for _, q := range ex.direct[key] {
			out = appendQueue(out, q)
		}
	case transport.Fanout:
		for _, bd := range ex.binds {
			out = appendQueue(out, bd.q)
		}
	case transport.Topic:
		var words []string
		split := false
		for _, bd := range ex.binds {
			if !split {
				words, split = splitTopic(key), true
			}
			if topicMatch(bd.words, words) {
				out = appendQueue(out, bd.q)
			}
		}
	}
	return out
}

func appendQueue(qs []*queue, q *queue) []*queue {
	for _, x := range qs {
		if x == q {
			return qs
		}
	}
	return append(qs, q)
}

// splitTopic splits a routing key or pattern into words; "" has none.
func splitTopic(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ".")
}

// topicMatch matches key words against a pattern in which * is one word
// and # is zero or more.
func topicMatch(p, k []string) bool {
	for len(p) > 0 {
		switch p[0] {
		case "#":
			if len(p) == 1 {
				return true
			}
			for i := 0; i <= len(k); i++ {
				if topicMatch(p[1:], k[i:]) {
					return true
				}
			}
			return false
		case "*":
			if len(k) == 0 {
				return false
			}
		default:
			if len(k) == 0 || k[0] != p[0] {
				return false
			}
		}
		p, k = p[1:], k[1:]
	}
	return len(k) == 0
}

// routeLocked returns the queues that take a message published to exchange
// with key. Called with b.mu held.
func (b *Broker) routeLocked(exchange, key string, out []*queue) ([]*queue, error) {
	if exchange == transport.DefaultExchange {
		if q := b.queues[key]; q != nil {
			out = append(out, q)
		}
		return out, nil
	}
	ex := b.exchanges[exchange]
	if ex == nil {
		return nil, fmt.Errorf("mem: publish to exchange %q: %w", exchange, transport.ErrNotFound)
	}
	return ex.route(key, out), nil
}

func (b *Broker) publish(m *message, mandatory bool) error {
	var qbuf [4]*queue
	var dl []deadLetter
	clk := clock{inline: true}
	// Route under the topology lock, deliver under each queue's own: a
	// queue deleted in between drops the message, as it would have a
	// moment later.
	b.mu.RLock()
	qs, err := b.routeLocked(m.exchange, m.key, qbuf[:0])
	b.mu.RUnlock()
	m.sole = len(qs) == 1
	for _, q := range qs {
		q.mu.Lock()
		q.enqueue(m, &clk, &dl)
		q.mu.Unlock()
	}
	if clk.run != nil {
		// A callback consumer took the message and none of its callbacks
		// runs: this goroutine runs them (ConsumeFunc).
		clk.run.feed()
	}
	b.publishDeadLetters(dl)
	switch {
	case err != nil:
		return err
	case len(qs) == 0 && mandatory:
		return fmt.Errorf("mem: publish to exchange %q with key %q: %w", m.exchange, m.key, transport.ErrUnroutable)
	}
	return nil
}

// publishDeadLetters republishes dead letters to their exchanges, and the
// dead letters that causes in turn. Called with no lock held.
func (b *Broker) publishDeadLetters(dl []deadLetter) {
	var qbuf [4]*queue
	for len(dl) > 0 {
		var next []deadLetter
		now := time.Now()
		clk := clock{t: now.UnixNano()}
		for _, d := range dl {
			m := d.build(now)
			var qs []*queue
			b.mu.RLock()
			if ex := b.exchanges[d.dlx]; ex != nil {
				qs = ex.route(m.key, qbuf[:0])
			}
			b.mu.RUnlock()
			for _, q := range qs {
				if d.reason != reasonRejected && isCycle(q.name, m) {
					continue
				}
				q.mu.Lock()
				q.enqueue(m, &clk, &next)
				q.mu.Unlock()
			}
		}
		dl = next
	}
}

// deleteQueueIf deletes q, with its bindings and messages, if it is still
// the queue of its name and cond (evaluated with q.mu held) allows. Its
// consumers end.
func (b *Broker) deleteQueueIf(q *queue, cond func() bool) bool {
	b.mu.Lock()
	if b.queues[q.name] != q {
		b.mu.Unlock()
		return false
	}
	q.mu.Lock()
	if cond != nil && !cond() {
		q.mu.Unlock()
		b.mu.Unlock()
		return false
	}
	q.deleted = true
	cs := q.consumers
	q.consumers = nil
	for _, c := range cs {
		c.queueDeleted = true
		c.end()
		for qm := c.list.next; qm != &c.list; {
			next := qm.next
			qm.prev, qm.next, qm.c = nil, nil, nil
			qm = next
		}
		c.list.next, c.list.prev = &c.list, &c.list
		c.unacked = 0
	}
	q.ready.clear()
	q.returned.clear()
	q.stopTimers()
	q.mu.Unlock()
	delete(b.queues, q.name)
	for name, ex := range b.exchanges {
		if ex.unbind(q, "", true) && ex.cfg.AutoDelete && len(ex.binds) == 0 {
			delete(b.exchanges, name)
		}
	}
	b.mu.Unlock()
	if q.owner != nil {
		q.owner.forgetQueue(q)
	}
	return true
}

// generatedName returns a server-generated queue name as RabbitMQ makes
// them: amq.gen- and 22 random URL-safe characters.
func generatedName() string {
	var r [16]byte
	rand.Read(r[:])
	return "amq.gen-" + base64.RawURLEncoding.EncodeToString(r[:])
}
