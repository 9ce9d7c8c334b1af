package secure

import (
	"context"
	"crypto/hpke"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Errors returned by Publish.
var (
	// ErrCannotEncrypt: the recipient's certificate has a key that messages
	// cannot be encrypted to (Ed25519), or no usable key.
	ErrCannotEncrypt = errors.New("secure: cannot encrypt to this certificate")
	// ErrSenderMismatch: the message's app_id names another identity
	// than the certificate's.
	ErrSenderMismatch = errors.New("secure: app_id is not this transport's identity")
	// ErrUntrustedRecipient: the recipient's certificate is expired,
	// revoked or not signed by the Authority.
	ErrUntrustedRecipient = errors.New("secure: recipient certificate not trusted")
	// ErrDeadLetterQueue, from Consume: the dead-letter queue holds
	// rejected messages as they were received, with dead-letter headers
	// their signatures do not cover. Read it with a plain transport (as
	// package dlq does); a replayed letter is verified where it goes.
	ErrDeadLetterQueue = errors.New("secure: " + wire.DeadLetterQueue + " is read with a plain transport, not a secure one")
)

// Config configures secure mode. Identity is required, and at least one
// of Store and Authority.
type Config struct {
	// Identity is this participant's certificate and key: every message is
	// signed with it, and messages to it are decrypted with it. The agent or
	// mapper identity must be Identity.Name().
	Identity *Identity
	// Store holds the certificates of peers (pinned: trusted as they are
	// when there is no Authority).
	Store Store
	// Authority, when set, trusts any certificate it signed; messages carry
	// their sender's certificate, so peers' certificates need no
	// distribution. A certificate from Store must chain to it too.
	Authority *Authority
	// Deny lists revoked certificates (see ParseDenyList).
	Deny *DenyList
	// SignOnly signs messages without encrypting them. By default messages
	// addressed to one identity (header warren-to) are also encrypted to it.
	// An Ed25519 Identity requires SignOnly: nothing can be encrypted to
	// it, so it could not receive encrypted requests or replies.
	SignOnly bool
	// MaxAge is the replay window: a message signed longer ago is refused,
	// as is one seen before within it. It must exceed the longest time a
	// message may wait in a queue (for example while no agent serves it).
	// 0 means 5 minutes.
	MaxAge time.Duration
	// MaxSkew tolerates clocks that run ahead: a message signed further in
	// the future is refused. 0 means 1 minute.
	MaxSkew time.Duration
	// ReplayCache bounds how many message ids are remembered; 0 means
	// 100000. When it is full the ones signed longest ago are forgotten and
	// every message signed as long ago or longer is refused, so a replay
	// never gets through: size it above the most messages this participant
	// accepts within MaxAge, or late messages are refused before MaxAge.
	ReplayCache int
	// MaxMessageSize bounds an envelope; 0 means DefaultMaxMessageSize.
	MaxMessageSize int
	// MaxDepth bounds JSON nesting in an envelope; 0 means DefaultMaxDepth.
	MaxDepth int
	// LearnedCertificates bounds how many peer certificates learned from
	// envelopes (with an Authority) are kept to encrypt to; 0 means 4096.
	LearnedCertificates int
}

// Option sets what only Go can pass.
type Option func(*options)

type options struct {
	log *slog.Logger
	now func() time.Time
}

// WithLogger sets the logger; the default discards. Rejections are logged
// at warn level without their payload.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// Transport is a transport.Transport that signs and encrypts what it
// publishes and verifies and decrypts what it consumes. Agents and mappers
// use it as any other transport.
type Transport struct {
	inner  transport.Transport
	cfg    Config
	log    *slog.Logger
	now    func() time.Time
	self   string
	selfFP string

	replay  *replayWindow
	learned *lru[*x509.Certificate]
	trusted *lru[time.Time]         // fingerprint+identity -> checked until
	parsed  *lru[*x509.Certificate] // DER fingerprint -> certificate

	stats stats

	closeOnce sync.Once
	closing   chan struct{}
	wg        sync.WaitGroup
}

var _ transport.Transport = (*Transport)(nil)

// Wrap returns a secure transport over inner. Closing it closes inner.
// It returns *Transport rather than transport.Transport so that callers
// can read its Stats.
func Wrap(inner transport.Transport, cfg Config, opts ...Option) (*Transport, error) {
	if inner == nil {
		return nil, errors.New("secure: nil transport")
	}
	if cfg.Identity == nil {
		return nil, errors.New("secure: no identity: load one with LoadIdentity")
	}
	if cfg.Store == nil && cfg.Authority == nil {
		return nil, errors.New("secure: neither a Store nor an Authority: nothing would be trusted")
	}
	if cfg.MaxAge < 0 || cfg.MaxSkew < 0 || cfg.ReplayCache < 0 || cfg.MaxMessageSize < 0 || cfg.MaxDepth < 0 || cfg.LearnedCertificates < 0 {
		return nil, errors.New("secure: negative limit")
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = 5 * time.Minute
	}
	if cfg.MaxSkew == 0 {
		cfg.MaxSkew = time.Minute
	}
	if cfg.ReplayCache == 0 {
		cfg.ReplayCache = 100000
	}
	if cfg.MaxMessageSize == 0 {
		cfg.MaxMessageSize = DefaultMaxMessageSize
	}
	if cfg.MaxDepth == 0 {
		cfg.MaxDepth = DefaultMaxDepth
	}
	if cfg.LearnedCertificates == 0 {
		cfg.LearnedCertificates = 4096
	}
	o := options{}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	if o.now == nil {
		o.now = time.Now
	}
	if cfg.Identity.kem == nil && !cfg.SignOnly {
		return nil, fmt.Errorf("%w: %s has an Ed25519 key, so it could receive neither encrypted requests nor encrypted replies: set SignOnly, or issue it an ECDSA P-256 certificate", ErrCannotEncrypt, cfg.Identity.name)
	}
	// With an Authority, peers trust this certificate as one the Authority
	// signed (it travels in every envelope), not as a pinned one: it must
	// pass the checks they apply.
	if cerr := checkCert(cfg.Identity.cert, cfg.Identity.name, o.now(), cfg.Authority, cfg.Deny, cfg.Authority == nil); cerr != nil {
		return nil, fmt.Errorf("secure: own certificate: %w", cerr)
	}
	return &Transport{
		inner:   inner,
		cfg:     cfg,
		log:     o.log.With("component", "secure", "identity", cfg.Identity.name),
		now:     o.now,
		self:    cfg.Identity.name,
		selfFP:  Fingerprint(cfg.Identity.cert),
		replay:  newReplayWindow(cfg.ReplayCache),
		learned: newLRU[*x509.Certificate](cfg.LearnedCertificates, 24*time.Hour),
		trusted: newLRU[time.Time](cfg.LearnedCertificates, time.Minute),
		parsed:  newLRU[*x509.Certificate](cfg.LearnedCertificates, time.Hour),
		closing: make(chan struct{}),
	}, nil
}

// Identity returns the identity messages are signed as.
func (t *Transport) Identity() string { return t.self }

// WantsRecipient tells agents and mappers (wire.WantsRecipient) to name the
// recipient of each message in its warren-to header: Publish encrypts to
// it, and since it is signed, a receiver refuses a message meant for
// another (also with SignOnly, where it is what stops a captured request
// from being replayed into another agent's queue).
func (t *Transport) WantsRecipient() bool { return true }

// DeclareExchange implements transport.Transport.
func (t *Transport) DeclareExchange(ctx context.Context, ex transport.Exchange) error {
	return t.inner.DeclareExchange(ctx, ex)
}

// DeclareQueue implements transport.Transport.
func (t *Transport) DeclareQueue(ctx context.Context, q transport.Queue) (string, error) {
	return t.inner.DeclareQueue(ctx, q)
}

// InspectQueue implements transport.Transport.
func (t *Transport) InspectQueue(ctx context.Context, name string) (transport.QueueInfo, error) {
	return t.inner.InspectQueue(ctx, name)
}

// DeleteQueue implements transport.Transport.
func (t *Transport) DeleteQueue(ctx context.Context, name string) error {
	return t.inner.DeleteQueue(ctx, name)
}

// Bind implements transport.Transport.
func (t *Transport) Bind(ctx context.Context, b transport.Binding) error { return t.inner.Bind(ctx, b) }

// Unbind implements transport.Transport.
func (t *Transport) Unbind(ctx context.Context, b transport.Binding) error {
	return t.inner.Unbind(ctx, b)
}

// Close stops the verifying consumers and closes the inner transport.
func (t *Transport) Close() error {
	t.closeOnce.Do(func() { close(t.closing) })
	err := t.inner.Close()
	t.wg.Wait()
	return err
}

// Publish signs msg and, unless SignOnly, encrypts it to the identity in
// its warren-to header, then publishes the envelope. The signature covers
// exchange and key: a receiver refuses the message from anywhere else. It
// sets app_id (Message.AppID) to this identity when empty (a different one is ErrSenderMismatch, except
// on the dead-letter exchange, where a copy keeps its original sender), a
// message id and a timestamp when missing. A recipient whose certificate
// is unknown is ErrUnknownIdentity.
func (t *Transport) Publish(ctx context.Context, exchange, key string, msg transport.Message, opts transport.PublishOptions) error {
	sealed, err := t.seal(ctx, exchange, key, msg)
	if err != nil {
		return err
	}
	return t.inner.Publish(ctx, exchange, key, sealed, opts)
}

// NotifyReturn implements [transport.Returner] when the wrapped transport
// does: a sealed message keeps its message and correlation ids, exchange
// and key in the clear, so a return names the message as it was given to
// Publish. A basic.return comes from the broker on the publisher's own
// channel, as a confirm does.
func (t *Transport) NotifyReturn(f func(transport.Return)) (stop func(), ok bool) {
	return transport.NotifyReturn(t.inner, f)
}

// seal turns msg, to be published to exchange with key, into a secure
// message.
func (t *Transport) seal(ctx context.Context, exchange, key string, msg transport.Message) (transport.Message, error) {
	now := t.now()
	msg.Headers = maps.Clone(msg.Headers)
	if msg.Headers == nil {
		msg.Headers = map[string]any{}
	}
	switch from := msg.AppID; {
	case from == "":
		msg.AppID = t.self
	case from != t.self && exchange != wire.DeadLetterExchange:
		return msg, fmt.Errorf("%w: %q, certificate names %q", ErrSenderMismatch, from, t.self)
	}
	if msg.MessageID == "" {
		msg.MessageID = newID()
	}
	if msg.Timestamp.IsZero() {
		msg.Timestamp = now
	}
	msg.Timestamp = time.Unix(msg.Timestamp.Unix(), 0).UTC()
	msg.Expiration = roundExpiration(msg.Expiration)

	env := &envelope{
		V:      Version,
		Alg:    t.cfg.Identity.alg,
		Signer: t.self,
		Cert:   t.cfg.Identity.cert.Raw,
		TS:     now.UnixMilli(),
		CT:     msg.ContentType,
		CE:     msg.ContentEncoding,
		Ex:     exchange,
		RK:     key,
	}
	body := msg.Body
	to := wire.String(msg.Headers, wire.HeaderTo)
	if to != "" && !t.cfg.SignOnly {
		rcert, err := t.recipient(ctx, to, now)
		if err != nil {
			return msg, err
		}
		pk, err := kemPublicKey(rcert)
		if err != nil {
			return msg, fmt.Errorf("secure: encrypt to %s: %w", to, err)
		}
		env.To, env.RFP, env.Enc = to, Fingerprint(rcert), Suite
		aad, err := signedBytes(labelAAD, env, &msg, nil, false)
		if err != nil {
			return msg, fmt.Errorf("secure: %w", err)
		}
		enc, sender, err := hpke.NewSender(pk, hpke.HKDFSHA256(), hpke.AES128GCM(), []byte(hpkeInfo))
		if err != nil {
			return msg, fmt.Errorf("secure: encrypt to %s: %w", to, err)
		}
		ct, err := sender.Seal(aad, msg.Body)
		if err != nil {
			return msg, fmt.Errorf("secure: encrypt to %s: %w", to, err)
		}
		body = append(enc, ct...)
	}
	env.Body = body
	sb, err := signedBytes(labelSig, env, &msg, body, true)
	if err != nil {
		return msg, fmt.Errorf("secure: %w", err)
	}
	if env.Sig, err = t.cfg.Identity.sign(rand.Reader, sb); err != nil {
		return msg, fmt.Errorf("secure: sign: %w", err)
	}
	out, err := encodeEnvelope(env)
	if err != nil {
		return msg, fmt.Errorf("secure: encode envelope: %w", err)
	}
	if len(out) > t.cfg.MaxMessageSize {
		return msg, fmt.Errorf("%w: %d bytes, limit %d (MaxMessageSize)", ErrTooLarge, len(out), t.cfg.MaxMessageSize)
	}
	msg.Body = out
	msg.ContentType = ContentType
	msg.ContentEncoding = ""
	t.stats.sealed.Add(1)
	return msg, nil
}

// recipient finds and checks the certificate to encrypt to: one learned
// from the recipient's own messages (checked by the Authority), else the
// Store's.
func (t *Transport) recipient(ctx context.Context, to string, now time.Time) (*x509.Certificate, error) {
	if to == t.self {
		return t.cfg.Identity.cert, nil
	}
	if c, ok := t.learned.get(to, now); ok {
		if cerr := t.check(c, to, now, false); cerr == nil {
			return c, nil
		}
	}
	if t.cfg.Store == nil {
		return nil, fmt.Errorf("%w %q: no message from it seen yet and no Store configured", ErrUnknownIdentity, to)
	}
	c, err := t.cfg.Store.Certificate(ctx, to)
	if err != nil {
		if errors.Is(err, ErrUnknownIdentity) {
			return nil, err
		}
		return nil, fmt.Errorf("%w %q: store: %w", ErrUnknownIdentity, to, err)
	}
	if cerr := t.check(c, to, now, true); cerr != nil {
		return nil, fmt.Errorf("%w: %w", ErrUntrustedRecipient, cerr)
	}
	return c, nil
}

// check is checkCert with a short memory of success.
func (t *Transport) check(c *x509.Certificate, identity string, now time.Time, pinned bool) *certError {
	key := identity + "\x00" + Fingerprint(c)
	if pinned {
		key += "\x00p"
	}
	if until, ok := t.trusted.get(key, now); ok && now.Before(until) {
		return nil
	}
	if cerr := checkCert(c, identity, now, t.cfg.Authority, t.cfg.Deny, pinned); cerr != nil {
		return cerr
	}
	until := now.Add(time.Minute)
	if c.NotAfter.Before(until) {
		until = c.NotAfter
	}
	t.trusted.put(key, until, now)
	return nil
}

// Consume starts a consumer on queue and hands on only the deliveries that
// verify: each one's body and content type are the original ones. The
// others are rejected (see the package documentation).
func (t *Transport) Consume(ctx context.Context, queue string, opts transport.ConsumeOptions) (<-chan *transport.Delivery, error) {
	if queue == wire.DeadLetterQueue {
		// Its letters would fail verification and be dead-lettered into
		// it again, for ever.
		return nil, ErrDeadLetterQueue
	}
	in, err := t.inner.Consume(ctx, queue, opts)
	if err != nil {
		return nil, err
	}
	out := make(chan *transport.Delivery)
	life := newConsumerLife()
	t.wg.Go(func() {
		defer close(out)
		// Before out closes: a consumer started once out closed must find
		// this one dead, to accept the redeliveries of what it held.
		defer close(life.dead)
		for d := range in {
			od := t.open(ctx, queue, d, opts.AutoAck, life)
			if od == nil {
				continue
			}
			select {
			case out <- od:
			case <-ctx.Done():
				t.giveBack(d, od)
			case <-t.closing:
				t.giveBack(d, od)
			}
		}
	})
	return out, nil
}

// giveBack requeues a verified delivery that its consumer did not take.
func (t *Transport) giveBack(d, od *transport.Delivery) {
	if err := od.Nack(true); err != nil {
		t.log.Debug("requeue of an untaken delivery failed; the broker requeues it", "err", err, "message_id", d.MessageID)
	}
}

// open verifies and decrypts one delivery from queue, taken by the
// consumer life. It returns the delivery to hand on, or nil when it
// rejected it or gave it back.
func (t *Transport) open(ctx context.Context, queue string, d *transport.Delivery, autoAck bool, life *consumerLife) *transport.Delivery {
	msg, key, rej := t.verify(ctx, queue, d, autoAck, life)
	if rej == errGiveBack {
		if err := d.Nack(true); err != nil {
			t.log.Debug("requeue of a redelivery failed; the broker requeues it", "err", err, "message_id", d.MessageID)
		}
		return nil
	}
	if rej != nil {
		t.reject(ctx, d, rej)
		return nil
	}
	t.stats.opened.Add(1)
	var once atomic.Bool
	od := transport.NewDelivery(msg, func(ack, requeue bool) error {
		if !once.CompareAndSwap(false, true) {
			// Settled before: the inner delivery says so, and the replay
			// cache already knows.
			if ack {
				return d.Ack()
			}
			return d.Nack(requeue)
		}
		if !ack && requeue {
			// Forgotten first: the broker may redeliver it at once, even
			// to this consumer, which must then accept it. (Should the
			// nack fail, the channel is gone and the broker requeues it
			// anyway.)
			t.replay.settled(key, true, life)
			return d.Nack(true)
		}
		var err error
		if ack {
			err = d.Ack()
		} else {
			err = d.Nack(false)
		}
		if err == nil {
			// Otherwise the channel is gone: the broker redelivers it,
			// which the replay cache must let through.
			t.replay.settled(key, false, life)
		}
		return err
	})
	od.Exchange, od.RoutingKey, od.Redelivered, od.ConsumerTag = d.Exchange, d.RoutingKey, d.Redelivered, d.ConsumerTag
	return od
}

// errGiveBack is verify's answer for a delivery to requeue without a
// verdict: a redelivered copy of a message still in hand on another live
// consumer, when this consumer stops or tired of waiting.
var errGiveBack = &rejection{}

// redeliveryWait bounds how long a consumer waits for the verdict on a
// redelivered copy of a message in hand on another consumer of the same
// transport, before giving it back to the broker.
const redeliveryWait = 5 * time.Second

// rejection is why a delivery is not handed on.
type rejection struct {
	reason Reason
	err    error
	// signer is the authenticated sender, "" when the signature was not
	// verified.
	signer string
	// answer: the message itself is refused, wherever and however often
	// it is delivered, so its authenticated sender is told (an error
	// reply). Not for what an attacker provokes by copying a genuine
	// message (a replay, a message moved to another queue): an error reply
	// could then beat the genuine reply to the caller.
	answer bool
}

func reject(reason Reason, signer string, format string, args ...any) *rejection {
	return &rejection{reason: reason, err: fmt.Errorf(format, args...), signer: signer}
}

// answered marks a rejection of an authenticated message that its sender
// is to be told about.
func (r *rejection) answered() *rejection {
	r.answer = r.signer != ""
	return r
}

// verify checks d, consumed from queue, and returns the plain message and
// its replay key.
func (t *Transport) verify(ctx context.Context, queue string, d *transport.Delivery, autoAck bool, life *consumerLife) (transport.Message, string, *rejection) {
	now := t.now()
	msg := d.Message
	if d.ContentType != ContentType {
		return msg, "", reject(ReasonUnsigned, "", "content type %q is not %s: message not signed", d.ContentType, ContentType)
	}
	if msg.MessageID == "" {
		// The replay cache's key. (The signature is no substitute: ECDSA
		// signatures are malleable.)
		return msg, "", reject(ReasonMalformed, "", "no message_id: a secure message must have one")
	}
	if why, ok := d.Headers[transport.HeaderMalformed].(string); ok {
		// The transport removed headers it could not read.
		return msg, "", reject(ReasonMalformed, "", "malformed message: %s", why)
	}
	env, err := decodeEnvelope(d.Body, t.cfg.MaxMessageSize, t.cfg.MaxDepth)
	if err != nil {
		return msg, "", reject(ReasonMalformed, "", "%v", err)
	}

	// The signer's certificate: the one the envelope carries when an
	// Authority vouches for it, else the Store's.
	cert, rej := t.signerCert(ctx, env, now)
	if rej != nil {
		return msg, "", rej
	}
	if alg, _ := keyAlg(cert); alg != env.Alg {
		return msg, "", reject(ReasonBadSignature, "", "signature algorithm %s does not fit the %s key of %s", env.Alg, alg, env.Signer)
	}
	sb, err := signedBytes(labelSig, env, &msg, env.Body, true)
	if err != nil {
		return msg, "", reject(ReasonMalformed, "", "%v", err)
	}
	if !verifySig(cert, env.Alg, sb, env.Sig) {
		return msg, "", reject(ReasonBadSignature, "", "signature of %s does not verify: body or headers altered", env.Signer)
	}
	signer := env.Signer // authenticated from here on

	// No exception for dead letters here: a consumer reached through
	// warren.dlx is not to be told that another identity sent a message.
	if from := msg.AppID; from != signer {
		return msg, "", reject(ReasonBadSignature, "", "app_id %q is not the signer %q", from, signer)
	}
	if env.TS < windowStart(now, t.cfg.MaxAge) {
		return msg, "", reject(ReasonReplayed, signer, "signed %s ago, more than the replay window %s", now.Sub(time.UnixMilli(env.TS)).Round(time.Millisecond), t.cfg.MaxAge)
	}
	if env.TS > now.Add(t.cfg.MaxSkew).UnixMilli() {
		// Refused wherever it goes: its sender's clock runs ahead.
		return msg, "", reject(ReasonReplayed, signer, "signed %s in the future, more than the allowed skew %s", time.UnixMilli(env.TS).Sub(now).Round(time.Millisecond), t.cfg.MaxSkew).answered()
	}
	if err := checkDestination(env, d, queue); err != nil {
		return msg, "", reject(ReasonNotForMe, signer, "%v", err)
	}
	if to := wire.String(msg.Headers, wire.HeaderTo); to != "" && to != t.self {
		return msg, "", reject(ReasonNotForMe, signer, "addressed to %q, this is %q", to, t.self)
	}
	body := env.Body
	if env.Enc != "" {
		if env.To != t.self || wire.String(msg.Headers, wire.HeaderTo) != env.To {
			return msg, "", reject(ReasonNotForMe, signer, "encrypted to %q, this is %q", env.To, t.self)
		}
		if env.RFP != t.selfFP {
			// Where it was sent, to whom it was sent, but to the
			// recipient's previous certificate: its sender is to retry.
			return msg, "", reject(ReasonNotForMe, signer, "encrypted to certificate %s…, this one is %s… (rotated?)", env.RFP[:16], t.selfFP[:16]).answered()
		}
		if t.cfg.Identity.kem == nil {
			return msg, "", reject(ReasonNotForMe, signer, "encrypted to an Ed25519 identity, which cannot decrypt").answered()
		}
		pt, err := t.decrypt(env, &msg)
		if err != nil {
			// The signed ciphertext itself is bad: every copy fails.
			return msg, "", reject(ReasonBadSignature, signer, "decryption failed: %v", err).answered()
		}
		body = pt
	}
	if err := checkHeartbeat(d.Type, body, signer); err != nil {
		return msg, "", reject(ReasonBadSignature, "", "%v", err)
	}
	key := signer + "\x00" + msg.MessageID
	verdict, holderEnded, settled := t.replay.admit(key, env.TS, d.Redelivered, autoAck, windowStart(now, t.cfg.MaxAge), life)
	if verdict == admitWait {
		// Another consumer of this transport holds the first delivery.
		// Its end makes this copy the broker's redelivery; its settlement
		// makes it a replay.
		timer := time.NewTimer(redeliveryWait)
		defer timer.Stop()
		select {
		case <-holderEnded:
		case <-settled:
		case <-timer.C:
			return msg, "", errGiveBack
		case <-ctx.Done():
			return msg, "", errGiveBack
		case <-t.closing:
			return msg, "", errGiveBack
		}
		verdict, _, _ = t.replay.admit(key, env.TS, d.Redelivered, autoAck, windowStart(t.now(), t.cfg.MaxAge), life)
		if verdict == admitWait { // held again by a third consumer
			return msg, "", errGiveBack
		}
	}
	switch verdict {
	case admitReplayed:
		return msg, "", reject(ReasonReplayed, signer, "message id %q from %s seen before", msg.MessageID, signer)
	case admitBelowFloor:
		return msg, "", reject(ReasonReplayed, signer, "older than the oldest message the full replay cache remembers")
	}
	// Learn the certificate to encrypt replies to only from a message that
	// passed every check: a replayed or stale one must not switch it back
	// to a rotated key.
	if env.Cert != nil && t.cfg.Authority != nil && signer != t.self {
		t.learned.put(signer, cert, now)
	}
	msg.Body = body
	msg.ContentType = env.CT
	msg.ContentEncoding = env.CE
	return msg, key, nil
}

// checkDestination refuses a message delivered from elsewhere than its
// signer published it to: another exchange or routing key, or a queue that
// Warren's topology does not route that exchange and key to (a copy bound
// or published into another agent's queue). Fan-out exchanges reach a
// queue per receiver, which each receiver's replay cache covers.
func checkDestination(env *envelope, d *transport.Delivery, queue string) error {
	if d.Exchange != env.Ex || d.RoutingKey != env.RK {
		return fmt.Errorf("published to %s, signed for %s", destination(d.Exchange, d.RoutingKey), destination(env.Ex, env.RK))
	}
	var want string
	switch env.Ex {
	case transport.DefaultExchange:
		want = env.RK
	case wire.RequestExchange:
		want = wire.AgentQueue(env.RK)
	case wire.ServiceExchange:
		want = wire.ServiceQueue(env.RK)
	default:
		return nil
	}
	if queue != want {
		return fmt.Errorf("signed for %s, which is queue %q's, consumed from queue %q", destination(env.Ex, env.RK), want, queue)
	}
	return nil
}

func destination(exchange, key string) string {
	if exchange == transport.DefaultExchange {
		return fmt.Sprintf("the default exchange with key %q", key)
	}
	return fmt.Sprintf("exchange %q with key %q", exchange, key)
}

// signerCert finds and checks the certificate that speaks for env.Signer.
func (t *Transport) signerCert(ctx context.Context, env *envelope, now time.Time) (*x509.Certificate, *rejection) {
	if env.Signer == t.self {
		if env.Cert != nil && string(env.Cert) != string(t.cfg.Identity.cert.Raw) {
			return nil, reject(ReasonUntrusted, "", "message claims to be from this identity %q with another certificate", t.self)
		}
		return t.cfg.Identity.cert, nil
	}
	if env.Cert != nil && t.cfg.Authority != nil {
		c, err := t.parseCert(env.Cert, now)
		if err != nil {
			return nil, reject(ReasonMalformed, "", "certificate of %s: %v", env.Signer, err)
		}
		if cerr := t.check(c, env.Signer, now, false); cerr != nil {
			return nil, reject(cerr.reason, "", "%v", cerr)
		}
		return c, nil
	}
	if t.cfg.Store == nil {
		return nil, reject(ReasonUntrusted, "", "no certificate for %s: the message carries none and there is no Store", env.Signer)
	}
	c, err := t.cfg.Store.Certificate(ctx, env.Signer)
	if err != nil {
		return nil, reject(ReasonUntrusted, "", "unknown identity %q: %v", env.Signer, err)
	}
	if env.Cert != nil && string(env.Cert) != string(c.Raw) {
		return nil, reject(ReasonUntrusted, "", "message of %s carries certificate %s…, the store has %s…", env.Signer, fingerprintDER(env.Cert)[:16], Fingerprint(c)[:16])
	}
	if cerr := t.check(c, env.Signer, now, true); cerr != nil {
		return nil, reject(cerr.reason, "", "%v", cerr)
	}
	return c, nil
}

// parseCert parses a certificate's DER, remembering recent ones: peers
// send the same certificate with every message.
func (t *Transport) parseCert(der []byte, now time.Time) (*x509.Certificate, error) {
	key := fingerprintDER(der)
	if c, ok := t.parsed.get(key, now); ok {
		return c, nil
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	t.parsed.put(key, c, now)
	return c, nil
}

// decrypt opens the HPKE ciphertext of env: enc followed by the AEAD
// ciphertext, with the signed header block as associated data.
func (t *Transport) decrypt(env *envelope, msg *transport.Message) ([]byte, error) {
	const encLen = 65 // an uncompressed P-256 point
	if len(env.Body) < encLen+16 {
		return nil, errors.New("ciphertext too short")
	}
	aad, err := signedBytes(labelAAD, env, msg, nil, false)
	if err != nil {
		return nil, err
	}
	r, err := hpke.NewRecipient(env.Body[:encLen], t.cfg.Identity.kem, hpke.HKDFSHA256(), hpke.AES128GCM(), []byte(hpkeInfo))
	if err != nil {
		return nil, err
	}
	return r.Open(aad, env.Body[encLen:])
}

// checkHeartbeat refuses a heartbeat that speaks for another agent than
// its signer: mappers key their registry by the body's identity.
func checkHeartbeat(typ string, body []byte, signer string) error {
	switch typ {
	case wire.TypeRegister, wire.TypePing, wire.TypeUnregister:
	default:
		return nil
	}
	var hb struct {
		Identity string `json:"identity"`
	}
	if err := jsonUnmarshal(body, &hb); err != nil {
		return nil // the mapper ignores malformed heartbeats itself
	}
	if hb.Identity != signer {
		return fmt.Errorf("heartbeat for agent %q signed by %q", hb.Identity, signer)
	}
	return nil
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
