package wire

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/warrenrpc/warren/transport"
)

// This file builds and reads topic events (docs/protocol.md, Events).

// EventExchange (topic, durable) carries events; the routing key is the
// event's key, such as file.encrypt, and subscribers bind patterns to it.
const EventExchange = "warren.events"

// TypeEvent is the type of an event.
const TypeEvent = "warren.event"

// EventQueuePrefix starts the name of every subscription queue Warren
// declares: EventQueuePrefix + mode + "." + group [+ "." + host or
// instance].
const EventQueuePrefix = "warren.events."

// Errors of CheckEventKey and CheckEventPattern.
var (
	ErrInvalidEventKey     = errors.New("warren: invalid event key")
	ErrInvalidEventPattern = errors.New("warren: invalid event pattern")
)

// MaxEventKey is the longest event key or pattern, in bytes: an AMQP
// routing key is a short string.
const MaxEventKey = 255

// CheckEventKey validates an event key: dot-separated words, each
// non-empty, valid UTF-8 without whitespace, control characters, '*' or
// '#' (those are wildcards of patterns), at most MaxEventKey bytes.
func CheckEventKey(key string) error {
	if err := checkWords(key); err != nil {
		return fmt.Errorf("%w %q: %w", ErrInvalidEventKey, key, err)
	}
	for w := range strings.SplitSeq(key, ".") {
		if strings.ContainsAny(w, "*#") {
			return fmt.Errorf("%w %q: word %q: '*' and '#' are wildcards, for patterns only", ErrInvalidEventKey, key, w)
		}
	}
	return nil
}

// CheckEventPattern validates a subscription pattern: an event key in
// which a word may be '*' (exactly one word) or '#' (zero or more words).
// A word that holds a wildcard among other characters ("file*") is
// refused: AMQP would match it literally, which is never what was meant.
func CheckEventPattern(p string) error {
	if err := checkWords(p); err != nil {
		return fmt.Errorf("%w %q: %w", ErrInvalidEventPattern, p, err)
	}
	for w := range strings.SplitSeq(p, ".") {
		if w != "*" && w != "#" && strings.ContainsAny(w, "*#") {
			return fmt.Errorf("%w %q: word %q: a wildcard must be a whole word ('*' or '#')", ErrInvalidEventPattern, p, w)
		}
	}
	return nil
}

func checkWords(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > MaxEventKey:
		return fmt.Errorf("%d bytes, at most %d", len(s), MaxEventKey)
	case !utf8.ValidString(s):
		return errors.New("not valid UTF-8")
	case strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		return errors.New("no whitespace or control characters")
	}
	for w := range strings.SplitSeq(s, ".") {
		if w == "" {
			return errors.New("empty word (two dots, or a dot at an end)")
		}
	}
	return nil
}

// NewEvent builds an event with key (the routing key it is published
// with) from the publisher from, with message id id and a JSON body. A
// ttl that is not zero sets a deadline that far away (SetDeadline): a
// subscriber does not run the event later, and a queue dead-letters it
// (reason expired) when nobody took it in time.
func NewEvent(key, from, id string, body []byte, ttl time.Duration) transport.Message {
	msg := transport.Message{
		Body:        body,
		ContentType: ContentJSON,
		Type:        TypeEvent,
		MessageID:   id,
		AppID:       from,
		Timestamp:   time.Now(),
	}
	if ttl > 0 {
		SetDeadline(&msg, time.Now().Add(ttl))
	}
	return msg
}

// Event is what ReadEvent reads from an event.
type Event struct {
	Key      string    // the routing key it was published with
	Deadline time.Time // zero: none
}

// ReadEvent reads and checks the Warren fields of an event: its type
// (TypeEvent, or empty), its key (the routing key), its deadline, its
// content type, and that the transport did not have to remove headers it
// could not read. On error (always a CodeBadRequest) it returns what
// could be read. Limits on the body are the receiver's.
func ReadEvent(d *transport.Delivery) (Event, error) {
	ev := Event{Key: d.RoutingKey}
	dl, derr := ReadDeadline(d.Headers)
	ev.Deadline = dl
	if why, ok := d.Headers[transport.HeaderMalformed].(string); ok {
		return ev, fmt.Errorf("malformed message: %s", why)
	}
	if d.Type != TypeEvent && d.Type != "" {
		return ev, fmt.Errorf("unknown message type %q, want %s", d.Type, TypeEvent)
	}
	if err := CheckEventKey(ev.Key); err != nil {
		return ev, err
	}
	if derr != nil {
		return ev, derr
	}
	if d.ContentType != "" && d.ContentType != ContentJSON {
		return ev, fmt.Errorf("content type %q: want %s", d.ContentType, ContentJSON)
	}
	return ev, nil
}
