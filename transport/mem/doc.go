// Package mem is an embedded, in-process AMQP 0-9-1 broker that implements
// [transport.Transport] with RabbitMQ 3.10's semantics, so that Warren's
// agents, mappers and tests run without a broker process and behave as they
// will on RabbitMQ.
//
// [New] returns a connection to a broker of its own; [NewBroker] and
// [Broker.Connect] give several independent connections to one broker, which
// is what exclusive queues and requeue-on-disconnect are about. The
// conformance suite in transport/transporttest pins the semantics down; mem
// passes all of it, and so does transport/amqp against RabbitMQ.
//
// # Design
//
// A [Broker] holds exchanges, queues and bindings under one read-write lock
// that only declarations, deletions and bindings take for writing; a publish
// takes it for reading to route, then each target queue's own lock to
// enqueue. A queue hands ready messages to its consumers round robin, each
// up to its prefetch of unacknowledged messages, and keeps the messages a
// consumer holds so that they can go back where they were.
//
// The queue sends a delivery straight onto the channel that Consume
// returned, which has room for prefetch deliveries: a consumer never holds
// more than that many unacknowledged, so the send never blocks and a caller
// that stops reading holds up only its own consumer. AutoAck consumers are
// not bounded by prefetch; what does not fit in their channel waits in a
// buffer of their own, fed into the channel by a goroutine that runs only
// while the buffer is not empty. A consumer made with [Conn.ConsumeFunc]
// has a callback instead of a channel: the publisher of a message (or the
// settler of the delivery before it, which made room in the prefetch)
// hands it over itself, once it has released the queue's lock, unless a
// call is running (which then takes it next) or the message was waiting in
// the queue for another reason (a broker goroutine then does). Warren's
// mappers read their replies so, and agents their own queue: a request's
// round trip has one goroutine hand-off each way. Each consumer has a
// goroutine that ends it
// when its context ends. Timers (message TTL, queue expiry) are runtime
// timers, one per queue at most, armed for the next event only; nothing
// polls. So a broker made inside a testing/synctest bubble runs on the
// bubble's fake clock: tests of TTLs, heartbeats and timeouts take no time.
//
// Every delivery carries its own copy of the body and headers, so
// consumers, publishers and other queues never share memory. (A message
// routed to one queue only and taken by an AutoAck consumer carries the
// broker's own copy: once delivered, nothing else can read it.) The broker
// keeps a published message's headers as they are when they are already as
// amqp091-go would decode them: a publisher does not modify headers once
// published ([transport.Message]).
//
// # Semantics
//
// What the transport interface exposes behaves as on RabbitMQ 3.10:
//
//   - The default exchange routes by queue name and takes no bindings;
//     direct, fanout and topic exchanges route by key (topic: * is one word,
//     # zero or more); a queue gets one copy of a message however many of
//     its bindings match. amq.direct, amq.fanout and amq.topic exist; names
//     starting with amq. are reserved.
//   - A consumer gets at most Prefetch unacknowledged messages (AutoAck
//     consumers are not limited, as basic.qos does not apply to them).
//     Ready messages go to consumers with room, in turn.
//   - Nack with requeue, a cancelled consumer and a closed connection put
//     unsettled messages back, with Redelivered set: at their original
//     position in a classic queue, in front of the ready messages in a
//     quorum queue, except that a quorum queue without DeliveryLimit puts a
//     message nacked with requeue at the back.
//     Quorum queues count these returns in x-delivery-count and dead-letter
//     a message returned more than DeliveryLimit times (reason
//     delivery_limit).
//   - MessageTTL and per-message Expiration expire a message when it reaches
//     the head of its queue; MaxLength drops or dead-letters the oldest
//     ready message (unacknowledged ones do not count); Nack without
//     requeue dead-letters (reason rejected). Dead letters carry RabbitMQ's
//     headers: x-death, an array of tables (count, reason, queue, time,
//     exchange, routing-keys, original-expiration), newest first, whose count
//     grows when a message dies again in the same queue for the same reason,
//     and x-first-death-queue, -reason and -exchange. Fully automatic
//     dead-letter cycles (no rejection in them) are broken by dropping the
//     message, as RabbitMQ does.
//   - Exclusive queues belong to their connection and go with it; other
//     connections may publish to them but not declare, bind, consume or
//     delete them (RabbitMQ's 405 RESOURCE_LOCKED, reported as
//     transport.ErrPrecondition). Auto-delete queues go with their last
//     consumer, auto-delete exchanges with their last binding, and queues
//     with Expires after that long without consumers or declarations.
//   - Header values are normalised as amqp091-go delivers them: other
//     integer types become int64, float32 becomes float64, time.Time is cut
//     to the second, and tables and arrays are copied deeply. Timestamp has
//     second resolution; Expiration is rounded up to the millisecond.
//
// # Differences from RabbitMQ
//
// None that the conformance suite can see. Beyond it:
//
//   - Nothing survives the process: Durable and Persistent are accepted and
//     recorded (a redeclaration must match), but there is no disk.
//   - Errors are synchronous. A Publish to a missing exchange returns
//     transport.ErrNotFound even without Confirm (RabbitMQ closes the
//     channel asynchronously), and Confirm costs nothing: the broker has
//     taken the message when Publish returns. Nothing is ever nacked.
//     An Unconfirmed mandatory publish that no queue takes is reported
//     to NotifyReturn's functions from a goroutine, after Publish
//     returned nil, as RabbitMQ's basic.return is.
//   - Everything else is synchronous too: a dead letter is in its new
//     queue, and a requeued message offered to consumers, when the call
//     that caused it returns. Where RabbitMQ's order depends on timing (a
//     dead letter racing other publishes or a consumer's cancellation; a
//     classic queue with prefetch above 1 sometimes delivering the next
//     ready message before a requeued one), mem gives one of the orders
//     RabbitMQ can give, always the same one.
//   - There are no resource limits or flow control: queues grow until
//     memory runs out, where RabbitMQ would block publishers.
//   - The CC and BCC headers are not used for routing.
//   - An unknown exchange kind is an error from DeclareExchange, where
//     RabbitMQ closes the connection.
//
// # Delivery guarantees
//
// A message routed to a queue stays there until a consumer acknowledges it
// (or AutoAck takes it), it is dead-lettered or dropped by the queue's own
// rules, or the queue is deleted. Settling a delivery whose consumer has
// ended returns an error wrapping transport.ErrClosed, because the message
// is already back in its queue; settling it twice returns
// transport.ErrAlreadySettled.
//
// # Shutdown
//
// [Conn.Close] ends the connection's consumers, which requeue what they had
// not settled, deletes its exclusive queues and waits for its goroutines; it
// is idempotent and concurrent calls wait for the first. [Broker.Close]
// closes every connection and stops the broker's timers. A connection from
// [New] closes its broker with it.
//
// # Lock order
//
// Conn.mu, then Broker.mu, then a queue's mu. Dead letters are collected under the queue lock and republished
// after it is released, so no two queue locks are ever held at once. No
// lock is held while user code runs (a ConsumeFunc callback included) or
// while a channel send may block: sends under a queue's lock are to a
// channel known to have room.
package mem
