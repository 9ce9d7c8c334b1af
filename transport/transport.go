// Package transport is the small surface that Warren's agents, mappers and
// peers are written against, with two implementations: transport/mem, an
// embedded in-process broker, and transport/amqp, RabbitMQ through
// github.com/rabbitmq/amqp091-go.
//
// The vocabulary is AMQP 0-9-1's: exchanges (direct, fanout, topic), queues,
// bindings, publishes with properties and headers, consumers with prefetch,
// acknowledgements, requeue and dead-lettering. Every behaviour that Warren
// relies on is pinned down by the conformance suite in
// transport/transporttest, which both implementations pass; the embedded
// broker has no feature flags that let it differ from RabbitMQ.
//
// # Concurrency
//
// All methods of a Transport are safe for concurrent use. A Delivery may be
// settled from any goroutine.
//
// # Delivery guarantees
//
// A message taken by a consumer that is not acknowledged before its consumer,
// channel or connection goes away is requeued and redelivered with
// Redelivered set, as RabbitMQ does. Nack without requeue dead-letters the
// message when its queue has a dead-letter exchange, and drops it otherwise.
package transport

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Errors returned by transports. Implementations wrap them with the name of
// the exchange or queue involved, so test with errors.Is.
var (
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("transport: closed")
	// ErrUnroutable is returned by a mandatory Publish that no queue took.
	ErrUnroutable = errors.New("transport: message unroutable")
	// ErrNacked is returned by a confirmed Publish that the broker refused.
	ErrNacked = errors.New("transport: message nacked by broker")
	// ErrNotFound is returned when a queue or exchange named in an operation
	// does not exist (AMQP 404).
	ErrNotFound = errors.New("transport: not found")
	// ErrPrecondition is returned when a declaration conflicts with an
	// existing entity of the same name (AMQP 406), or a consumer asks for
	// exclusive access to a queue already consumed (AMQP 403 for a queue
	// in exclusive use, not for a permission: see ErrAccessRefused).
	ErrPrecondition = errors.New("transport: precondition failed")
	// ErrAccessRefused is returned when the broker refuses the operation
	// because the user lacks the permission for it (AMQP 403
	// ACCESS_REFUSED naming the user: configure, write or read access to
	// an exchange or queue, a user_id property that is not the user's).
	// It is not ErrPrecondition: retrying as the same user cannot help.
	ErrAccessRefused = errors.New("transport: access refused")
	// ErrAlreadySettled is returned by a second Ack or Nack of one Delivery.
	ErrAlreadySettled = errors.New("transport: delivery already settled")
	// ErrConnectionLost is returned for work in flight when the connection to
	// the broker dropped. A retry may succeed.
	ErrConnectionLost = errors.New("transport: connection lost")
)

// HeaderMalformed is set on a delivery whose properties the transport could
// not read whole: RabbitMQ passes on headers that its AMQP client refuses
// (a table or array nested deeper than 32 levels, more than 8192 entries,
// an unknown field type), and one such message used to break the whole
// consuming connection. The transport delivers it instead, with the
// unreadable headers (or properties) removed and this header saying which
// and why; body and readable properties are intact. Consumers treat the
// message as malformed input: Warren's agents answer it with a bad_request
// error or dead-letter it, mappers drop it with a log line. A sender can
// set it too; it then only spoils its own message.
const HeaderMalformed = "warren-malformed"

// Kind is an exchange type.
type Kind string

// The exchange kinds Warren uses.
const (
	Direct Kind = "direct"
	Fanout Kind = "fanout"
	Topic  Kind = "topic"
)

// DefaultExchange is the nameless direct exchange to which every queue is
// bound with its own name as the routing key.
const DefaultExchange = ""

// Exchange describes an exchange to declare.
type Exchange struct {
	Name       string
	Kind       Kind
	Durable    bool // survives a broker restart
	AutoDelete bool // deleted when its last binding is removed
}

// QueueType selects the queue implementation.
type QueueType string

// Queue types. Quorum queues are replicated and durable; they count
// deliveries (x-delivery-count) and honour DeliveryLimit.
const (
	Classic QueueType = "classic"
	Quorum  QueueType = "quorum"
)

// Queue describes a queue to declare.
type Queue struct {
	// Name of the queue; "" asks the broker to generate one, which
	// DeclareQueue returns.
	Name       string
	Type       QueueType // "" means Classic
	Durable    bool      // survives a broker restart (always true for Quorum)
	Exclusive  bool      // owned by this transport's connection, deleted with it
	AutoDelete bool      // deleted when its last consumer is cancelled

	// MessageTTL expires messages that stay longer in the queue (x-message-ttl).
	MessageTTL time.Duration
	// Expires deletes the queue after it has been unused this long (x-expires).
	Expires time.Duration
	// MaxLength bounds the number of ready messages (x-max-length); the
	// oldest are dropped or dead-lettered. 0 means unbounded.
	MaxLength int
	// DeadLetterExchange receives messages that are rejected without
	// requeue, expire, or overflow (x-dead-letter-exchange).
	DeadLetterExchange string
	// DeadLetterRoutingKey replaces the routing key of dead-lettered
	// messages (x-dead-letter-routing-key); "" keeps the original key.
	DeadLetterRoutingKey string
	// DeliveryLimit dead-letters a message after this many redeliveries
	// (x-delivery-limit; Quorum queues only). 0 means no limit.
	DeliveryLimit int
}

// MaxExpiration is the longest Message.Expiration: RabbitMQ's limit on a
// per-message TTL, 2^32-1 milliseconds (about 49.7 days). Every transport
// refuses a longer one, before anything is sent.
const MaxExpiration = (1<<32 - 1) * time.Millisecond

// QueueInfo is what InspectQueue reports of a queue, as RabbitMQ's
// queue.declare-ok does.
type QueueInfo struct {
	// Messages ready for delivery (not those delivered and unacknowledged).
	Messages int
	// Consumers of the queue. It drops at once when a consumer's
	// connection goes away (a crashed process included).
	Consumers int
}

// Binding routes messages from an exchange to a queue. For a topic exchange
// Key is a pattern in which * matches one dot-separated word and # matches
// zero or more.
type Binding struct {
	Exchange string
	Queue    string
	Key      string
}

// Message is what is published: a body and its AMQP basic properties.
// Zero values mean "not set".
type Message struct {
	Body            []byte
	ContentType     string
	ContentEncoding string
	// Headers hold values of these Go types only: string, []byte, bool,
	// int32, int64, float64, time.Time, []any and map[string]any of the same.
	// Transports convert other integer types to int64 on the way in.
	//
	// Publish may keep the map it is given, and what it holds, after it
	// returns (the embedded broker keeps it as its copy of the message
	// rather than copying it): do not modify a map once it is published;
	// to publish changed headers, change a copy (maps.Clone). Transports
	// never modify it, and the headers of every Delivery are its
	// consumer's own.
	Headers       map[string]any
	MessageID     string
	CorrelationID string
	ReplyTo       string
	Type          string
	AppID         string
	Timestamp     time.Time // second resolution on the wire
	// Expiration is the per-message TTL. It is sent in milliseconds; a
	// message that waits longer in a queue is dead-lettered (reason expired)
	// or dropped. 0 means none; more than MaxExpiration is refused.
	Expiration time.Duration
	Persistent bool  // delivery mode 2
	Priority   uint8 // 0-9
}

// PublishOptions tune one Publish.
type PublishOptions struct {
	// Mandatory asks the broker to return the message when no queue takes
	// it; Publish then fails with ErrUnroutable. Implies Confirm, unless
	// Unconfirmed.
	Mandatory bool
	// Confirm waits for the broker's publisher confirm; a nack is ErrNacked.
	// Without it Publish returns once the message is written to the
	// connection.
	Confirm bool
	// Unconfirmed, with Mandatory and without Confirm, publishes mandatory
	// without waiting for a confirm: Publish returns once the message is
	// written, and a message that no queue took (a basic.return) is
	// reported later, asynchronously, to the functions registered with the
	// transport's NotifyReturn (see Returner), as a Return whose Err wraps
	// ErrUnroutable. So is a message lost because the channel it was
	// written on broke (see Return). Nothing reports a message a queue
	// took or refused (a nack): use it only for queues that do not nack
	// (a classic queue without reject-publish) and when something else
	// proves delivery (a reply). A transport that is not a Returner
	// ignores it: the publish is confirmed, and unroutable is an error of
	// Publish, as with Mandatory alone.
	Unconfirmed bool
}

// Return reports an Unconfirmed mandatory publish that did not reach a
// queue, by the ids and destination it was published with.
type Return struct {
	Exchange      string
	Key           string
	MessageID     string
	CorrelationID string
	// Err wraps ErrUnroutable when the broker returned the message (no
	// queue took it). When the channel it was written on broke before the
	// broker routed it, or may have (another publish on it was refused),
	// Err wraps what broke it: ErrNotFound (no such exchange),
	// ErrAccessRefused, or ErrConnectionLost (it may or may not have been
	// routed).
	Err error
}

// Returner is implemented by transports that support
// PublishOptions.Unconfirmed (transport/amqp, transport/mem, and secure's
// decorator over either).
type Returner interface {
	// NotifyReturn registers f to be called with each Return of this
	// transport's Unconfirmed publishes, until stop is called. f is called
	// from the transport's own goroutines, possibly concurrently; it must
	// not block. ok is false, and nothing is registered, when the
	// transport cannot report returns (a decorator over a transport that
	// is not a Returner): its Unconfirmed publishes are confirmed.
	NotifyReturn(f func(Return)) (stop func(), ok bool)
}

// NotifyReturn registers f with tr's NotifyReturn when tr is a Returner
// that can report returns; ok is false otherwise. Decorators that embed a
// Transport forward their NotifyReturn with it.
func NotifyReturn(tr any, f func(Return)) (stop func(), ok bool) {
	r, isR := tr.(Returner)
	if !isR {
		return nil, false
	}
	return r.NotifyReturn(f)
}

// ConsumeOptions tune one consumer.
type ConsumeOptions struct {
	// Prefetch bounds the number of unacknowledged deliveries this consumer
	// holds (basic.qos); 0 means 1.
	Prefetch int
	// Exclusive makes this the queue's only consumer. Quorum queues ignore
	// it, as RabbitMQ (3.10) does: count their consumers with InspectQueue.
	Exclusive bool
	// AutoAck settles each delivery as it is sent; Ack and Nack then do
	// nothing and return nil. Lost on a crash: use for replies and
	// heartbeats only.
	AutoAck bool
	// Tag names the consumer; "" lets the transport pick one.
	Tag string
}

// Delivery is one received message with its delivery information. Settle it
// exactly once with Ack or Nack (unless the consumer is AutoAck).
type Delivery struct {
	Message
	Exchange    string
	RoutingKey  string
	Redelivered bool
	// ConsumerTag of the consumer that received it.
	ConsumerTag string

	settle  func(ack, requeue bool) error
	settler Settler // when settle is nil
}

// NewDelivery is how transports build a Delivery. settle is called at most
// once, by Ack (ack=true) or Nack (ack=false, requeue as given); it may be
// nil for auto-acknowledged deliveries.
func NewDelivery(msg Message, settle func(ack, requeue bool) error) *Delivery {
	return &Delivery{Message: msg, settle: settle}
}

// Settler settles one delivery, as the settle func of NewDelivery does.
type Settler interface {
	Settle(ack, requeue bool) error
}

// NewSettledDelivery is NewDelivery with the settlement as a Settler: a
// transport that keeps a delivery's state in a struct of its own passes it
// as it is, without allocating a closure per delivery. s may be nil for
// auto-acknowledged deliveries.
func NewSettledDelivery(msg Message, s Settler) *Delivery {
	return &Delivery{Message: msg, settler: s}
}

// Ack acknowledges the delivery: the broker forgets the message.
func (d *Delivery) Ack() error {
	if d.settle == nil {
		if d.settler != nil {
			return d.settler.Settle(true, false)
		}
		return nil
	}
	return d.settle(true, false)
}

// Nack rejects the delivery. With requeue the message goes back to its queue
// (to this or another consumer) with Redelivered set; without, it is
// dead-lettered when its queue has a dead-letter exchange and dropped
// otherwise.
func (d *Delivery) Nack(requeue bool) error {
	if d.settle == nil {
		if d.settler != nil {
			return d.settler.Settle(false, requeue)
		}
		return nil
	}
	return d.settle(false, requeue)
}

// Transport is a connection to a broker. All methods are safe for concurrent
// use and honour ctx for the whole of the work they block on.
type Transport interface {
	// DeclareExchange creates an exchange if it does not exist. It is
	// idempotent; a conflicting existing exchange is ErrPrecondition.
	DeclareExchange(ctx context.Context, ex Exchange) error
	// DeclareQueue creates a queue if it does not exist and returns its name
	// (generated when q.Name is ""). It is idempotent; a conflicting
	// existing queue is ErrPrecondition.
	DeclareQueue(ctx context.Context, q Queue) (string, error)
	// InspectQueue reports the ready messages and consumers of an existing
	// queue without declaring it (a passive queue.declare). A queue that
	// does not exist is ErrNotFound; another connection's exclusive queue
	// is ErrPrecondition. As on RabbitMQ, it is a use of the queue: its
	// x-expires starts again.
	InspectQueue(ctx context.Context, name string) (QueueInfo, error)
	// DeleteQueue deletes a queue and the messages in it. Deleting a queue
	// that does not exist is not an error.
	DeleteQueue(ctx context.Context, name string) error
	// Bind routes exchange to queue with a key; binding twice is a no-op.
	Bind(ctx context.Context, b Binding) error
	// Unbind removes a binding; removing a missing binding is not an error.
	Unbind(ctx context.Context, b Binding) error
	// Publish sends msg to exchange with routing key. A message that no
	// queue takes is dropped, unless opts.Mandatory. It may keep
	// msg.Headers: see Message.
	Publish(ctx context.Context, exchange, key string, msg Message, opts PublishOptions) error
	// Consume starts a consumer on queue. Deliveries arrive on the returned
	// channel until ctx ends, the transport is closed, the queue is deleted
	// or the connection is lost; then the channel is closed and
	// unacknowledged deliveries are requeued. The consumer goroutine is owned by the transport: a caller
	// that stops reading holds up only its own consumer.
	Consume(ctx context.Context, queue string, opts ConsumeOptions) (<-chan *Delivery, error)
	// Close stops all consumers, requeues what they had not settled, deletes
	// exclusive queues and releases the connection. It is idempotent.
	Close() error
}

// FuncConsumer is implemented by transports that can hand deliveries to a
// function on the goroutine that published (or settled) them, without a
// hand-off to a goroutine reading a channel: the embedded broker
// (mem.Conn.ConsumeFunc, whose doc gives the contract). Agents consume
// their own queue and mappers their reply queue so when their transport
// has it; decorators do not pass it on.
type FuncConsumer interface {
	ConsumeFunc(ctx context.Context, queue string, opts ConsumeOptions, f func(*Delivery)) (<-chan struct{}, error)
}

// Returns is the set of functions registered with a Returner's
// NotifyReturn, for transports to embed. The zero value is ready to use;
// it is safe for concurrent use.
type Returns struct {
	mu  sync.Mutex
	fns atomic.Pointer[[]*func(Return)]
}

// Add registers f; stop removes it.
func (rs *Returns) Add(f func(Return)) (stop func()) {
	p := &f
	rs.mu.Lock()
	defer rs.mu.Unlock()
	var cur []*func(Return)
	if old := rs.fns.Load(); old != nil {
		cur = *old
	}
	next := append(slices.Clip(cur), p)
	rs.fns.Store(&next)
	return func() {
		rs.mu.Lock()
		defer rs.mu.Unlock()
		old := rs.fns.Load()
		if old == nil {
			return
		}
		next := slices.DeleteFunc(slices.Clone(*old), func(q *func(Return)) bool { return q == p })
		rs.fns.Store(&next)
	}
}

// Report calls every registered function with r.
func (rs *Returns) Report(r Return) {
	fns := rs.fns.Load()
	if fns == nil {
		return
	}
	for _, f := range *fns {
		(*f)(r)
	}
}
