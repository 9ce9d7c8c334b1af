// Package events is publish/subscribe on topics over Warren's fabric:
// Vincent's cast to a key such as file.encrypt, listeners bound with AMQP
// topic wildcards, and its route_to :one, :host and :all.
//
// A Bus publishes events with a publisher confirm and subscribes handlers:
//
//	bus, _ := events.New(tr, events.Config{Identity: "web-1"})
//	err := bus.Publish(ctx, "file.encrypt", map[string]any{"file": "/gfs1/file.dat"})
//
//	sub, _ := bus.Subscribe(ctx, "file.*", handler, events.One("encrypters"), events.Durable())
//	defer sub.Close()
//
// Events go to the topic exchange warren.events (wire.EventExchange) with
// the key as routing key. A pattern is a key whose words may be * (exactly
// one word) or # (zero or more words); wire.CheckEventPattern refuses the
// rest.
//
// # Delivery modes
//
//   - One(group): every subscriber of the group shares one queue; each event
//     goes to one of them (Vincent's :one, nameko's service pool).
//   - PerHost(group): the subscribers of the group on one host share a queue;
//     each event goes to one subscriber per host (Vincent's :host).
//   - All (the default): every subscriber has its own queue and gets every
//     event (Vincent's :all, nameko's broadcast).
//
// The subscribers of a group share a queue bound to every pattern any of
// them used, so each gets the events of all those patterns (Event.Key
// tells them apart); a durable queue keeps its bindings after they go.
//
// A Durable subscription has a quorum queue that survives the subscriber
// and the broker: events published while no subscriber of it runs wait
// there (persistent events survive a broker restart too). A transient one
// (the default) has a queue deleted with its last subscriber: what is
// published meanwhile is not kept.
//
// # Reliability
//
// An event is acked after its handler returned: a subscriber that dies
// mid-handler has it redelivered (Event.Redelivered), to another subscriber
// of the group when there is one. A handler error, a panic, a malformed
// event and an event whose TTL passed before its handler started are
// dead-lettered to warren.dlx with the reason (wire.PublishDeadLetter), as
// pushes are; a handler that returns ErrRetry has its event requeued. A
// durable queue dead-letters an event delivered more than its delivery
// limit (a subscriber that crashes on it every time).
//
// An event nobody subscribes to is dropped by design (Vincent's cast and
// nameko's dispatch do the same): Publish succeeds. With Mandatory, Publish
// fails with ErrNoSubscriber instead.
//
// # Streamed events
//
// PublishStream publishes an event whose data, of any size, an io.Reader
// reads: it goes in chunks (StreamConfig.ChunkSize) to every subscription
// of the key, each chunk confirmed before the next. The subscriber that
// gets the event's first chunk assembles it in a file (StreamConfig.Dir),
// the others of its group forwarding the chunks they get to it through a
// collection queue; it checks the size and SHA-256 and runs the handler
// once, on the whole data (Event.Stream). A stream whose chunks stop coming
// (its publisher died) or do not match is dead-lettered with reason
// stream_broken, and its file and queue removed. A streamed event is
// handled once its last chunk is in, so maybe after events published
// after it. docs/streams.md has the details and figures.
//
// Handlers may publish events and call actors (through a mapper) from
// inside: the Bus and mappers are safe for concurrent use.
//
// The wire format is in docs/protocol.md (Events), for programs in other
// languages.
package events
