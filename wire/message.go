package wire

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/warrenrpc/warren/transport"
)

// This file builds and reads Warren's messages: requests and pushes,
// replies and error replies, dead letters, deadlines and heartbeats. Each
// shape has one code path here, so that agents, mappers, the secure
// transport and tools cannot drift apart (docs/protocol.md).

// Headers of dead letters and of work passed on.
const (
	// HeaderAttempts counts how often a message was declined and passed
	// on. The agent reads it clamped to 0..MaxDeliveries, so a negative or
	// huge value from a sender cannot make a message bounce for ever.
	HeaderAttempts = "warren-attempts"
	// HeaderOriginalExchange and HeaderOriginalRoutingKey, on dead
	// letters: where the message was published, for a replay.
	HeaderOriginalExchange   = "warren-original-exchange"
	HeaderOriginalRoutingKey = "warren-original-routing-key"
)

// headerDeliveryCount is a quorum queue's count of deliveries: the
// queue's, not the message's, so copies leave it out.
const headerDeliveryCount = "x-delivery-count"

// NewRequest builds a request (TypeRequest) or push (TypePush) for path
// from the caller from, with message id id and a JSON body. A deadline
// that is not zero is set with SetDeadline. The caller sets reply_to and
// correlation_id when it waits for a reply.
func NewRequest(typ, path, from, id string, body []byte, deadline time.Time) transport.Message {
	msg := transport.Message{
		Body:        body,
		ContentType: ContentJSON,
		Type:        typ,
		MessageID:   id,
		AppID:       from,
		Timestamp:   time.Now(),
		Headers:     map[string]any{HeaderPath: path},
	}
	if !deadline.IsZero() {
		SetDeadline(&msg, deadline)
	}
	return msg
}

// Request is what ReadRequest reads from a request or push.
type Request struct {
	Path     string
	Deadline time.Time // zero: none
	Push     bool      // no reply_to: nobody waits for a reply
}

// ReadRequest reads and checks the Warren fields of a request or push: its
// type, its path (warren-path, or the routing key of a message published
// to ServiceExchange without one), its deadline and its content type, and
// that the transport did not have to remove headers it could not read
// (transport.HeaderMalformed). On error (always a CodeBadRequest) it
// returns what could be read. Limits on
// the body are the receiver's.
func ReadRequest(d *transport.Delivery) (Request, error) {
	req := Request{Push: d.ReplyTo == ""}
	path, perr := readString(d.Headers, HeaderPath)
	req.Path = path
	dl, derr := ReadDeadline(d.Headers)
	req.Deadline = dl
	if why, ok := d.Headers[transport.HeaderMalformed].(string); ok {
		// The transport removed headers it could not read: do not run
		// what is left.
		return req, fmt.Errorf("malformed message: %s", why)
	}
	switch d.Type {
	case TypeRequest, TypePush, "":
	default:
		return req, fmt.Errorf("unknown message type %q", d.Type)
	}
	if perr != nil {
		return req, perr
	}
	if req.Path == "" && d.Exchange == ServiceExchange {
		req.Path = d.RoutingKey
	}
	if err := CheckPath(req.Path); err != nil {
		return req, fmt.Errorf("header %s: %w", HeaderPath, err)
	}
	if derr != nil {
		return req, derr
	}
	if d.ContentType != "" && d.ContentType != ContentJSON {
		return req, fmt.Errorf("content type %q: want %s", d.ContentType, ContentJSON)
	}
	return req, nil
}

// readString reads an optional string header, naming the type it has
// when it is not a string.
func readString(h map[string]any, key string) (string, error) {
	switch v := h[key].(type) {
	case nil:
		return "", nil
	case string:
		return v, nil
	case []byte:
		return string(v), nil
	default:
		return "", fmt.Errorf("header %s: %s, want a string", key, typeName(v))
	}
}

// typeName names the AMQP field type of a header value.
func typeName(v any) string {
	switch v.(type) {
	case bool:
		return "a boolean"
	case int8, int16, int32, int64, int, uint8, uint16, uint32:
		return "an integer"
	case uint64:
		return "an unsigned 64-bit integer"
	case float32, float64:
		return "a float"
	case string, []byte:
		return "a string"
	case time.Time:
		return "a timestamp"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("a value of type %T", v)
}

// SetDeadline sets msg's deadline: header HeaderDeadline (integer Unix
// milliseconds) and an expiration of what is left of it, at least 1 ms, so
// that a queue drops what nobody took in time (into warren.dead).
func SetDeadline(msg *transport.Message, deadline time.Time) {
	if msg.Headers == nil {
		msg.Headers = map[string]any{}
	}
	msg.Headers[HeaderDeadline] = deadline.UnixMilli()
	msg.Expiration = max(time.Until(deadline), time.Millisecond)
}

// RefreshExpiration sets the expiration of msg, a message sent again, to
// what is left of its deadline (at least 1 ms); a message without a
// deadline is left alone.
func RefreshExpiration(msg *transport.Message) {
	if dl, ok := Deadline(msg.Headers); ok {
		msg.Expiration = max(time.Until(dl), time.Millisecond)
	}
}

// ReadDeadline reads the deadline of a request: the zero time when it has
// none, an error when header HeaderDeadline is there but is not a positive
// integer (Unix milliseconds). A receiver refuses such a request (code
// bad_request) rather than run it without the deadline its sender meant.
func ReadDeadline(h map[string]any) (time.Time, error) {
	v, there := h[HeaderDeadline]
	if !there {
		return time.Time{}, nil
	}
	ms, ok := Int(h, HeaderDeadline)
	if f, isFloat := v.(float64); isFloat && (f != math.Trunc(f) || math.Abs(f) >= 1<<63) {
		ok = false // NaN, infinite, fractional or out of range
	}
	if !ok {
		return time.Time{}, fmt.Errorf("header %s: %s, want an integer of Unix milliseconds", HeaderDeadline, typeName(v))
	}
	if ms <= 0 {
		return time.Time{}, fmt.Errorf("header %s: %d, want a positive integer of Unix milliseconds", HeaderDeadline, ms)
	}
	return time.UnixMilli(ms), nil
}

// Reply builds the successful reply of from to request d, carrying body
// (JSON). to, when not "", is set as HeaderTo (for a transport that
// WantsRecipient). A success carries no other header.
func Reply(d *transport.Delivery, from, to string, body []byte) transport.Message {
	msg := replyTo(d, from)
	msg.Body = body
	if to != "" {
		msg.Headers = map[string]any{HeaderTo: to}
	}
	return msg
}

// ErrorReply builds the error reply of from to request d: status error,
// code and message, and the request's path when it had one.
func ErrorReply(d *transport.Delivery, from, to, code, message string) transport.Message {
	msg := replyTo(d, from)
	msg.Headers = map[string]any{
		HeaderStatus: StatusError,
		HeaderCode:   code,
		HeaderError:  message,
	}
	if p := String(d.Headers, HeaderPath); p != "" {
		msg.Headers[HeaderPath] = p
	}
	if to != "" {
		msg.Headers[HeaderTo] = to
	}
	return msg
}

func replyTo(d *transport.Delivery, from string) transport.Message {
	corr := d.CorrelationID
	if corr == "" {
		corr = d.MessageID
	}
	return transport.Message{
		Type:          TypeReply,
		CorrelationID: corr,
		ContentType:   ContentJSON,
		AppID:         from,
		Timestamp:     time.Now(),
	}
}

// ReplyError returns the error an error reply carries (path is the
// request's), or nil for a successful reply. A reply whose headers the
// transport could not read whole (transport.HeaderMalformed) is a
// CodeBadRequest error.
func ReplyError(d *transport.Delivery, path string) *RemoteError {
	if why, ok := d.Headers[transport.HeaderMalformed].(string); ok {
		// Its status and error may be what the transport removed.
		return &RemoteError{Agent: d.AppID, Path: path, Code: CodeBadRequest, Message: "malformed reply: " + why}
	}
	if String(d.Headers, HeaderStatus) != StatusError {
		return nil
	}
	return &RemoteError{
		Agent:   d.AppID,
		Path:    path,
		Code:    String(d.Headers, HeaderCode),
		Message: String(d.Headers, HeaderError),
	}
}

// DeadLetterOptions are the publish options of every dead letter:
// publisher-confirmed, and mandatory, so that a letter no queue takes (no
// queue bound to DeadLetterExchange) is an error rather than lost while
// the original is acked.
var DeadLetterOptions = transport.PublishOptions{Confirm: true, Mandatory: true}

// DeadLetter builds the dead-letter copy of d: its properties and headers
// (without an expiration, which would drop it from warren.dead, and
// without a quorum queue's x-delivery-count), with the reason (an error
// code), the message, where d was published, and by (when not ""), the
// identity of who dead-lettered it.
func DeadLetter(d *transport.Delivery, reason, text, by string) transport.Message {
	msg := d.Message
	msg.Headers = maps.Clone(d.Headers)
	if msg.Headers == nil {
		msg.Headers = map[string]any{}
	}
	delete(msg.Headers, headerDeliveryCount)
	msg.Headers[HeaderReason] = reason
	msg.Headers[HeaderError] = text
	if by != "" {
		msg.Headers[HeaderAgent] = by
	}
	msg.Headers[HeaderOriginalExchange] = d.Exchange
	msg.Headers[HeaderOriginalRoutingKey] = d.RoutingKey
	msg.Expiration = 0
	return msg
}

// PublishDeadLetter publishes DeadLetter(d, reason, text, by) to
// DeadLetterExchange (routing key: d's) with DeadLetterOptions. On error
// the caller must not ack d: reject it (the queue's own dead-letter
// exchange takes it) or requeue it.
func PublishDeadLetter(ctx context.Context, tr transport.Transport, d *transport.Delivery, reason, text, by string) error {
	return tr.Publish(ctx, DeadLetterExchange, d.RoutingKey, DeadLetter(d, reason, text, by), DeadLetterOptions)
}

// Bounds of a heartbeat's ping interval. Agents refuse to start with an
// interval outside them, and mappers refuse heartbeats that carry one.
const (
	MinPingInterval = 10 * time.Millisecond
	MaxPingInterval = time.Hour
)

// NewHeartbeat builds a heartbeat message (TypeRegister, TypePing or
// TypeUnregister) carrying hb. It fails when hb.Status does not encode as
// JSON.
func NewHeartbeat(typ string, hb Heartbeat) (transport.Message, error) {
	body, err := json.Marshal(hb)
	if err != nil {
		return transport.Message{}, fmt.Errorf("encode heartbeat (is the status JSON?): %w", err)
	}
	return transport.Message{
		Body:        body,
		ContentType: ContentJSON,
		Type:        typ,
		AppID:       hb.Identity,
		Timestamp:   time.Now(),
		Headers:     map[string]any{HeaderVersion: int64(Version)},
	}, nil
}

// ErrBadHeartbeat is wrapped by every error of ReadHeartbeat.
var ErrBadHeartbeat = errors.New("warren: heartbeat refused")

// ReadHeartbeat reads and validates a heartbeat: its type, and a record
// whose identity is well-formed (CheckIdentity), whose queue, when given,
// is the identity's, whose services and inactive services are valid paths,
// whose status is a finite number, a string or another JSON value, and
// whose ping interval is within MinPingInterval..MaxPingInterval. A
// missing queue is filled in; a queue type other than QueueClassic and
// QueueQuorum is read as "" (not reported). Errors wrap ErrBadHeartbeat
// and say why.
func ReadHeartbeat(d *transport.Delivery) (Heartbeat, error) {
	var hb Heartbeat
	if why, ok := d.Headers[transport.HeaderMalformed].(string); ok {
		return hb, fmt.Errorf("%w: malformed: %s", ErrBadHeartbeat, why)
	}
	switch d.Type {
	case TypeRegister, TypePing, TypeUnregister:
	default:
		return hb, fmt.Errorf("%w: unknown type %q", ErrBadHeartbeat, d.Type)
	}
	if err := json.Unmarshal(d.Body, &hb); err != nil {
		return hb, fmt.Errorf("%w: body: %w", ErrBadHeartbeat, err)
	}
	if err := CheckIdentity(hb.Identity); err != nil {
		return hb, fmt.Errorf("%w: identity: %w", ErrBadHeartbeat, err)
	}
	if hb.Queue == "" {
		hb.Queue = AgentQueue(hb.Identity)
	} else if hb.Queue != AgentQueue(hb.Identity) {
		return hb, fmt.Errorf("%w: agent %s: queue %q, want %q", ErrBadHeartbeat, hb.Identity, hb.Queue, AgentQueue(hb.Identity))
	}
	for _, p := range slices.Concat(hb.Services, hb.Inactive) {
		if err := CheckPath(p); err != nil {
			return hb, fmt.Errorf("%w: agent %s: service: %w", ErrBadHeartbeat, hb.Identity, err)
		}
	}
	for _, t := range hb.Tags {
		if !utf8.ValidString(t) || strings.ContainsFunc(t, unicode.IsControl) {
			return hb, fmt.Errorf("%w: agent %s: tag %q: not UTF-8 or has control characters", ErrBadHeartbeat, hb.Identity, t)
		}
	}
	if f, ok := hb.Status.(float64); ok && (math.IsNaN(f) || math.IsInf(f, 0)) {
		return hb, fmt.Errorf("%w: agent %s: status %v is not finite", ErrBadHeartbeat, hb.Identity, f)
	}
	if hb.PingInterval < MinPingInterval.Milliseconds() || hb.PingInterval > MaxPingInterval.Milliseconds() {
		return hb, fmt.Errorf("%w: agent %s: ping_interval_ms %d: want %d to %d", ErrBadHeartbeat, hb.Identity, hb.PingInterval, MinPingInterval.Milliseconds(), MaxPingInterval.Milliseconds())
	}
	if hb.InFlight != nil && *hb.InFlight < 0 || hb.Handled != nil && *hb.Handled < 0 {
		return hb, fmt.Errorf("%w: agent %s: negative in_flight or handled", ErrBadHeartbeat, hb.Identity)
	}
	if hb.QueueType != QueueClassic && hb.QueueType != QueueQuorum {
		hb.QueueType = "" // a type this version does not know: not reported
	}
	return hb, nil
}
