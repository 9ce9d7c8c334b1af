package amqp

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenrpc/warren/transport"
)

// publisher spreads publishes over a few channels of the publish
// connection: confirmed mandatory ones over channels in confirm mode, each
// with a dispatcher goroutine that matches publisher confirms and mandatory
// returns to the publishes waiting for them (so any number are in flight at
// once); confirmed ones that are not mandatory over channels in confirm mode
// whose publishers wait on amqp091's deferred confirmation, which its
// connection's reader resolves itself (no confirm can be matched with a
// return there, and waking one goroutine per confirm rather than two was
// worth a few percent: docs/benchmarks.md); unconfirmed ones over channels
// not in confirm mode, which RabbitMQ then does not confirm for nobody.
type publisher struct {
	t      *Transport
	slots  []pubSlot // confirm mode, with a dispatcher: mandatory publishes
	direct []pubSlot // confirm mode, resolved by their publishers
	plain  []pubSlot // channels not in confirm mode, for unconfirmed publishes
	next   atomic.Uint32
	window chan struct{} // one token per confirmed publish awaiting its confirm

	wg sync.WaitGroup // dispatchers
}

// pubSlot holds the current channel of one slot; mu serialises publishes on
// it so that the next delivery tag is known before the publish is sent.
type pubSlot struct {
	mu sync.Mutex
	pc *pubChannel
}

// pubChannel is one AMQP channel in confirm mode and its publishes awaiting
// a confirm, by delivery tag.
type pubChannel struct {
	l       *link
	ch      *amqp091.Channel
	confirm bool // in confirm mode, with a dispatcher
	// direct: in confirm mode, for publishes that are not mandatory; each
	// publisher settles its own publish from its deferred confirmation,
	// and the dispatcher only fails those pending when the channel or the
	// link goes.
	direct bool

	mu sync.Mutex
	// recent holds the latest Unconfirmed mandatory publishes on a channel
	// not in confirm mode, oldest first, at most recentUnconfirmed of
	// them: when the channel breaks they are reported as returns (see
	// watch).
	recent  []transport.Return
	pending map[uint64]*pending
	byID    map[string]uint64 // message id → tag, to match returns without a token header
	dead    bool              // the dispatcher has finished: nothing will be confirmed

	// nacked: the broker nacked a publish on this channel. RabbitMQ does
	// that when a queue it routed to could not take the message, and a
	// channel that published to a quorum queue while its leader was being
	// re-elected can keep being nacked for that queue after a new leader
	// is up (seen on 3.10 when a cluster node died: every persistent push
	// of a reconnected mapper was nacked for minutes while a fresh channel
	// was acked at once). send publishes on a fresh channel from then on,
	// and retire closes this one once nothing on it awaits a confirm.
	nacked atomic.Bool
}

// pending is one publish awaiting its confirm.
type pending struct {
	exchange string
	key      string
	msgID    string     // set when returns are matched by message id
	returned bool       // a basic.return arrived for it
	done     chan error // buffered; receives the outcome once
	p        *publisher // to release the window token

	// On a direct channel: the publish's deferred confirmation, channel
	// and delivery tag, for its publisher to settle it (settle).
	dc  *amqp091.DeferredConfirmation
	pc  *pubChannel
	tag uint64
}

func newPublisher(t *Transport) *publisher {
	n := t.cfg.publishChannels()
	return &publisher{t: t, window: make(chan struct{}, t.cfg.confirmWindow()), slots: make([]pubSlot, n), direct: make([]pubSlot, n), plain: make([]pubSlot, n)}
}

// publish sends msg and, when confirm is set, waits for the broker's confirm.
func (p *publisher) publish(ctx context.Context, exchange, key string, pub amqp091.Publishing, mandatory, confirm bool) error {
	t := p.t
	if confirm {
		select {
		case p.window <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		case <-t.closing:
			return transport.ErrClosed
		}
	}
	var (
		pd *pending
		l  *link
	)
	for {
		// While the transport reconnects, wait for it.
		var err error
		l, err = t.link(ctx, "publish to exchange", exchange)
		if err != nil {
			p.release(confirm)
			return err
		}
		// Publishes wait while the broker blocks the connection (resource
		// alarm): sending would only fill socket buffers.
		select {
		case <-l.pub.whenUnblocked():
		default:
			select {
			case <-l.pub.whenUnblocked():
			case <-ctx.Done():
				p.release(confirm)
				if b := l.pub.blocked(); b != nil {
					return fmt.Errorf("amqp: publish to exchange %q: %w: %w", exchange, b, ctx.Err())
				}
				return ctx.Err()
			case <-t.closing:
				p.release(confirm)
				return transport.ErrClosed
			}
		}
		if l.isLost() {
			continue // unblocked by the loss; nothing was sent
		}
		if confirm {
			pd = &pending{exchange: exchange, key: key, done: make(chan error, 1), p: p}
		}
		slots := p.slots
		switch {
		case !confirm:
			// RabbitMQ confirms every publish on a channel in confirm
			// mode, wanted or not: keep the others off those channels.
			slots = p.plain
		case !mandatory:
			slots = p.direct
		}
		slot := &slots[int(p.next.Add(1)%uint32(len(slots)))]
		err = p.send(slot, l, exchange, key, pub, mandatory, pd)
		if errors.Is(err, errNotSent) {
			continue // the link went before anything was written
		}
		if err != nil {
			p.release(confirm)
			return err
		}
		break
	}
	if !confirm {
		return nil
	}
	var settled <-chan struct{}
	if pd.dc != nil {
		settled = pd.dc.Done()
	}
	for {
		select {
		case <-settled:
			if err, ok := p.settle(pd); ok {
				return err
			}
			settled = nil // the channel closed: the dispatcher says why
			continue
		case err := <-pd.done:
			return err
		case <-ctx.Done():
		}
		break
	}
	if settled != nil {
		// Nobody else settles an acked or nacked publish of a direct
		// channel; a closed channel's pending ones the dispatcher fails.
		// Not in p.wg: it ends when the channel does, at the latest.
		go func() {
			<-settled
			_, _ = p.settle(pd)
		}()
	}
	// Otherwise the dispatcher still resolves pd and releases its token.
	if b := l.pub.blocked(); b != nil {
		// The broker stopped reading the connection after this publish,
		// or before it reached the broker.
		return fmt.Errorf("amqp: publish to exchange %q: %w: %w", exchange, b, ctx.Err())
	}
	return ctx.Err()
}

// settle resolves pd, a publish on a direct channel, once its deferred
// confirmation is done: acked, nacked, or failed because the channel
// closed. ok is false in the last case (amqp091 marks the channel closed
// before it fails the deferred confirmations): the dispatcher, which has
// the close's error, resolves pd then.
func (p *publisher) settle(pd *pending) (err error, ok bool) {
	pc := pd.pc
	if pd.dc.Acked() {
		// The broker has it; if the dispatcher took pd first (the link
		// was lost just now), it released the token.
		if pc.take(pd.tag) != nil {
			<-p.window
		}
		return nil, true
	}
	if pc.ch.IsClosed() {
		return nil, false
	}
	pc.nacked.Store(true)
	if pc.take(pd.tag) != nil {
		<-p.window
	}
	return fmt.Errorf("amqp: publish to exchange %q: %w", pd.exchange, transport.ErrNacked), true
}

func (p *publisher) release(confirm bool) {
	if confirm {
		<-p.window
	}
}

// errNotSent is returned by send when l was lost before anything was
// written: the publish can wait for the next link without any risk of
// duplicating it.
var errNotSent = errors.New("amqp: link lost before the publish was written")

// send writes one publish on the slot's channel, replacing the channel when
// it has been closed (a channel error caused by an earlier publish). A
// publish that amqp091 refuses because the channel is closed was never
// written, so retrying it on a fresh channel cannot duplicate it.
func (p *publisher) send(slot *pubSlot, l *link, exchange, key string, pub amqp091.Publishing, mandatory bool, pd *pending) error {
	t := p.t
	slot.mu.Lock()
	defer slot.mu.Unlock()
	for attempt := 0; ; attempt++ {
		if t.closed.Load() {
			return transport.ErrClosed
		}
		if old := slot.pc; old != nil && old.l == l && old.nacked.Load() && !old.ch.IsClosed() {
			p.retire(old)
			slot.pc = nil
		}
		if slot.pc == nil || slot.pc.l != l || slot.pc.ch.IsClosed() {
			pc, err := p.open(l, pd != nil, pd != nil && !mandatory)
			if err != nil {
				if l.isLost() && !t.closed.Load() {
					return errNotSent
				}
				return err
			}
			slot.pc = pc
		}
		pc := slot.pc
		tag := pc.ch.GetNextPublishSeqNo()
		if pd != nil {
			pd.msgID = "" // matched by id on this attempt's channel only
		}
		msg := pub
		if mandatory && pd == nil {
			// Unconfirmed: the caller matches a return by its ids.
			pc.remember(exchange, key, pub)
		} else if mandatory && !pc.matchByID(pub.MessageId, tag, pd) {
			// No unique message id to match a return with: carry the
			// delivery tag in a header.
			h := make(amqp091.Table, len(pub.Headers)+1)
			for k, v := range pub.Headers {
				h[k] = v
			}
			h[returnTokenHeader] = int64(tag)
			msg.Headers = h
		}
		retry := attempt < 3 && !l.pub.c.IsClosed() && !l.isLost()
		if pd != nil && !pc.add(tag, pd) {
			// The channel died just now.
			if retry {
				continue
			}
			if l.isLost() && !t.closed.Load() {
				return errNotSent
			}
			return p.failure(l, exchange, key, nil)
		}
		dc, err := pc.ch.PublishWithDeferredConfirm(exchange, key, mandatory, false, msg)
		if err == nil {
			if pd != nil && pc.direct {
				pd.dc, pd.pc, pd.tag = dc, pc, tag
			}
			return nil
		}
		if pd != nil && !pc.remove(tag) {
			// The dispatcher has already failed pd as its channel
			// closed; the caller reads that outcome.
			return nil
		}
		if errors.Is(err, amqp091.ErrClosed) && retry {
			continue
		}
		t.noticeLoss(l, err)
		if errors.Is(err, amqp091.ErrClosed) && l.isLost() && !t.closed.Load() {
			// amqp091 refuses a closed channel before writing.
			return errNotSent
		}
		return brokerError("publish to exchange", exchange, err, t.closed.Load(), l.pub.c.IsClosed() || l.isLost())
	}
}

// retire closes pc, a channel send no longer uses, once none of its
// publishes awaits a confirm (or after retireWait, failing those that
// still do), or when the transport closes.
func (p *publisher) retire(pc *pubChannel) {
	p.t.log.Debug("replacing a publish channel that had a publish nacked")
	p.wg.Go(func() {
		deadline := time.Now().Add(retireWait)
		for time.Now().Before(deadline) {
			pc.mu.Lock()
			idle := len(pc.pending) == 0 || pc.dead
			pc.mu.Unlock()
			if idle {
				break
			}
			select {
			case <-time.After(10 * time.Millisecond):
			case <-p.t.closing:
				return
			}
		}
		_ = pc.ch.Close()
	})
}

// retireWait bounds how long a retired channel waits for its confirms.
const retireWait = 30 * time.Second

// open opens a channel of l, in confirm mode with its dispatcher when
// confirm is set, and then a direct one (see pubChannel.direct) when
// direct is set.
func (p *publisher) open(l *link, confirm, direct bool) (*pubChannel, error) {
	t := p.t
	ch, err := l.pub.c.Channel()
	if err == nil && confirm {
		err = ch.Confirm(false)
		if err != nil {
			_ = ch.Close()
		}
	}
	if err != nil {
		if t.closed.Load() {
			return nil, transport.ErrClosed
		}
		t.noticeLoss(l, err)
		if l.pub.c.IsClosed() || l.isLost() {
			return nil, fmt.Errorf("%w (%v)", transport.ErrConnectionLost, err)
		}
		return nil, fmt.Errorf("amqp: open publish channel: %w", err)
	}
	pc := &pubChannel{l: l, ch: ch, confirm: confirm, direct: direct, pending: make(map[uint64]*pending), byID: make(map[string]uint64)}
	if !confirm {
		// A channel error (a missing exchange) closes it; send sees that
		// and opens another. Returns of Unconfirmed mandatory publishes
		// go to NotifyReturn's functions.
		returns := ch.NotifyReturn(make(chan amqp091.Return, 256))
		closes := ch.NotifyClose(make(chan *amqp091.Error, 1))
		p.wg.Add(1)
		go p.watch(pc, returns, closes)
		return pc, nil
	}
	closes := ch.NotifyClose(make(chan *amqp091.Error, 1))
	if direct {
		// No returns (nothing mandatory) and no confirms to dispatch: the
		// dispatcher waits for the end of the channel or the link.
		p.wg.Add(1)
		go p.dispatch(pc, nil, nil, closes)
		t.log.Debug("opened publish channel")
		return pc, nil
	}
	// Buffers are generous so that the connection's reader goroutine never
	// waits for the dispatcher; amqp091 drops a notification after 5s.
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 1024))
	returns := ch.NotifyReturn(make(chan amqp091.Return, 256))
	p.wg.Add(1)
	go p.dispatch(pc, confirms, returns, closes)
	t.log.Debug("opened publish channel")
	return pc, nil
}

// recentUnconfirmed bounds pubChannel.recent. RabbitMQ drops what a
// channel carries after the publish that broke it until the client sees
// the channel.close, a round trip later: the latest publishes are the ones
// that can be lost that way, and far fewer than this are written in a
// round trip.
const recentUnconfirmed = 4096

// remember records an Unconfirmed mandatory publish on pc, a channel not
// in confirm mode, before it is sent. A record made after watch took them
// is of a publish that amqp091 refuses (the channel is marked closed
// before its close is notified): send retries it on another channel.
func (pc *pubChannel) remember(exchange, key string, pub amqp091.Publishing) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if len(pc.recent) == recentUnconfirmed {
		n := copy(pc.recent, pc.recent[recentUnconfirmed/2:])
		clear(pc.recent[n:])
		pc.recent = pc.recent[:n]
	}
	pc.recent = append(pc.recent, transport.Return{Exchange: exchange, Key: key, MessageID: pub.MessageId, CorrelationID: pub.CorrelationId})
}

// watch hands the returns of pc, a channel not in confirm mode, to the
// transport's NotifyReturn functions until the channel closes. Then, unless
// the transport is closing, it reports the latest Unconfirmed mandatory
// publishes on it as lost with the error that broke it: RabbitMQ drops
// what a channel carries after a publish it refused, and no confirm will
// say which.
func (p *publisher) watch(pc *pubChannel, returns <-chan amqp091.Return, closes <-chan *amqp091.Error) {
	defer p.wg.Done()
	t := p.t
	var closeErr *amqp091.Error
	for returns != nil || closes != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			t.returns.Report(transport.Return{
				Exchange: r.Exchange, Key: r.RoutingKey, MessageID: r.MessageId, CorrelationID: r.CorrelationId,
				Err: fmt.Errorf("amqp: publish to exchange %q with key %q: %w (%s)", r.Exchange, r.RoutingKey, transport.ErrUnroutable, r.ReplyText),
			})
		case e, ok := <-closes:
			if !ok {
				closes = nil
				continue
			}
			closeErr = e
		}
	}
	pc.mu.Lock()
	lost := pc.recent
	pc.recent = nil
	pc.mu.Unlock()
	if t.closed.Load() {
		return
	}
	for _, r := range lost {
		r.Err = p.failure(pc.l, r.Exchange, r.Key, closeErr)
		t.returns.Report(r)
	}
}

// matchByID arranges for a return of this publish to be matched by its
// message id, when it has one that no other publish in flight on pc has.
// It reports whether it did; the caller then needs no token header.
func (pc *pubChannel) matchByID(id string, tag uint64, pd *pending) bool {
	if id == "" {
		return false
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if _, dup := pc.byID[id]; dup || pc.dead {
		return false
	}
	pc.byID[id] = tag
	pd.msgID = id
	return true
}

// forgetID drops pd's message id; pc.mu is held.
func (pc *pubChannel) forgetID(pd *pending) {
	if pd != nil && pd.msgID != "" {
		delete(pc.byID, pd.msgID)
	}
}

func (pc *pubChannel) add(tag uint64, pd *pending) bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.dead {
		return false
	}
	pc.pending[tag] = pd
	return true
}

// remove forgets a publish that could not be sent; false means the
// dispatcher took it first.
func (pc *pubChannel) remove(tag uint64) bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pd, ok := pc.pending[tag]
	pc.forgetID(pd)
	delete(pc.pending, tag)
	return ok
}

func (pc *pubChannel) take(tag uint64) *pending {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pd := pc.pending[tag]
	pc.forgetID(pd)
	delete(pc.pending, tag)
	return pd
}

func (pd *pending) resolve(err error) {
	pd.done <- err
	<-pd.p.window
}

// dispatch resolves the pending publishes of pc as confirms arrive, until
// the channel closes; then it fails the rest.
//
// RabbitMQ sends a message's basic.return before its basic.ack, and amqp091
// hands both to listeners from one goroutine in that order. So when a
// confirm arrives, any return for the same message is already in the returns
// buffer: drain it before resolving.
func (p *publisher) dispatch(pc *pubChannel, confirms <-chan amqp091.Confirmation, returns <-chan amqp091.Return, closes <-chan *amqp091.Error) {
	defer p.wg.Done()
	var closeErr *amqp091.Error
	onReturn := func(r amqp091.Return) {
		pc.mu.Lock()
		defer pc.mu.Unlock()
		tag, ok := r.Headers[returnTokenHeader].(int64)
		if !ok {
			byID, found := pc.byID[r.MessageId]
			if r.MessageId == "" || !found {
				return
			}
			tag = int64(byID)
		}
		if pd := pc.pending[uint64(tag)]; pd != nil {
			pd.returned = true
		}
	}
	// failRest fails what is still pending; later publishes on pc fail in
	// send.
	failRest := func() {
		pc.mu.Lock()
		pc.dead = true
		rest := pc.pending
		pc.pending = nil
		pc.byID = map[string]uint64{}
		pc.mu.Unlock()
		for _, pd := range rest {
			pd.resolve(p.failure(pc.l, pd.exchange, pd.key, closeErr))
		}
	}
	lost := pc.l.lost
	for confirms != nil || returns != nil || closes != nil {
		select {
		case <-lost:
			// The other connection is gone, or this one is and amqp091
			// has not noticed yet: fail fast, keep draining until the
			// supervisor has closed the connection.
			lost = nil
			failRest()
		case c, ok := <-confirms:
			if !ok {
				confirms = nil
				continue
			}
			for drained := false; !drained && returns != nil; {
				select {
				case r, ok := <-returns:
					if !ok {
						returns = nil
						continue
					}
					onReturn(r)
				default:
					drained = true
				}
			}
			pd := pc.take(c.DeliveryTag)
			if pd == nil {
				continue // an unconfirmed publish
			}
			switch {
			case !c.Ack:
				pc.nacked.Store(true)
				pd.resolve(fmt.Errorf("amqp: publish to exchange %q: %w", pd.exchange, transport.ErrNacked))
			case pd.returned:
				pd.resolve(fmt.Errorf("amqp: publish to exchange %q: %w", pd.exchange, transport.ErrUnroutable))
			default:
				pd.resolve(nil)
			}
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			onReturn(r)
		case e, ok := <-closes:
			if !ok {
				closes = nil
				continue
			}
			closeErr = e
		}
	}
	if closeErr != nil && !pc.l.pub.c.IsClosed() {
		p.t.log.Debug("publish channel closed by broker", "err", closeErr)
	}
	failRest()
}

// missingExchange extracts the exchange from RabbitMQ's 404 reply text.
var missingExchange = regexp.MustCompile(`no exchange '(.*)' in vhost`)

// refusedPublish extracts the exchange, and the routing key of a topic
// permission, from RabbitMQ's 403 reply text to a publish.
var refusedPublish = regexp.MustCompile(`access to (?:topic '(.*)' in )?exchange '(.*)' in vhost`)

// refusedFor reports whether the 403 reply text refuses a publish to
// exchange with key, rather than another publish of the channel.
func refusedFor(reason, exchange, key string) bool {
	m := refusedPublish.FindStringSubmatch(reason)
	if exchange == "" {
		exchange = "amq.default"
	}
	return m != nil && m[2] == exchange && (m[1] == "" || m[1] == key)
}

// failure is the error of a publish whose channel closed before its confirm.
func (p *publisher) failure(l *link, exchange, key string, closeErr *amqp091.Error) error {
	t := p.t
	p.t.noticeLoss(l, amqpErr(closeErr))
	gone := l.pub.c.IsClosed() || l.isLost()
	switch {
	case gone && t.closed.Load():
		return fmt.Errorf("amqp: publish to exchange %q: %w", exchange, transport.ErrClosed)
	case gone:
		return fmt.Errorf("amqp: publish to exchange %q: %w (%v)", exchange, transport.ErrConnectionLost, l.cause(closeErr))
	case closeErr != nil && closeErr.Code == codeNotFound:
		if m := missingExchange.FindStringSubmatch(closeErr.Reason); m == nil || m[1] == exchange {
			return fmt.Errorf("amqp: publish to exchange %q: %w (%s)", exchange, transport.ErrNotFound, closeErr.Reason)
		}
	case closeErr == nil && t.closed.Load():
		return fmt.Errorf("amqp: publish to exchange %q: %w", exchange, transport.ErrClosed)
	case closeErr != nil && closeErr.Code == codeAccessRefused && refusedFor(closeErr.Reason, exchange, key):
		// No write permission on the exchange, or no topic permission
		// for the key: sending again would be refused again.
		return fmt.Errorf("amqp: publish to exchange %q: %w (%s)", exchange, transport.ErrAccessRefused, closeErr.Reason)
	}
	// Another publish on the same channel broke it: this one may or may
	// not have been routed.
	return fmt.Errorf("amqp: publish to exchange %q: channel closed before the confirm (%v): %w", exchange, closeErr, transport.ErrConnectionLost)
}

// close closes the publish connection of l (the transport's last link, if
// any) and waits for the dispatchers, which fail what is still pending with
// ErrClosed. It closes the connection rather than each channel: a broker
// that blocked the connection (resource alarm) stops reading from it, and
// only the connection's close has a deadline.
func (p *publisher) close(l *link) {
	if l != nil {
		l.pub.close(closeTimeout)
	}
	// After this no send can open a channel: they all see t.closed.
	for _, slots := range [][]pubSlot{p.slots, p.direct, p.plain} {
		for i := range slots {
			slots[i].mu.Lock()
			slots[i].mu.Unlock()
		}
	}
	p.wg.Wait()
}

// Publish sends msg to exchange with routing key key. Without
// opts.Confirm it returns once the message is handed to the connection;
// with it (or opts.Mandatory, unless opts.Unconfirmed) it waits for the
// broker's publisher confirm, and many such publishes can be in flight
// together. An Unconfirmed mandatory publish goes on a channel not in
// confirm mode; its basic.return, or the loss of the channel it was
// written on, is reported to NotifyReturn's functions. While the broker
// blocks the connection (a resource alarm) Publish waits, honouring ctx.
//
// A publish to an exchange that does not exist makes RabbitMQ close the
// channel it was sent on: a confirmed publish then fails with ErrNotFound,
// and other confirmed publishes in flight on the same channel fail with
// ErrConnectionLost (they may or may not have been routed).
func (t *Transport) Publish(ctx context.Context, exchange, key string, msg transport.Message, opts transport.PublishOptions) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("amqp: publish to exchange %q: %w", exchange, err)
	}
	if t.closed.Load() {
		return fmt.Errorf("amqp: publish to exchange %q: %w", exchange, transport.ErrClosed)
	}
	pub, err := toPublishing(msg)
	if err == nil {
		err = checkShort("exchange name", exchange)
	}
	if err == nil {
		err = checkShort("routing key", key)
	}
	if err != nil {
		return fmt.Errorf("amqp: publish to exchange %q: %w", exchange, err)
	}
	confirm := opts.Confirm || opts.Mandatory && !opts.Unconfirmed
	err = t.publisher.publish(ctx, exchange, key, pub, opts.Mandatory, confirm)
	if err != nil && !strings.HasPrefix(err.Error(), "amqp: ") {
		// Errors from the dispatcher name the exchange already.
		err = fmt.Errorf("amqp: publish to exchange %q: %w", exchange, err)
	}
	return err
}

// NotifyReturn implements [transport.Returner]: f gets the returns of
// Unconfirmed mandatory publishes, from the goroutine that watches their
// channel, and, when such a channel breaks (a publish to a missing exchange
// closes it; so does the loss of the connection), each of the latest
// Unconfirmed publishes on it, with the error that broke it.
func (t *Transport) NotifyReturn(f func(transport.Return)) (stop func(), ok bool) {
	return t.returns.Add(f), true
}
