package amqp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenrpc/warren/internal/backoff"
	"github.com/warrenrpc/warren/transport"
)

// conn owns one AMQP connection and everything the broker tells about it:
// its loss (connection.close or a broken socket) and flow control
// (connection.blocked).
type conn struct {
	role    string // "publish" or "consume", for logs and the connection name
	c       *amqp091.Connection
	netConn net.Conn // the socket under c (under TLS too)
	log     *slog.Logger

	mu        sync.Mutex
	unblocked chan struct{} // closed while the broker lets us publish
	reason    string        // the broker's reason while blocked

	done chan struct{} // closed when watch returns
}

// dialConn connects to url. ctx bounds the TCP connect and the AMQP
// handshake.
func dialConn(ctx context.Context, url, role string, cfg Config, log *slog.Logger, onRewrite func(channel uint16, reason string)) (*conn, error) {
	props := amqp091.NewConnectionProperties()
	name := cfg.ConnectionName
	if name == "" {
		name = "warren"
	}
	props.SetClientConnectionName(name + " (" + role + ")")

	var (
		netMu   sync.Mutex
		netConn net.Conn
	)
	dial := func(network, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: 30 * time.Second}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		// The handshake has no context: bound it with a deadline, which
		// amqp091 clears once the connection is open.
		deadline, ok := ctx.Deadline()
		if !ok {
			deadline = time.Now().Add(30 * time.Second)
		}
		if err := c.SetDeadline(deadline); err != nil {
			c.Close()
			return nil, err
		}
		netMu.Lock()
		netConn = c
		netMu.Unlock()
		return c, nil
	}
	// Cancelling ctx during the handshake breaks it off.
	stop := context.AfterFunc(ctx, func() {
		netMu.Lock()
		defer netMu.Unlock()
		if netConn != nil {
			_ = netConn.SetDeadline(time.Now())
		}
	})
	c, err := openConn(ctx, url, cfg, props, dial, onRewrite)
	if !stop() && err == nil {
		// ctx ended just as the handshake completed.
		c.Close()
		err = ctx.Err()
	}
	if err != nil {
		netMu.Lock()
		connected := netConn != nil
		netMu.Unlock()
		return nil, dialCut(ctx, connected, err)
	}

	netMu.Lock()
	raw := netConn
	netMu.Unlock()
	cn := &conn{
		role:      role,
		c:         c,
		netConn:   raw,
		log:       log.With("connection", role),
		unblocked: make(chan struct{}),
		done:      make(chan struct{}),
	}
	close(cn.unblocked)
	return cn, nil
}

// start begins watching the connection. onLost is called once, from the
// watch goroutine, when the connection ends for any reason (the broker, the
// network, or close).
func (cn *conn) start(onLost func(error)) {
	closes := cn.c.NotifyClose(make(chan *amqp091.Error, 1))
	blocks := cn.c.NotifyBlocked(make(chan amqp091.Blocking, 4))
	go cn.watch(closes, blocks, onLost)
}

// watch drains the connection's notifications until both channels are
// closed, which amqp091 does when the connection shuts down.
func (cn *conn) watch(closes <-chan *amqp091.Error, blocks <-chan amqp091.Blocking, onLost func(error)) {
	defer close(cn.done)
	reported := false
	lost := func(err error) {
		if reported {
			return
		}
		reported = true
		// Nobody will unblock us now; let waiting publishers see the loss.
		cn.setBlocked(amqp091.Blocking{Active: false})
		onLost(err)
	}
	for closes != nil || blocks != nil {
		select {
		case e, ok := <-closes:
			if !ok {
				closes = nil
				lost(fmt.Errorf("%s connection closed", cn.role))
				continue
			}
			lost(fmt.Errorf("%s connection: %w", cn.role, e))
		case b, ok := <-blocks:
			if !ok {
				blocks = nil
				continue
			}
			cn.setBlocked(b)
		}
	}
	lost(fmt.Errorf("%s connection closed", cn.role))
}

func (cn *conn) setBlocked(b amqp091.Blocking) {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	select {
	case <-cn.unblocked:
		if b.Active {
			cn.log.Warn("broker blocked publishing", "reason", b.Reason)
			cn.unblocked = make(chan struct{})
			cn.reason = b.Reason
		}
	default:
		if !b.Active {
			cn.log.Info("broker unblocked publishing")
			close(cn.unblocked)
			cn.reason = ""
		}
	}
}

// blocked returns a *BlockedError while the broker blocks publishing on
// the connection, nil otherwise.
func (cn *conn) blocked() *BlockedError {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	select {
	case <-cn.unblocked:
		return nil
	default:
		return &BlockedError{Reason: cn.reason}
	}
}

// whenUnblocked returns a channel that is closed while publishing is
// allowed (or once the connection is gone).
func (cn *conn) whenUnblocked() <-chan struct{} {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.unblocked
}

// closeTimeout bounds the connection.close handshake; lostCloseTimeout
// bounds it for what is left of a lost link, which is likely dead too (a
// broken network, a broker going down): the broker requeues and deletes
// the same when the socket closes.
const (
	closeTimeout     = 5 * time.Second
	lostCloseTimeout = time.Second
)

// close closes the connection and waits for watch to return. It takes at
// most timeout even when the broker does not answer: one that blocked
// the connection (resource alarm) has stopped reading from it, and
// amqp091's own deadline is pushed back by its heartbeater.
func (cn *conn) close(timeout time.Duration) {
	if !cn.c.IsClosed() && cn.blocked() != nil {
		// The broker that blocked the connection stops reading from it
		// at its next publish: a connection.close would wait out timeout
		// unanswered, and what the broker has not read yet would be lost
		// all the same. Nothing is published after the block (publishes
		// wait for the unblock): cut the socket at once.
		cn.log.Debug("closing a blocked connection: cutting the socket")
		_ = cn.netConn.Close()
	}
	if !cn.c.IsClosed() {
		cut := time.AfterFunc(timeout, func() { _ = cn.netConn.Close() })
		err := cn.c.CloseDeadline(time.Now().Add(timeout))
		cut.Stop()
		if err != nil && !errors.Is(err, amqp091.ErrClosed) {
			cn.log.Debug("closing connection", "err", err)
		}
	}
	<-cn.done
}

// link is one life of the transport's pair of connections, from a dial to
// the loss of either connection. Everything opened on a link (channels,
// consumers, publishes awaiting a confirm) ends with it; the supervisor
// then dials a new link.
type link struct {
	gen  int64 // 1 for the link Dial made, then one more per reconnection
	pub  *conn
	cons *conn

	lost     chan struct{} // closed once either connection is gone
	lostOnce sync.Once
	lostErr  error // why; set before lost is closed

	topo chan *amqp091.Channel // idle channels on cons for declarations
}

// dialLink dials the consume connection, then the publish connection, and
// starts watching both: onLost is called (at most twice, once per
// connection) when either ends, onMalformed for each content header that
// was rewritten because amqp091 could not have read it (see frames.go).
func dialLink(ctx context.Context, url string, cfg Config, log *slog.Logger, gen int64, onLost func(*link, error), onMalformed func(role string, channel uint16, reason string)) (*link, error) {
	cons, err := dialConn(ctx, url, "consume", cfg, log, func(ch uint16, why string) { onMalformed("consume", ch, why) })
	if err != nil {
		return nil, err
	}
	pub, err := dialConn(ctx, url, "publish", cfg, log, func(ch uint16, why string) { onMalformed("publish", ch, why) })
	if err != nil {
		cons.start(func(error) {})
		cons.close(closeTimeout)
		return nil, err
	}
	l := &link{gen: gen, pub: pub, cons: cons, lost: make(chan struct{}), topo: make(chan *amqp091.Channel, topologyPool)}
	cons.start(func(err error) { onLost(l, err) })
	pub.start(func(err error) { onLost(l, err) })
	return l, nil
}

// markLost records that the link is gone; only the first cause counts.
func (l *link) markLost(err error) {
	l.lostOnce.Do(func() {
		l.lostErr = err
		close(l.lost)
	})
}

// isLost reports whether either connection of the link is gone.
func (l *link) isLost() bool {
	select {
	case <-l.lost:
		return true
	default:
		return false
	}
}

// cause returns what to report for work that ended with l: err when set,
// else why l was lost.
func (l *link) cause(err *amqp091.Error) any {
	if err != nil {
		return err
	}
	if l.isLost() {
		return l.lostErr
	}
	return "connection closed"
}

// close closes both connections, the publish connection first (see
// publisher.close), and waits for their watchers; timeout bounds each
// connection.close handshake.
func (l *link) close(timeout time.Duration) {
	l.pub.close(timeout)
	l.cons.close(timeout)
	for {
		select {
		case <-l.topo:
			continue // closed with its connection
		default:
		}
		return
	}
}

// dialTimeout bounds one reconnection attempt (TCP connect and both
// handshakes).
const dialTimeout = 15 * time.Second

// Stats counts what happened to a Transport's connections since Dial.
type Stats struct {
	// Losses counts lost links: the loss of either connection, or of both
	// at once, counts one.
	Losses int64
	// Attempts counts reconnection attempts, failed or not.
	Attempts int64
	// Reconnects counts successful reconnections.
	Reconnects int64
	// Malformed counts the messages received with properties amqp091
	// cannot read (headers nested deeper than 32 levels, ...), delivered
	// with those removed and transport.HeaderMalformed set.
	Malformed int64
}

// counters are the atomics behind Stats.
type counters struct {
	losses, attempts, reconnects, malformed atomic.Int64
}

// Stats returns the transport's connection counters. It is safe to call at
// any time, also after Close.
func (t *Transport) Stats() Stats {
	return Stats{
		Losses:     t.stats.losses.Load(),
		Attempts:   t.stats.attempts.Load(),
		Reconnects: t.stats.reconnects.Load(),
		Malformed:  t.stats.malformed.Load(),
	}
}

// Blocked returns a *BlockedError, with the broker's reason, while the
// broker blocks the transport's publishing connection (connection.blocked:
// a memory or disk alarm), and nil otherwise (also while reconnecting and
// after Close). Publishes wait while it is blocked; consumers are not
// blocked.
func (t *Transport) Blocked() error {
	t.mu.Lock()
	l := t.cur
	t.mu.Unlock()
	if l == nil || t.closed.Load() {
		return nil
	}
	if b := l.pub.blocked(); b != nil {
		return b
	}
	return nil
}

// Node returns the URL, password removed, of the node the transport is
// connected to now: one of the list given to Dial. While it reconnects it
// returns "".
func (t *Transport) Node() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cur == nil {
		return ""
	}
	return RedactURL(t.urls[t.node])
}

// Reconnects returns how many times the transport has reconnected to the
// broker since Dial.
func (t *Transport) Reconnects() int64 { return t.stats.reconnects.Load() }

// malformed is called by a connection's reader (through its frameConn)
// for each content header it rewrote: it must not block.
func (t *Transport) malformed(role string, channel uint16, reason string) {
	t.stats.malformed.Add(1)
	t.log.Warn("malformed message received: delivered with the unreadable properties removed and "+transport.HeaderMalformed+" set",
		"connection", role, "channel", channel, "reason", reason)
}

// linkLost is called by a connection's watcher when it ends. While the link
// is current, the transport has no link until the supervisor installs a
// new one: operations wait for it.
func (t *Transport) linkLost(l *link, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l.markLost(err)
	if t.cur == l {
		t.cur = nil
		t.up = make(chan struct{})
	}
}

// noticeLoss marks l lost when amqp091 has closed either of its
// connections, before the connection's watcher reports it: a consumer
// whose channel closed with its connection, or an operation that failed on
// it, must not let its caller retry on the dying link. cause may be nil.
func (t *Transport) noticeLoss(l *link, cause error) {
	for _, cn := range []*conn{l.cons, l.pub} {
		if cn.c.IsClosed() {
			if cause == nil {
				cause = errors.New("connection closed")
			}
			t.linkLost(l, fmt.Errorf("%s connection: %w", cn.role, cause))
			return
		}
	}
}

// link returns the current link, waiting while the transport reconnects.
// When ctx ends first the error wraps both ErrConnectionLost and ctx.Err();
// after Close it wraps ErrClosed.
func (t *Transport) link(ctx context.Context, op, name string) (*link, error) {
	for {
		if t.closed.Load() {
			return nil, fmt.Errorf("amqp: %s %q: %w", op, name, transport.ErrClosed)
		}
		t.mu.Lock()
		l, up := t.cur, t.up
		t.mu.Unlock()
		if l != nil {
			// linkLost clears cur before anyone sees the link lost.
			return l, nil
		}
		select {
		case <-up:
		case <-ctx.Done():
			return nil, fmt.Errorf("amqp: %s %q: waiting for the broker: %w: %w", op, name, transport.ErrConnectionLost, ctx.Err())
		case <-t.closing:
			return nil, fmt.Errorf("amqp: %s %q: %w", op, name, transport.ErrClosed)
		}
	}
}

// supervise owns the links after the first: when the current link is lost
// it closes what is left of it (so that a transport never consumes work it
// cannot answer, or the reverse) and redials both connections with
// exponential backoff and full jitter until one attempt succeeds or Close
// is called. On return, t.final is the link Close must close, if any.
func (t *Transport) supervise(l *link) {
	defer close(t.supervised)
	ctx := t.life
	bo := backoff.New()
	for {
		select {
		case <-l.lost:
		case <-t.closing:
			t.final = l
			return
		}
		if t.closed.Load() {
			// Close is closing the connections itself.
			t.final = l
			return
		}
		t.stats.losses.Add(1)
		t.log.Warn("connection to the broker lost: reconnecting", "err", l.lostErr)
		l.close(lostCloseTimeout)
		down := time.Now()
		var next *link
		for attempt := 1; next == nil; attempt++ {
			if !bo.Wait(ctx) {
				return
			}
			t.stats.attempts.Add(1)
			// The node after the lost one first, then each in turn.
			node := (t.node + attempt) % len(t.urls)
			if len(t.urls) == 1 {
				node = 0
			}
			t.log.Warn("reconnecting to the broker", "attempt", attempt, "url", RedactURL(t.urls[node]))
			dctx, dcancel := context.WithTimeout(ctx, dialTimeout)
			nl, err := dialLink(dctx, t.urls[node], t.cfg, t.log, l.gen+1, t.linkLost, t.malformed)
			dcancel()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				t.log.Warn("reconnection failed", "attempt", attempt, "err", shortReason(err))
				continue
			}
			t.mu.Lock()
			switch {
			case t.closed.Load():
				t.mu.Unlock()
				nl.close(lostCloseTimeout)
				return
			case nl.isLost():
				t.mu.Unlock()
				t.log.Warn("reconnection failed", "attempt", attempt, "err", nl.lostErr)
				nl.close(lostCloseTimeout)
				continue
			}
			t.cur = nl
			t.node = node
			close(t.up)
			t.mu.Unlock()
			t.stats.reconnects.Add(1)
			t.log.Info("reconnected to the broker", "attempt", attempt, "downtime", time.Since(down).Round(time.Millisecond), "generation", nl.gen)
			next = nl
		}
		bo.Reset()
		l = next
	}
}
