package wire

import (
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/warrenrpc/warren/transport"
)

// This file builds and reads the messages of a streamed request
// (docs/protocol.md, Streamed requests): chunks, the credits that pace
// them, and the request that closes the stream. Nanite's FileStart,
// FileChunk and FileEnd are the model.

// Message types of streams.
const (
	// TypeChunk is one piece of a streamed request's data.
	TypeChunk = "warren.chunk"
	// TypeCredit tells the sender how many chunks the receiver has
	// stored, so that it may send more.
	TypeCredit = "warren.credit"
)

// Headers of streams.
const (
	// HeaderStream is the stream's id, on its chunks, its credits and the
	// request that closes it.
	HeaderStream = "warren-stream"
	// HeaderChunk numbers a chunk from 0 (integer).
	HeaderChunk = "warren-chunk"
	// HeaderStreamChunks, HeaderStreamSize and HeaderStreamSHA256, on
	// the request that closes a stream: how many chunks, how many bytes
	// in all, and the SHA-256 of those bytes (64 hex digits).
	HeaderStreamChunks = "warren-stream-chunks"
	HeaderStreamSize   = "warren-stream-size"
	HeaderStreamSHA256 = "warren-stream-sha256"
	// HeaderCredit, on a credit: the number of chunks stored so far.
	HeaderCredit = "warren-credit"
)

// CodeStreamBroken is the error code of a streamed request whose chunks
// were lost, duplicated out of place, too many, or did not match their
// checksum: the handler was not run.
const CodeStreamBroken = "stream_broken"

// ContentOctets is the content type of chunks.
const ContentOctets = "application/octet-stream"

// NewChunk builds chunk seq (from 0) of stream id, for path, from the
// caller from whose reply queue is replyTo.
func NewChunk(path, from, id string, seq int64, replyTo string, data []byte) transport.Message {
	return transport.Message{
		Body:          data,
		ContentType:   ContentOctets,
		Type:          TypeChunk,
		MessageID:     fmt.Sprintf("%s.%d", id, seq),
		CorrelationID: id,
		ReplyTo:       replyTo,
		AppID:         from,
		Timestamp:     time.Now(),
		Headers: map[string]any{
			HeaderPath:   path,
			HeaderStream: id,
			HeaderChunk:  seq,
			HeaderPinned: true,
		},
	}
}

// Chunk is what ReadChunk reads.
type Chunk struct {
	Stream string
	Seq    int64
	Path   string
}

// ErrBadStream is wrapped by the errors of ReadChunk, ReadStream and
// ReadCredit.
var ErrBadStream = errors.New("warren: malformed stream message")

// ReadChunk reads a chunk: its stream id, its number and its path.
func ReadChunk(d *transport.Delivery) (Chunk, error) {
	c := Chunk{Path: String(d.Headers, HeaderPath)}
	var err error
	c.Stream, c.Seq, err = readChunk(d)
	return c, err
}

// readChunk reads what every chunk has: its stream id and its number.
func readChunk(d *transport.Delivery) (stream string, seq int64, err error) {
	stream = String(d.Headers, HeaderStream)
	if why, ok := d.Headers[transport.HeaderMalformed].(string); ok {
		return stream, 0, fmt.Errorf("%w: %s", ErrBadStream, why)
	}
	if d.Type != TypeChunk {
		return stream, 0, fmt.Errorf("%w: type %q, want %s", ErrBadStream, d.Type, TypeChunk)
	}
	if stream == "" || len(stream) > 128 {
		return stream, 0, fmt.Errorf("%w: header %s: want an id of 1 to 128 bytes", ErrBadStream, HeaderStream)
	}
	seq, ok := Int(d.Headers, HeaderChunk)
	if !ok || seq < 0 {
		return stream, 0, fmt.Errorf("%w: header %s: want an integer from 0", ErrBadStream, HeaderChunk)
	}
	return stream, seq, nil
}

// Stream describes the data of a streamed request, on the request that
// closes it.
type Stream struct {
	ID     string
	Chunks int64
	Size   int64
	SHA256 []byte // 32 bytes
}

// SetStream marks request msg as closing stream s.
func SetStream(msg *transport.Message, s Stream) {
	if msg.Headers == nil {
		msg.Headers = map[string]any{}
	}
	msg.Headers[HeaderStream] = s.ID
	msg.Headers[HeaderStreamChunks] = s.Chunks
	msg.Headers[HeaderStreamSize] = s.Size
	msg.Headers[HeaderStreamSHA256] = hex.EncodeToString(s.SHA256)
}

// ReadStream reads the stream a request closes; ok is false for a request
// that closes none.
func ReadStream(d *transport.Delivery) (s Stream, ok bool, err error) {
	if _, there := d.Headers[HeaderStream]; !there {
		return s, false, nil
	}
	s.ID = String(d.Headers, HeaderStream)
	if s.ID == "" || len(s.ID) > 128 {
		return s, true, fmt.Errorf("%w: header %s: want an id of 1 to 128 bytes", ErrBadStream, HeaderStream)
	}
	var ok1, ok2 bool
	s.Chunks, ok1 = Int(d.Headers, HeaderStreamChunks)
	s.Size, ok2 = Int(d.Headers, HeaderStreamSize)
	if !ok1 || !ok2 || s.Chunks < 0 || s.Size < 0 {
		return s, true, fmt.Errorf("%w: headers %s and %s: want integers from 0", ErrBadStream, HeaderStreamChunks, HeaderStreamSize)
	}
	sum, herr := hex.DecodeString(String(d.Headers, HeaderStreamSHA256))
	if herr != nil || len(sum) != 32 {
		return s, true, fmt.Errorf("%w: header %s: want 64 hex digits", ErrBadStream, HeaderStreamSHA256)
	}
	s.SHA256 = sum
	return s, true, nil
}

// NewCredit builds the credit of from for the stream of chunk d: stored
// chunks have been stored so far.
func NewCredit(d *transport.Delivery, from, to string, stored int64) transport.Message {
	msg := replyTo(d, from)
	msg.Type = TypeCredit
	msg.Headers = map[string]any{HeaderCredit: stored}
	if to != "" {
		msg.Headers[HeaderTo] = to
	}
	return msg
}

// ReadCredit reads a credit: the number of chunks stored.
func ReadCredit(d *transport.Delivery) (int64, error) {
	if d.Type != TypeCredit {
		return 0, fmt.Errorf("%w: type %q, want %s", ErrBadStream, d.Type, TypeCredit)
	}
	n, ok := Int(d.Headers, HeaderCredit)
	if !ok || n < 0 {
		return 0, fmt.Errorf("%w: header %s: want an integer from 0", ErrBadStream, HeaderCredit)
	}
	return n, nil
}

// Streamed results: a handler's result too big for one message goes to
// the caller as chunks on its reply queue, then the reply that closes the
// stream; the caller credits the agent as the agent credits a streamed
// request's sender.

// HeaderAcceptStream (true) on a request says the caller takes a result
// streamed in chunks. Without it an agent never streams a result: a
// caller that does not know chunks never sees one.
const HeaderAcceptStream = "warren-accept-stream"

// AcceptStream marks request msg as taking a streamed result.
func AcceptStream(msg *transport.Message) {
	if msg.Headers == nil {
		msg.Headers = map[string]any{}
	}
	msg.Headers[HeaderAcceptStream] = true
}

// AcceptsStream reports whether the caller of request d takes a streamed
// result.
func AcceptsStream(d *transport.Delivery) bool {
	b, ok := d.Headers[HeaderAcceptStream].(bool)
	return ok && b && d.ReplyTo != ""
}

// NewResultChunk builds chunk seq of the streamed result of request d,
// for its reply queue; the stream id is the reply's correlation id.
func NewResultChunk(d *transport.Delivery, from, to string, seq int64, data []byte) transport.Message {
	msg := replyTo(d, from)
	msg.Type = TypeChunk
	msg.ContentType = ContentOctets
	msg.Body = data
	msg.Headers = map[string]any{HeaderStream: msg.CorrelationID, HeaderChunk: seq}
	if to != "" {
		msg.Headers[HeaderTo] = to
	}
	return msg
}

// NewStreamCredit builds the credit of the caller from for the streamed
// result id that agent to sends: stored chunks stored so far. It goes to
// RequestExchange with the agent's identity as routing key.
func NewStreamCredit(id, from, to string, stored int64) transport.Message {
	msg := transport.Message{
		Type:          TypeCredit,
		CorrelationID: id,
		AppID:         from,
		Timestamp:     time.Now(),
		Headers:       map[string]any{HeaderStream: id, HeaderCredit: stored, HeaderPinned: true},
	}
	if to != "" {
		msg.Headers[HeaderTo] = to
	}
	return msg
}

// StreamHeld builds the answer of from to streamed push d (a push with a
// reply queue closing a stream): an empty reply (JSON null) saying that
// the agent holds the whole data, checked, and runs the handler as a
// push's.
func StreamHeld(d *transport.Delivery, from, to string) transport.Message {
	return Reply(d, from, to, []byte("null"))
}
