// Package amqp is the RabbitMQ implementation of [transport.Transport], on
// github.com/rabbitmq/amqp091-go.
//
//	tr, err := amqp.Dial(ctx, "amqp://guest:guest@127.0.0.1:5672/", amqp.Config{},
//		amqp.WithLogger(logger))
//	if err != nil {
//		return err // "amqp: cannot connect to amqp://guest@127.0.0.1:5672/: connection refused"
//	}
//	defer tr.Close()
//
// # Design
//
// A [Transport] holds two AMQP connections, as RabbitMQ advises: one for
// publishing, one for consuming. When the broker applies flow control
// (connection.blocked, on a memory or disk alarm) only the publishing
// connection stalls; consumers keep draining queues. Declarations go on
// the consuming connection, so an exclusive queue belongs to the connection
// that consumes it (RabbitMQ refuses to let any other connection use it).
// While the broker blocks publishing, publishes wait (honouring ctx); one
// whose ctx ends then fails with a [*BlockedError] that gives the broker's
// reason ("low on memory", "low on disk") wrapped with ctx's error, and
// [Transport.Blocked] reports the block.
//
// Confirmed publishes are spread over a few channels in confirm mode, so
// many are in flight at once; [Config.ConfirmWindow] bounds how many.
// Mandatory ones go on channels with a dispatcher goroutine that receives
// publisher confirms and basic.return notifications and resolves the
// matching publishes. The others, which cannot be returned, go on channels
// of their own where each publisher waits on amqp091's deferred
// confirmation of its publish, resolved by the connection's reader itself
// (one goroutine woken per confirm rather than two); a goroutine per such
// channel fails what is still pending when the channel or the connection
// goes, with the error that ended it. A returned mandatory message is matched to its publish by its
// message id (RabbitMQ sends basic.return before the basic.ack of the same
// message) when that id is set and unique among the publishes in flight on
// its channel; otherwise the publish carries its delivery tag in the
// reserved header x-warren-return-token, which is stripped from what
// callers publish and from deliveries. Unconfirmed publishes go over
// channels not in confirm mode and wait for nothing but the write; one
// sent just as its channel is closed by an earlier publish's error (a
// missing exchange) can be lost without an error, as unconfirmed publishes
// can be on any AMQP client. Mandatory ones (PublishOptions.Unconfirmed)
// go there too; a goroutine per such channel hands their basic.returns to
// [Transport.NotifyReturn]'s functions, and when the channel breaks, its
// latest Unconfirmed publishes (up to 4096), each with the error that broke
// it: those are the ones such a break can lose.
//
// Each consumer has its own channel with basic.qos set to its prefetch, and
// its own goroutine that forwards deliveries to the channel Consume
// returned. Declarations use short-lived pooled channels. A channel-level
// error closes only the channel it happened on; the transport replaces it
// and returns an error naming the entity and wrapping
// [transport.ErrNotFound] for 404 NOT_FOUND, [transport.ErrAccessRefused]
// for 403 ACCESS_REFUSED naming the user (a configure, write or read
// permission it lacks, a user_id that is not its own; for a publish, the
// refusal must name its exchange, and the key of a topic permission, else
// another publish of the channel caused it and it is ErrConnectionLost), or
// [transport.ErrPrecondition] for 406 PRECONDITION_FAILED, 405
// RESOURCE_LOCKED (another connection's exclusive queue) and the other 403
// ACCESS_REFUSED (the default exchange, the amq. prefix, a queue in
// exclusive use). Input that amqp091 would only reject
// halfway through writing a frame, which breaks the whole connection, is
// refused first: names, keys, header keys and short properties longer than
// 255 bytes.
//
// Every notification channel of amqp091 (NotifyClose, NotifyBlocked,
// NotifyPublish, NotifyReturn, NotifyCancel) is buffered and drained by a
// goroutine the transport owns, so the connection's reader never waits on
// user code.
//
// # Headers
//
// Headers are converted both ways to the types documented on
// [transport.Message]: received int8, int16, uint8, uint16 and uint32 values
// become int64, float32 becomes float64, AMQP decimals become float64
// (value / 10^scale) and tables become map[string]any. A void value arrives
// as nil. On publish, every Go integer type is sent as int64 (an unsigned
// value above math.MaxInt64 is an error); any type outside the documented
// set is an error naming the header. Timestamps arrive in UTC.
//
// # Headers amqp091 cannot read
//
// amqp091-go refuses a header table or array nested deeper than 32 levels,
// holding more than 8192 entries, or of an unknown field type, and then
// shuts the whole connection down; RabbitMQ passes such headers on. So
// each connection reads its socket (the plaintext, under TLS: the
// transport does the TLS handshake itself, following the URL as amqp091
// does) through a filter that checks every content header frame the way
// amqp091 reads it and rewrites one it would refuse: the unreadable
// headers are removed and [transport.HeaderMalformed] says which and why,
// the body and the other properties pass unchanged. Each rewrite is logged
// at Warn and counted in [Stats]. Consumers see an ordinary delivery and
// treat it as malformed input (see docs/design.md).
//
// # Delivery guarantees
//
// As RabbitMQ: a delivery that is not settled when its consumer ends
// (ctx done, Close, queue deleted, connection lost) is requeued by the
// broker and redelivered with Redelivered set. Settling it after a
// connection loss returns an error wrapping [transport.ErrConnectionLost]. A second Ack or
// Nack returns [transport.ErrAlreadySettled] and sends nothing.
//
// A confirmed publish that returns nil has been taken by the broker (and
// written to disk for a persistent message on a durable queue). One that
// fails with [transport.ErrConnectionLost] may or may not have been routed.
//
// # Connection loss and reconnection
//
// The two connections live and die together: when either drops (network
// failure, missed heartbeats, broker shutdown or restart, an operator's
// close_connection or close_all_connections) the transport closes the
// other one too, so that it never consumes work it cannot answer, and
// redials both in the background, with exponential backoff from 100ms to
// 10s and full jitter (internal/backoff), until it succeeds or Close is
// called. The *Transport stays usable throughout:
//
//   - Work in flight fails fast with an error wrapping
//     [transport.ErrConnectionLost]: publishes waiting for a confirm (they
//     may or may not have been routed), declarations waiting for a reply,
//     and Ack or Nack of a delivery from a consumer of the lost connection
//     (the broker requeues that message and redelivers it with Redelivered
//     set).
//   - Consumers end: their delivery channels close. A consumer does not
//     outlive a connection; the caller consumes again, which is how agents
//     and mappers notice a loss and re-establish their session.
//   - New operations (Publish, declarations, Consume) started while the
//     transport reconnects wait for the new connections, honouring ctx: when
//     ctx ends first they return an error wrapping both
//     [transport.ErrConnectionLost] and ctx.Err(). Close makes them return
//     [transport.ErrClosed].
//   - Nothing is re-declared: exclusive queues went with the old consuming
//     connection, and the caller declares what it needs again (agents and
//     mappers do). amqp091's own topology recovery is not used, for that
//     reason.
//   - Flow control works on every new connection: connection.blocked
//     notifications are watched per connection, and a publish blocked on a
//     connection that is then lost waits for the next one.
//
// Losses are logged at Warn with their cause, each reconnection attempt at
// Warn, and the reconnection at Info with the downtime. [Transport.Stats]
// counts losses, attempts and reconnections. Dial itself does not retry: a
// broker that cannot be reached at start is an error.
//
// # Shutdown
//
// [Transport.Close] cancels every consumer and closes its channel (the
// broker requeues unsettled deliveries), stops reconnecting (operations
// waiting for a reconnection return ErrClosed), fails confirmed publishes
// still in flight with [transport.ErrClosed], closes both connections
// (which deletes the exclusive queues) and waits for all of the
// transport's goroutines.
// A connection the broker blocks is cut without the connection.close
// handshake, which the broker would not read.
// It is idempotent. Afterwards every method returns [transport.ErrClosed].
//
// # Context
//
// A dial whose ctx ends during the TCP connection or the AMQP handshake
// fails with a [*DialError] that wraps ctx's error and says so ("gave up
// during the AMQP handshake"), not with what amqp091 guesses from the
// socket closing under it ("username or password not allowed").
//
// Every method honours ctx while it waits: for a confirm, for room in the
// confirm window, for the broker to unblock publishing, for a declaration's
// reply, for the transport to reconnect. When ctx ends during a
// declaration the reply is awaited in the background and the channel
// discarded. Writing a frame to the socket is
// not interruptible; heartbeats bound it on a dead connection.
package amqp
