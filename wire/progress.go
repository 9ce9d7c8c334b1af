package wire

import (
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/warrenrpc/warren/transport"
)

// This file builds and reads progress messages: intermediate results a
// handler sends to its caller before the reply (docs/protocol.md,
// Progress).

// TypeProgress is the type of a progress message.
const TypeProgress = "warren.progress"

// Headers of progress.
const (
	// HeaderProgress (true) on a request asks the agent for progress
	// messages. Without it an agent sends none: a caller that does not
	// know them never sees one on its reply queue.
	HeaderProgress = "warren-progress"
	// HeaderProgressSeq numbers the progress messages of one reply from
	// 1 (integer); a gap means some were dropped.
	HeaderProgressSeq = "warren-progress-seq"
	// HeaderProgressKey is the optional name of what the value measures
	// (a string).
	HeaderProgressKey = "warren-progress-key"
)

// MaxProgressKey is the longest progress key, in bytes.
const MaxProgressKey = 255

// AskProgress marks request msg as wanting progress messages.
func AskProgress(msg *transport.Message) {
	if msg.Headers == nil {
		msg.Headers = map[string]any{}
	}
	msg.Headers[HeaderProgress] = true
}

// WantsProgress reports whether the caller of request d asked for
// progress: header HeaderProgress is true and d has a reply queue.
func WantsProgress(d *transport.Delivery) bool {
	b, ok := d.Headers[HeaderProgress].(bool)
	return ok && b && d.ReplyTo != ""
}

// NewProgress builds progress message seq (from 1) of from about request
// d, with an optional key and a JSON value, for d's reply queue. to, when
// not "", is set as HeaderTo (for a transport that WantsRecipient).
func NewProgress(d *transport.Delivery, from, to string, seq int64, key string, value []byte) transport.Message {
	msg := replyTo(d, from)
	msg.Type = TypeProgress
	msg.Body = value
	msg.Headers = map[string]any{HeaderProgressSeq: seq}
	if key != "" {
		msg.Headers[HeaderProgressKey] = key
	}
	if to != "" {
		msg.Headers[HeaderTo] = to
	}
	return msg
}

// CheckProgressKey validates a progress key: valid UTF-8, at most
// MaxProgressKey bytes ("" is no key).
func CheckProgressKey(key string) error {
	if len(key) > MaxProgressKey || !utf8.ValidString(key) {
		return fmt.Errorf("warren: progress key: want valid UTF-8 of at most %d bytes", MaxProgressKey)
	}
	return nil
}

// Progress is what ReadProgress reads from a progress message.
type Progress struct {
	Seq  int64
	Key  string
	Time time.Time
}

// ReadProgress reads a progress message (its type must be TypeProgress):
// its sequence number (positive), its key, and that its body is there
// and its headers were read whole.
func ReadProgress(d *transport.Delivery) (Progress, error) {
	p := Progress{Key: String(d.Headers, HeaderProgressKey), Time: d.Timestamp}
	if why, ok := d.Headers[transport.HeaderMalformed].(string); ok {
		return p, fmt.Errorf("malformed progress: %s", why)
	}
	if d.Type != TypeProgress {
		return p, fmt.Errorf("type %q, want %s", d.Type, TypeProgress)
	}
	seq, ok := Int(d.Headers, HeaderProgressSeq)
	if !ok || seq <= 0 {
		return p, fmt.Errorf("header %s: want a positive integer", HeaderProgressSeq)
	}
	p.Seq = seq
	if err := CheckProgressKey(p.Key); err != nil {
		return p, err
	}
	if len(d.Body) == 0 {
		return p, fmt.Errorf("progress without a value")
	}
	return p, nil
}
