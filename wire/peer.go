package wire

import (
	"time"

	"github.com/warrenrpc/warren/transport"
)

// TypePeer is the type of a message sent to a peer (HareDo's send).
const TypePeer = "warren.peer"

// PeerQueue is the queue of peer name: messages sent to the peer arrive
// there, published to the default exchange with the queue's name as the
// routing key. An exclusive peer's queue is exclusive to its one
// instance; a shared peer's is durable and consumed by all its instances.
func PeerQueue(name string) string { return "warren.peer." + name }

// NewPeerMessage builds the message peer from sends with id: body is
// JSON; replyTo is the queue its replies go to ("" when it wants none);
// ttl (0: none) is how long it may wait in the queue.
func NewPeerMessage(from, id, replyTo string, body []byte, ttl time.Duration) transport.Message {
	return transport.Message{
		Type:        TypePeer,
		MessageID:   id,
		ReplyTo:     replyTo,
		AppID:       from,
		ContentType: ContentJSON,
		Body:        body,
		Timestamp:   time.Now(),
		Expiration:  ttl,
	}
}
