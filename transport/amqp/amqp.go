package amqp

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenrpc/warren/transport"
)

// Config configures a Transport. The zero value of each field means its
// default.
type Config struct {
	// Heartbeat is the AMQP heartbeat interval; a connection that stays
	// silent for two intervals is considered lost. 0 means 10s.
	Heartbeat time.Duration
	// TLS configures the TLS client for amqps:// URLs. nil means the
	// system roots and the URL's host name.
	TLS *tls.Config
	// ConnectionName is shown by rabbitmqctl list_connections and the
	// management UI, suffixed with " (publish)" or " (consume)". "" means
	// "warren".
	ConnectionName string
	// ConfirmWindow bounds the confirmed publishes waiting for their
	// publisher confirm; more wait in Publish (honouring ctx). 0 means 1024.
	ConfirmWindow int
	// PublishChannels is how many AMQP channels of the publish connection
	// carry confirmed publishes (as many again carry unconfirmed ones);
	// 0 means 1, at most 64 (more is an error from Dial). Publishes of one connection are serialised
	// on its socket whatever the count, and RabbitMQ acknowledges the
	// publishes of one channel in batches: one channel measured 10% more
	// round trips than four on two cores (docs/benchmarks.md). More
	// channels confine the damage of a publish that closes its channel
	// (to an exchange that does not exist): the confirmed publishes in
	// flight on that channel fail with ErrConnectionLost.
	PublishChannels int
}

// maxPublishChannels bounds Config.PublishChannels.
const maxPublishChannels = 64

func (c Config) publishChannels() int {
	return max(c.PublishChannels, 1)
}

func (c Config) heartbeat() time.Duration {
	if c.Heartbeat <= 0 {
		return 10 * time.Second
	}
	return c.Heartbeat
}

func (c Config) confirmWindow() int {
	if c.ConfirmWindow <= 0 {
		return 1024
	}
	return c.ConfirmWindow
}

// Option configures what only Go code can pass to Dial.
type Option func(*options)

type options struct {
	logger *slog.Logger
}

// WithLogger makes the transport log to l: connection losses and
// reconnection attempts at Warn, reconnections and flow control at Info and
// Warn, channel churn at Debug. The default discards.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// topologyPool is how many idle channels for declarations are kept.
const topologyPool = 4

// Transport is a transport.Transport on a RabbitMQ broker. It holds two
// connections: one for publishing and one for consuming and declaring (so
// that exclusive queues belong to the connection that consumes them, and
// flow control on publishers never stalls consumers), and redials both when
// either is lost. All methods are safe for concurrent use.
type Transport struct {
	log  *slog.Logger
	cfg  Config
	urls []string // the nodes, in the order given
	node int      // index in urls of the node of the current link

	publisher *publisher

	closing   chan struct{}   // closed when Close starts
	life      context.Context // cancelled when Close starts
	endLife   context.CancelFunc
	closeOnce sync.Once
	closed    atomic.Bool

	// supervised is closed when the supervisor returns; final is then the
	// link Close must close (nil when the supervisor closed the last one).
	supervised chan struct{}
	final      *link

	stats counters

	// returns gets the returns of Unconfirmed publishes (NotifyReturn).
	returns transport.Returns

	mu        sync.Mutex
	cur       *link         // nil while reconnecting
	up        chan struct{} // closed while cur is set
	consumers map[*consumer]struct{}
	wg        sync.WaitGroup // abandoned operations
}

var (
	_ transport.Transport = (*Transport)(nil)
	_ transport.Returner  = (*Transport)(nil)
)

// Dial connects to the broker at url (amqp:// or amqps://) and returns a
// Transport. ctx bounds the connection attempts; Dial itself does not retry.
// The error names the URL without its password and wraps a *DialError.
// Once connected, the Transport reconnects by itself after a loss until
// Close.
//
// url may list the nodes of a cluster, separated by commas (SplitURLs).
// Dial tries them in order and keeps the first that accepts both
// connections; after a loss, each reconnection attempt tries the next node
// in turn, starting with the one after the node that was lost, with the
// same backoff and jitter as for one node. Consumers and the topology they
// declared are restored on whichever node answers.
func Dial(ctx context.Context, url string, cfg Config, opts ...Option) (*Transport, error) {
	var o options
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ConfirmWindow < 0 {
		return nil, fmt.Errorf("amqp: negative ConfirmWindow %d", cfg.ConfirmWindow)
	}
	if cfg.PublishChannels < 0 || cfg.PublishChannels > maxPublishChannels {
		return nil, fmt.Errorf("amqp: PublishChannels %d out of range 0-%d", cfg.PublishChannels, maxPublishChannels)
	}
	urls := SplitURLs(url)
	for _, u := range urls {
		if _, err := amqp091.ParseURI(u); err != nil {
			// The parser's message may quote part of a misread password.
			return nil, &DialError{URL: RedactURL(u), Err: errBadURL}
		}
	}
	log := o.logger.With("component", "transport/amqp")
	t := &Transport{
		log:        log,
		cfg:        cfg,
		urls:       urls,
		closing:    make(chan struct{}),
		supervised: make(chan struct{}),
		up:         make(chan struct{}),
		consumers:  make(map[*consumer]struct{}),
	}
	t.life, t.endLife = context.WithCancel(context.Background())
	var (
		l    *link
		errs []error
	)
	for i, u := range urls {
		var err error
		if l, err = dialLink(ctx, u, cfg, log, 1, t.linkLost, t.malformed); err == nil {
			t.node = i
			break
		}
		if len(urls) == 1 {
			t.endLife()
			return nil, &DialError{URL: RedactURL(u), Err: err}
		}
		errs = append(errs, &DialError{URL: RedactURL(u), Err: err})
		if ctx.Err() != nil {
			break
		}
	}
	if l == nil {
		t.endLife()
		return nil, &DialError{URL: RedactURL(url), Err: errors.Join(errs...)}
	}
	t.publisher = newPublisher(t)
	t.mu.Lock()
	if !l.isLost() {
		t.cur = l
		close(t.up)
	}
	t.mu.Unlock()
	go t.supervise(l)
	return t, nil
}

// Close stops all consumers (their unsettled deliveries are requeued by the
// broker), stops reconnecting, fails publishes still waiting for a confirm
// with ErrClosed, and closes both connections, which deletes the exclusive
// queues declared through this transport. Operations waiting for a
// reconnection return ErrClosed. It waits for every goroutine of the
// transport and is idempotent; concurrent calls wait for the first.
func (t *Transport) Close() error {
	t.closeOnce.Do(func() {
		t.mu.Lock()
		t.closed.Store(true)
		close(t.closing)
		t.endLife()
		// Consumers see closing, cancel and close their channels.
		cs := make([]*consumer, 0, len(t.consumers))
		for c := range t.consumers {
			cs = append(cs, c)
		}
		t.mu.Unlock()
		for _, c := range cs {
			<-c.done
		}
		<-t.supervised
		t.publisher.close(t.final) // closes the final link's publish connection
		if t.final != nil {
			t.final.close(closeTimeout)
		}
		// Operations abandoned by their ctx end with the connection.
		t.wg.Wait()
	})
	return nil
}

// mapErr converts an error of an operation on the consume connection of l.
func (t *Transport) mapErr(l *link, op, name string, err error) error {
	if err != nil {
		t.noticeLoss(l, err)
	}
	return brokerError(op, name, err, t.closed.Load(), l.isLost() || l.cons.c.IsClosed())
}

// topology runs fn on a channel of the consume connection, honouring ctx:
// when ctx ends first, fn's channel is closed once fn returns and ctx's error
// is returned. A channel that the broker closed (any channel-level error) is
// dropped; the others are reused. While the transport reconnects, topology
// waits for it.
func (t *Transport) topology(ctx context.Context, op, name string, names []string, fn func(ch *amqp091.Channel) error) error {
	for _, n := range names {
		if err := checkShort("name", n); err != nil {
			return fmt.Errorf("amqp: %s %q: %w", op, name, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("amqp: %s %q: %w", op, name, err)
	}
	l, err := t.link(ctx, op, name)
	if err != nil {
		return err
	}
	// A pooled channel may have been closed since; retry once on a fresh
	// one when the failure is a closed channel on a live connection.
	for attempt := 0; ; attempt++ {
		ch, err := l.topoChannel()
		if err != nil {
			t.noticeLoss(l, err)
			if l.isLost() && !t.closed.Load() {
				// Nothing was sent: wait for the next connection.
				if l, err = t.link(ctx, op, name); err != nil {
					return err
				}
				continue
			}
			return t.mapErr(l, op, name, err)
		}
		err = t.runOn(ctx, l, ch, fn)
		if errors.Is(err, amqp091.ErrClosed) && attempt == 0 && !l.isLost() && !l.cons.c.IsClosed() && !t.closed.Load() {
			continue
		}
		if ctxErr := ctx.Err(); ctxErr != nil && err == ctxErr {
			return fmt.Errorf("amqp: %s %q: %w", op, name, err)
		}
		return t.mapErr(l, op, name, err)
	}
}

// runOn calls fn(ch) and gives ch back to l's pool; when ctx ends first it
// returns ctx.Err() and leaves fn to finish in a goroutine that closes ch.
func (t *Transport) runOn(ctx context.Context, l *link, ch *amqp091.Channel, fn func(ch *amqp091.Channel) error) error {
	err := t.await(ctx, func() error { return fn(ch) }, func() { _ = ch.Close() })
	if ctx.Err() == nil || err != ctx.Err() {
		t.putTopoChannel(l, ch)
	}
	return err
}

func (l *link) topoChannel() (*amqp091.Channel, error) {
	for {
		select {
		case ch := <-l.topo:
			if ch.IsClosed() {
				continue
			}
			return ch, nil
		default:
			return l.cons.c.Channel()
		}
	}
}

func (t *Transport) putTopoChannel(l *link, ch *amqp091.Channel) {
	if ch.IsClosed() {
		return
	}
	if t.closed.Load() || l.isLost() {
		_ = ch.Close()
		return
	}
	select {
	case l.topo <- ch:
	default:
		_ = ch.Close()
	}
}

// DeclareExchange declares ex. Redeclaring it with different properties,
// declaring the default exchange or a name starting with "amq." is
// ErrPrecondition.
func (t *Transport) DeclareExchange(ctx context.Context, ex transport.Exchange) error {
	kind := ex.Kind
	switch kind {
	case transport.Direct, transport.Fanout, transport.Topic:
	default:
		// RabbitMQ answers an unknown type by closing the connection.
		return fmt.Errorf("amqp: declare exchange %q: unknown kind %q", ex.Name, kind)
	}
	if ex.Name == transport.DefaultExchange {
		return fmt.Errorf("amqp: declare exchange %q: the default exchange cannot be declared: %w", ex.Name, transport.ErrPrecondition)
	}
	return t.topology(ctx, "declare exchange", ex.Name, []string{ex.Name}, func(ch *amqp091.Channel) error {
		return ch.ExchangeDeclare(ex.Name, string(kind), ex.Durable, ex.AutoDelete, false, false, nil)
	})
}

// DeclareQueue declares q and returns its name. Exclusive queues belong to
// the transport's consuming connection, so only this transport can consume
// them, and they are deleted when it closes.
func (t *Transport) DeclareQueue(ctx context.Context, q transport.Queue) (string, error) {
	args, durable, err := queueArgs(q)
	if err != nil {
		return "", err
	}
	var name string
	err = t.topology(ctx, "declare queue", q.Name, []string{q.Name, q.DeadLetterExchange, q.DeadLetterRoutingKey}, func(ch *amqp091.Channel) error {
		dq, err := ch.QueueDeclare(q.Name, durable, q.AutoDelete, q.Exclusive, false, args)
		name = dq.Name
		return err
	})
	if err != nil {
		return "", err
	}
	return name, nil
}

// queueArgs returns the x-arguments and the durable flag for q. Invalid
// combinations are ErrPrecondition, as RabbitMQ's 406 for bad arguments.
func queueArgs(q transport.Queue) (amqp091.Table, bool, error) {
	bad := func(format string, a ...any) (amqp091.Table, bool, error) {
		return nil, false, fmt.Errorf("amqp: declare queue %q: %s: %w", q.Name, fmt.Sprintf(format, a...), transport.ErrPrecondition)
	}
	args := amqp091.Table{}
	durable := q.Durable
	switch q.Type {
	case "", transport.Classic:
	case transport.Quorum:
		if q.Exclusive || q.AutoDelete {
			return bad("a quorum queue cannot be exclusive or auto-delete")
		}
		durable = true
		args[amqp091.QueueTypeArg] = amqp091.QueueTypeQuorum
	default:
		return bad("unknown queue type %q", q.Type)
	}
	if q.DeliveryLimit != 0 && q.Type != transport.Quorum {
		return bad("DeliveryLimit needs a quorum queue")
	}
	// Durations go in whole milliseconds, truncated. x-message-ttl 0 is
	// valid (expire unless delivered at once) but means "unset" here.
	switch {
	case q.MessageTTL < 0:
		return bad("negative MessageTTL %v", q.MessageTTL)
	case q.MessageTTL >= time.Millisecond:
		args[amqp091.QueueMessageTTLArg] = q.MessageTTL.Milliseconds()
	}
	switch {
	case q.Expires < 0:
		return bad("negative Expires %v", q.Expires)
	case q.Expires > 0 && q.Expires < time.Millisecond:
		return bad("Expires must be at least 1ms")
	case q.Expires > 0:
		args[amqp091.QueueTTLArg] = q.Expires.Milliseconds()
	}
	switch {
	case q.MaxLength < 0:
		return bad("negative MaxLength %d", q.MaxLength)
	case q.MaxLength > 0:
		args[amqp091.QueueMaxLenArg] = int64(q.MaxLength)
	}
	if q.DeadLetterExchange != "" {
		args["x-dead-letter-exchange"] = q.DeadLetterExchange
	}
	if q.DeadLetterRoutingKey != "" {
		args["x-dead-letter-routing-key"] = q.DeadLetterRoutingKey
	}
	switch {
	case q.DeliveryLimit < 0:
		return bad("negative DeliveryLimit %d", q.DeliveryLimit)
	case q.DeliveryLimit > 0:
		args["x-delivery-limit"] = int64(q.DeliveryLimit)
	}
	if len(args) == 0 {
		args = nil
	}
	return args, durable, nil
}

// InspectQueue is a passive queue.declare: the queue's ready messages and
// consumers, ErrNotFound when it does not exist (the broker closes that
// channel; the transport opens another).
func (t *Transport) InspectQueue(ctx context.Context, name string) (transport.QueueInfo, error) {
	var info transport.QueueInfo
	err := t.topology(ctx, "inspect queue", name, []string{name}, func(ch *amqp091.Channel) error {
		q, err := ch.QueueDeclarePassive(name, false, false, false, false, nil)
		info = transport.QueueInfo{Messages: q.Messages, Consumers: q.Consumers}
		return err
	})
	if err != nil {
		return transport.QueueInfo{}, err
	}
	return info, nil
}

// DeleteQueue deletes the queue and its messages; a missing queue is not an
// error. Consumers of the queue see their delivery channel closed.
func (t *Transport) DeleteQueue(ctx context.Context, name string) error {
	return t.topology(ctx, "delete queue", name, []string{name}, func(ch *amqp091.Channel) error {
		_, err := ch.QueueDelete(name, false, false, false)
		return err
	})
}

// Bind routes b.Exchange to b.Queue with b.Key. A missing exchange or queue
// is ErrNotFound.
func (t *Transport) Bind(ctx context.Context, b transport.Binding) error {
	return t.topology(ctx, "bind queue", b.Queue, []string{b.Exchange, b.Queue, b.Key}, func(ch *amqp091.Channel) error {
		return ch.QueueBind(b.Queue, b.Key, b.Exchange, false, nil)
	})
}

// Unbind removes a binding; a missing binding is not an error.
func (t *Transport) Unbind(ctx context.Context, b transport.Binding) error {
	return t.topology(ctx, "unbind queue", b.Queue, []string{b.Exchange, b.Queue, b.Key}, func(ch *amqp091.Channel) error {
		return ch.QueueUnbind(b.Queue, b.Key, b.Exchange, nil)
	})
}

// newTag returns a consumer tag unique enough for one broker.
func newTag() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "warren-" + hex.EncodeToString(b[:])
}
