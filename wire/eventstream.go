package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/warrenrpc/warren/transport"
)

// This file builds and reads the chunks of a streamed event
// (docs/protocol.md, Streamed events): an event whose data is too big for
// one message goes to warren.events as chunks, all with the event's key,
// so that every subscription queue bound to it gets each of them.
//
// Chunk 0 (the head) carries the event's JSON payload and its deadline;
// chunks 1 to n carry the data, each with its offset; the last one also
// carries the number of chunks, the size and the SHA-256 of the data. A
// subscriber that receives a chunk forwards it to the stream's collection
// queue, where the subscriber that received the head reads them.

// HeaderStreamOffset is the offset of a data chunk in the data of a
// streamed event (integer).
const HeaderStreamOffset = "warren-stream-offset"

// EventChunk is what ReadEventChunk reads.
type EventChunk struct {
	Stream   string
	Seq      int64     // 0 is the head
	Offset   int64     // where a data chunk's body goes in the data
	Deadline time.Time // the head's; zero: none
	// End is set on the last chunk: the number of chunks (the head
	// included), the size and the SHA-256 of the data.
	End *Stream
}

// NewEventHead builds chunk 0 of streamed event id: the event's JSON
// payload (meta) and, when ttl is not zero, its deadline.
func NewEventHead(from, id string, meta []byte, ttl time.Duration) transport.Message {
	msg := NewEvent("", from, id+".0", meta, ttl)
	msg.Type = TypeChunk
	msg.CorrelationID = id
	if msg.Headers == nil {
		msg.Headers = map[string]any{}
	}
	msg.Headers[HeaderStream] = id
	msg.Headers[HeaderChunk] = int64(0)
	return msg
}

// NewEventChunk builds data chunk seq (from 1) of streamed event id, whose
// body goes at offset in the data. It has no expiration, even when its
// head has one: an expired chunk would be dead-lettered, data and all; the
// chunks of a head that expired are forwarded to a collection queue that
// nobody consumes, and go with it (x-expires).
func NewEventChunk(from, id string, seq, offset int64, data []byte) transport.Message {
	msg := transport.Message{
		Body:          data,
		ContentType:   ContentOctets,
		Type:          TypeChunk,
		MessageID:     fmt.Sprintf("%s.%d", id, seq),
		CorrelationID: id,
		AppID:         from,
		Timestamp:     time.Now(),
		Headers: map[string]any{
			HeaderStream:       id,
			HeaderChunk:        seq,
			HeaderStreamOffset: offset,
		},
	}
	return msg
}

// SetEventStreamEnd marks chunk msg as the last of its stream, with the
// stream's number of chunks (the head included), size and SHA-256.
func SetEventStreamEnd(msg *transport.Message, s Stream) {
	SetStream(msg, s)
}

// IsEventChunk reports whether d, from an event queue, is a chunk of a
// streamed event (rather than an event).
func IsEventChunk(d *transport.Delivery) bool { return d.Type == TypeChunk }

// ReadEventChunk reads and checks a chunk of a streamed event. Its key is
// d's routing key, checked by the caller (ReadEvent) for the head.
func ReadEventChunk(d *transport.Delivery) (EventChunk, error) {
	var c EventChunk
	stream, seq, err := readChunk(d)
	c.Stream = stream
	if err != nil {
		return c, err
	}
	c.Seq = seq
	if seq == 0 {
		dl, err := ReadDeadline(d.Headers)
		if err != nil {
			return c, fmt.Errorf("%w: %w", ErrBadStream, err)
		}
		c.Deadline = dl
		if d.ContentType != "" && d.ContentType != ContentJSON {
			return c, fmt.Errorf("%w: head: content type %q: want %s", ErrBadStream, d.ContentType, ContentJSON)
		}
		return c, nil
	}
	off, ok := Int(d.Headers, HeaderStreamOffset)
	if !ok || off < 0 {
		return c, fmt.Errorf("%w: header %s: want an integer from 0", ErrBadStream, HeaderStreamOffset)
	}
	c.Offset = off
	if _, last := d.Headers[HeaderStreamChunks]; last {
		end, _, err := ReadStream(d)
		if err != nil {
			return c, err
		}
		if end.ID != c.Stream || end.Chunks != seq+1 {
			return c, fmt.Errorf("%w: last chunk %d: header %s says %d chunks", ErrBadStream, seq, HeaderStreamChunks, end.Chunks)
		}
		c.End = &end
	}
	return c, nil
}

// EventStreamQueue is the name of the collection queue of stream id for
// the subscription queue queue: where its subscribers forward the chunks
// of that stream to the one that assembles it.
// A subscription queue named by the broker (amq.gen-...), whose prefix
// nobody may declare, or too long a name, is replaced by the first 32 hex
// digits of its SHA-256 after EventQueuePrefix + "stream.".
func EventStreamQueue(queue, id string) string {
	name := queue + ".stream." + id
	if strings.HasPrefix(queue, "amq.") || len(name) > 255 {
		h := sha256.Sum256([]byte(queue))
		name = EventQueuePrefix + "stream." + hex.EncodeToString(h[:16]) + "." + id
	}
	return name
}

// ForwardChunk builds the copy of event chunk d that subscriber by
// forwards to a collection queue: the same body and headers, the event's
// key (d's routing key) in HeaderEventKey, and by as app_id (in secure
// mode the forwarder signs the copy).
func ForwardChunk(d *transport.Delivery, by string) transport.Message {
	msg := d.Message
	msg.AppID = by
	h := make(map[string]any, len(d.Headers)+1)
	for k, v := range d.Headers {
		h[k] = v
	}
	h[HeaderEventKey] = d.RoutingKey
	msg.Headers = h
	msg.Expiration = 0 // the collection queue expires as a whole
	return msg
}

// HeaderEventKey, on a forwarded chunk, is the key of its event.
const HeaderEventKey = "warren-event-key"
