// Package peer is HareDo's peer: any process, not only agents, sends to a
// named peer, receives replies by id or oldest first, calls (send and
// receive), and replies to what was sent to it.
//
//	p, err := peer.New(tr, peer.Config{Name: "billing", Shared: true})
//	go p.Run(ctx)
//	<-p.Ready()
//	reply, err := p.Call(ctx, "ledger", map[string]any{"debit": 5})
//	for m := range p.Requests() { p.Reply(ctx, m, result); m.Ack() }
//
// A peer has a name others send to, and its queue is either exclusive (one
// instance: a second one is refused) or shared (competing instances that
// scale out; the queue is durable and keeps what is sent while none runs).
// Replies come back to a queue of each instance's own, so that an instance
// receives the replies to its own sends. A reply that arrives after the
// Receive (or Call) waiting for it timed out is dropped and counted (Late),
// and never returned by a later Receive. docs/protocol.md describes the
// messages, so that clients in other languages can be peers too.
package peer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Errors.
var (
	// ErrTimeout: no reply within the timeout.
	ErrTimeout = errors.New("peer: no reply in time")
	// ErrNoPeer: nobody listens under the name sent to.
	ErrNoPeer = errors.New("peer: no such peer")
	// ErrNotRunning: Run has not made the peer ready, or it stopped.
	ErrNotRunning = errors.New("peer: not running")
	// ErrTaken: an exclusive peer's name is held by another instance.
	ErrTaken = errors.New("peer: name taken by another instance")
)

// Config configures a peer. The zero value of each field means its default.
type Config struct {
	// Name is what others send to; "" makes a peer that only sends and
	// calls (it has no queue of its own but its reply queue).
	Name string
	// Shared makes the peer's queue shared by competing instances (and
	// durable); otherwise it is exclusive to one instance.
	Shared bool
	// Timeout bounds Receive and Call when their context has no deadline;
	// 0 means 1s (HareDo's default).
	Timeout time.Duration
	// Prefetch bounds the requests handed out and not yet acked; 0 means 16.
	Prefetch int
	// MaxReplies bounds the replies kept for Receive; beyond it, new ones
	// are dropped and counted (Dropped). 0 means 1024.
	MaxReplies int
}

// Message is a message sent to this peer (a request) or a reply to one of
// its sends.
type Message struct {
	ID            string // message_id
	CorrelationID string // on replies: the id of the message replied to
	From          string // the sender's name, when it said
	ReplyTo       string // where replies go; "" when the sender wants none
	Body          json.RawMessage
	// Err is set on an error reply.
	Err *wire.RemoteError

	d *transport.Delivery
}

// Decode unmarshals the body into v, or returns the reply's error.
func (m *Message) Decode(v any) error {
	if m.Err != nil {
		return m.Err
	}
	return json.Unmarshal(m.Body, v)
}

// Ack settles a request: the broker forgets it. A request not acked when
// the peer stops goes back to its queue, for another instance or the next
// run.
func (m *Message) Ack() error {
	if m.d == nil {
		return nil
	}
	return m.d.Ack()
}

// Option sets what only Go can pass.
type Option func(*Peer)

// WithLogger sets the logger; the default discards.
func WithLogger(l *slog.Logger) Option { return func(p *Peer) { p.log = l } }

// Peer sends, receives, calls and replies. Make it with New, then Run it.
type Peer struct {
	tr  transport.Transport
	cfg Config
	log *slog.Logger

	replyQ   string
	requests chan *Message
	ready    chan struct{}
	started  atomic.Bool
	running  atomic.Bool

	mu        sync.Mutex
	waiting   map[string]bool      // sent, reply not yet received nor given up
	abandoned map[string]time.Time // given up: their replies are late
	replies   []*Message
	arrived   chan struct{} // closed and replaced when a reply arrives

	late, foreign, dropped atomic.Int64
}

// New returns a peer on tr; it touches the broker only in Run.
func New(tr transport.Transport, cfg Config, opts ...Option) (*Peer, error) {
	if tr == nil {
		return nil, errors.New("peer: nil transport")
	}
	if cfg.Name != "" {
		if err := wire.CheckIdentity(cfg.Name); err != nil {
			return nil, fmt.Errorf("peer: name: %w", err)
		}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	if cfg.Prefetch <= 0 {
		cfg.Prefetch = 16
	}
	if cfg.MaxReplies <= 0 {
		cfg.MaxReplies = 1024
	}
	p := &Peer{
		tr: tr, cfg: cfg, log: slog.New(slog.DiscardHandler),
		requests:  make(chan *Message),
		ready:     make(chan struct{}),
		waiting:   map[string]bool{},
		abandoned: map[string]time.Time{},
		arrived:   make(chan struct{}),
	}
	for _, o := range opts {
		if o != nil {
			o(p)
		}
	}
	p.log = p.log.With("component", "peer", "peer", cfg.Name)
	return p, nil
}

// Name returns the peer's name.
func (p *Peer) Name() string { return p.cfg.Name }

// Ready is closed once the peer's queues are consumed.
func (p *Peer) Ready() <-chan struct{} { return p.ready }

// Requests delivers the messages sent to this peer; Ack each once handled
// (and Reply when its ReplyTo is set). It is closed when Run returns.
func (p *Peer) Requests() <-chan *Message { return p.requests }

// Late returns how many replies arrived after their Receive gave up; they
// were dropped.
func (p *Peer) Late() int64 { return p.late.Load() }

// Foreign returns how many replies matched no send of this peer (dropped).
func (p *Peer) Foreign() int64 { return p.foreign.Load() }

// Dropped returns how many replies were dropped because MaxReplies were
// already waiting to be received.
func (p *Peer) Dropped() int64 { return p.dropped.Load() }

// Run declares the peer's queues and consumes them until ctx ends. It
// returns ErrTaken when an exclusive peer's name is held by another
// instance, and an error when the connection is lost (run it again).
func (p *Peer) Run(ctx context.Context) error {
	if !p.started.CompareAndSwap(false, true) {
		return errors.New("peer: Run called twice")
	}
	defer close(p.requests)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	q, err := p.tr.DeclareQueue(cctx, transport.Queue{Exclusive: true, AutoDelete: true})
	if err != nil {
		return fmt.Errorf("peer: declare reply queue: %w", err)
	}
	replies, err := p.tr.Consume(cctx, q, transport.ConsumeOptions{AutoAck: true, Exclusive: true})
	if err != nil {
		return fmt.Errorf("peer: consume reply queue: %w", err)
	}
	p.replyQ = q
	var incoming <-chan *transport.Delivery
	if p.cfg.Name != "" {
		name := wire.PeerQueue(p.cfg.Name)
		lq := transport.Queue{Name: name, Exclusive: true, AutoDelete: true}
		if p.cfg.Shared {
			lq = transport.Queue{Name: name, Durable: true}
		}
		if _, err := p.tr.DeclareQueue(cctx, lq); err != nil {
			if !p.cfg.Shared {
				return fmt.Errorf("%w: %s: %v", ErrTaken, p.cfg.Name, err)
			}
			return fmt.Errorf("peer: declare %s: %w", name, err)
		}
		incoming, err = p.tr.Consume(cctx, name, transport.ConsumeOptions{Prefetch: p.cfg.Prefetch, Exclusive: !p.cfg.Shared})
		if err != nil {
			if !p.cfg.Shared {
				return fmt.Errorf("%w: %s: %v", ErrTaken, p.cfg.Name, err)
			}
			return fmt.Errorf("peer: consume %s: %w", name, err)
		}
	}
	p.running.Store(true)
	defer p.running.Store(false)
	close(p.ready)
	for {
		select {
		case <-ctx.Done():
			return nil
		case d, ok := <-replies:
			if !ok {
				return p.lost(ctx)
			}
			p.reply(d)
		case d, ok := <-incoming:
			if !ok {
				return p.lost(ctx)
			}
			m := &Message{ID: d.MessageID, CorrelationID: d.CorrelationID, From: d.AppID, ReplyTo: d.ReplyTo, Body: d.Body, d: d}
			select {
			case p.requests <- m:
			case <-ctx.Done():
				_ = d.Nack(true)
				return nil
			}
		}
	}
}

func (p *Peer) lost(ctx context.Context) error {
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("peer: %w", transport.ErrConnectionLost)
}

// reply files a reply for Receive, or drops it.
func (p *Peer) reply(d *transport.Delivery) {
	m := &Message{ID: d.MessageID, CorrelationID: d.CorrelationID, From: d.AppID, Body: d.Body}
	if re := wire.ReplyError(d, ""); re != nil {
		m.Err = re
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.waiting[m.CorrelationID]:
		if len(p.replies) >= p.cfg.MaxReplies {
			p.dropped.Add(1)
			p.log.Warn("too many replies waiting to be received: dropped one", "id", m.CorrelationID)
			return
		}
		delete(p.waiting, m.CorrelationID)
		p.replies = append(p.replies, m)
		close(p.arrived)
		p.arrived = make(chan struct{})
	case !p.abandoned[m.CorrelationID].IsZero():
		delete(p.abandoned, m.CorrelationID)
		p.late.Add(1)
		p.log.Info("late reply dropped", "id", m.CorrelationID)
	default:
		p.foreign.Add(1)
		p.log.Info("reply to nothing this peer waits for: dropped", "id", m.CorrelationID)
	}
}

// SendOption tunes one Send.
type SendOption func(*sendOpts)

type sendOpts struct {
	noReply bool
	ttl     time.Duration
}

// NoReply sends without a reply queue: the receiver sends no reply.
func NoReply() SendOption { return func(o *sendOpts) { o.noReply = true } }

// TTL bounds how long the message may wait in the peer's queue.
func TTL(d time.Duration) SendOption { return func(o *sendOpts) { o.ttl = d } }

// Send sends payload (marshalled as JSON; a json.RawMessage as is) to the
// peer named to and returns its message id, for Receive. It fails with
// ErrNoPeer when no queue has that name.
func (p *Peer) Send(ctx context.Context, to string, payload any, opts ...SendOption) (string, error) {
	if !p.running.Load() {
		return "", ErrNotRunning
	}
	var o sendOpts
	for _, f := range opts {
		if f != nil {
			f(&o)
		}
	}
	body, err := encode(payload)
	if err != nil {
		return "", err
	}
	var b [12]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	replyTo := p.replyQ
	if o.noReply {
		replyTo = ""
	} else {
		p.mu.Lock()
		p.waiting[id] = true
		p.mu.Unlock()
	}
	msg := wire.NewPeerMessage(p.cfg.Name, id, replyTo, body, o.ttl)
	if err := p.tr.Publish(ctx, transport.DefaultExchange, wire.PeerQueue(to), msg, transport.PublishOptions{Mandatory: true}); err != nil {
		p.mu.Lock()
		delete(p.waiting, id)
		p.mu.Unlock()
		if errors.Is(err, transport.ErrUnroutable) {
			return "", fmt.Errorf("%w %q", ErrNoPeer, to)
		}
		return "", fmt.Errorf("peer: send to %s: %w", to, err)
	}
	return id, nil
}

// Receive returns the reply to the send with this id, or with id "" the
// oldest reply not yet received, waiting until ctx's deadline or the
// peer's Timeout. When it gives up on an id, that reply is dropped if it
// comes later (Late).
func (p *Peer) Receive(ctx context.Context, id string) (*Message, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(p.cfg.Timeout)
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	for {
		p.mu.Lock()
		if id == "" && len(p.replies) > 0 {
			m := p.replies[0]
			p.replies = slices.Delete(p.replies, 0, 1)
			p.mu.Unlock()
			return m, nil
		}
		if id != "" {
			if i := slices.IndexFunc(p.replies, func(m *Message) bool { return m.CorrelationID == id }); i >= 0 {
				m := p.replies[i]
				p.replies = slices.Delete(p.replies, i, i+1)
				p.mu.Unlock()
				return m, nil
			}
			if !p.waiting[id] {
				p.mu.Unlock()
				return nil, fmt.Errorf("peer: no reply awaited for message %q (not sent by this peer, already received, or given up)", id)
			}
		}
		arrived := p.arrived
		p.mu.Unlock()
		select {
		case <-arrived:
		case <-t.C:
			p.giveUp(id)
			return nil, ErrTimeout
		case <-ctx.Done():
			p.giveUp(id)
			return nil, fmt.Errorf("%w: %w", ErrTimeout, ctx.Err())
		}
	}
}

// giveUp marks id's reply as late from now on.
func (p *Peer) giveUp(id string) {
	if id == "" {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.waiting[id] {
		return
	}
	delete(p.waiting, id)
	now := time.Now()
	if len(p.abandoned) >= 10000 {
		for k, at := range p.abandoned {
			if now.Sub(at) > 10*time.Minute {
				delete(p.abandoned, k)
			}
		}
	}
	p.abandoned[id] = now
}

// Call sends payload to the peer named to and waits for its reply (until
// ctx's deadline or the peer's Timeout: then ErrTimeout). An error reply
// is returned as the *wire.RemoteError it carries.
func (p *Peer) Call(ctx context.Context, to string, payload any) (*Message, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.Timeout)
		defer cancel()
	}
	id, err := p.Send(ctx, to, payload)
	if err != nil {
		return nil, err
	}
	m, err := p.Receive(ctx, id)
	if err != nil {
		return nil, err
	}
	if m.Err != nil {
		return m, m.Err
	}
	return m, nil
}

// Reply answers the request m with result (marshalled as JSON). It does
// not ack m.
func (p *Peer) Reply(ctx context.Context, m *Message, result any) error {
	if m.d == nil || m.ReplyTo == "" {
		return errors.New("peer: the message wants no reply")
	}
	body, err := encode(result)
	if err != nil {
		return err
	}
	return p.tr.Publish(ctx, transport.DefaultExchange, m.ReplyTo, wire.Reply(m.d, p.cfg.Name, "", body), transport.PublishOptions{})
}

// ReplyError answers the request m with an error: code and message, as
// agents send them.
func (p *Peer) ReplyError(ctx context.Context, m *Message, code, message string) error {
	if m.d == nil || m.ReplyTo == "" {
		return errors.New("peer: the message wants no reply")
	}
	return p.tr.Publish(ctx, transport.DefaultExchange, m.ReplyTo, wire.ErrorReply(m.d, p.cfg.Name, "", code, message), transport.PublishOptions{})
}

func encode(v any) ([]byte, error) {
	if r, ok := v.(json.RawMessage); ok {
		if !json.Valid(r) {
			return nil, errors.New("peer: payload is not JSON")
		}
		return r, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("peer: payload: %w", err)
	}
	return b, nil
}
