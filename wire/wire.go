// Package wire holds Warren's wire format: the names of its exchanges and
// queues, the AMQP properties and headers it sets, the heartbeat body, and
// the error codes replies carry. docs/protocol.md is the normative text;
// this package is its Go form, shared by agents, mappers and tools.
//
// It also builds and reads every message shape, each in one place:
// requests and pushes (NewRequest, ReadRequest), deadlines (SetDeadline,
// ReadDeadline, RefreshExpiration), replies and error replies (Reply,
// ErrorReply, ReplyError), progress (AskProgress, WantsProgress,
// NewProgress, ReadProgress), dead letters (DeadLetter, PublishDeadLetter
// with DeadLetterOptions), heartbeats (NewHeartbeat, ReadHeartbeat,
// which validates the record), topic events (NewEvent, ReadEvent,
// CheckEventKey, CheckEventPattern) and peer messages (NewPeerMessage;
// peers reply with Reply and ErrorReply). Agents, mappers, the secure transport and
// tools use these rather than writing headers by hand, so that the shapes
// cannot drift apart.
//
// Everything here is plain AMQP 0-9-1: a client in any language can call an
// actor, or be an agent, by following docs/protocol.md without importing
// Warren.
package wire

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/warrenrpc/warren/transport"
)

// Version is the protocol version sent in the warren-version header of
// heartbeats. Version 2 carries the sender's identity in app_id (version 1
// had warren-from and, on replies, warren-agent headers): a version 2 mapper
// discards replies of version 1 agents.
const Version = 2

// Exchanges.
const (
	// RequestExchange (direct) routes requests and pushes to one agent's
	// queue; the routing key is the agent identity.
	RequestExchange = "warren.request"
	// ServiceExchange (direct) routes requests and pushes to the shared
	// queue of a service, consumed by every agent that serves it; the
	// routing key is the service path.
	ServiceExchange = "warren.service"
	// HeartbeatExchange (fanout) carries register, ping and unregister
	// messages from agents to every mapper.
	HeartbeatExchange = "warren.heartbeat"
	// ControlExchange (fanout) carries announce requests from mappers to
	// every agent.
	ControlExchange = "warren.control"
	// DeadLetterExchange (fanout) receives dead letters; DeadLetterQueue
	// holds them.
	DeadLetterExchange = "warren.dlx"
	// DeadLetterQueue is the durable queue bound to DeadLetterExchange.
	DeadLetterQueue = "warren.dead"
)

// AgentQueue is the name of an agent's own queue.
func AgentQueue(identity string) string { return "warren.agent." + identity }

// AgentQueueExpiry is the x-expires of every agent's own queue: how long
// it outlives its agent. It is one value for every agent, not derived from
// the ping interval: RabbitMQ refuses to declare a queue again with other
// arguments, so an agent restarted with another ping interval could not
// have started until its old queue expired.
const AgentQueueExpiry = 10 * time.Minute

// ServiceQueue is the name of the shared queue of a service path.
func ServiceQueue(path string) string { return "warren.service." + path }

// Message types (the AMQP type property).
const (
	TypeRequest    = "warren.request"
	TypePush       = "warren.push"
	TypeReply      = "warren.reply"
	TypeRegister   = "warren.register"
	TypePing       = "warren.ping"
	TypeUnregister = "warren.unregister"
	TypeAnnounce   = "warren.announce"
)

// The sender's identity travels in the AMQP app_id property
// (transport.Message.AppID) of every message: the mapper's on requests,
// pushes and announces, the agent's on replies and heartbeats. A property
// rather than a header: RabbitMQ decodes the header table of every
// message it routes, and the round-trip benchmark measured two headers
// each way at about 9% of the throughput.

// Header names.
const (
	HeaderPath     = "warren-path"     // service path of a request or push
	HeaderTo       = "warren-to"       // identity of the recipient, when there is one
	HeaderDeadline = "warren-deadline" // int64 Unix milliseconds
	HeaderAgent    = "warren-agent"    // on dead letters: the agent that dead-lettered it
	// HeaderPinned (true) marks a request or push for its agent only: the
	// caller chose the agent by identity or tags, or it is one copy of a
	// fan-out. A mapper draining the queue of a dropped agent leaves it
	// there, for the agent's return or its deadline.
	HeaderPinned = "warren-pinned"
	// HeaderTags (comma-separated) marks work for agents with these tags:
	// a mapper draining the queue of a dropped agent sends it to another
	// live agent that has them, or leaves it there like pinned work.
	HeaderTags = "warren-tags"
	// HeaderStatus is "error" on error replies; a reply without it is a
	// success ("ok" is accepted too).
	HeaderStatus  = "warren-status"
	HeaderCode    = "warren-error-code"
	HeaderError   = "warren-error" // error message on replies and dead letters
	HeaderReason  = "warren-dead-reason"
	HeaderVersion = "warren-version"
)

// Reply statuses.
const (
	StatusOK    = "ok"
	StatusError = "error"
)

// Error codes carried in HeaderCode. They are stable: clients in other
// languages map them.
const (
	CodeNoSuchService = "no_such_service" // the agent does not serve the path
	CodeBadRequest    = "bad_request"     // malformed message or undecodable body
	CodeHandler       = "handler_error"   // the handler returned an error
	CodePanic         = "handler_panic"   // the handler panicked
	CodeExpired       = "deadline_exceeded"
	CodeDeclined      = "declined"       // no agent took the work
	CodeDeliveryLimit = "delivery_limit" // delivered or declined too often
	CodeShutdown      = "shutting_down"
)

// ContentJSON is the default content type of bodies.
const ContentJSON = "application/json"

// Heartbeat is the JSON body of register, ping and unregister messages.
// Every ping carries the whole record, so a mapper that missed the register
// learns everything from the next ping.
type Heartbeat struct {
	Identity string   `json:"identity"`
	Queue    string   `json:"queue"`
	Services []string `json:"services"`
	Tags     []string `json:"tags,omitempty"`
	// Status is any JSON value; numbers compare numerically, strings
	// lexically. least_loaded picks the smallest.
	Status any `json:"status"`
	// PingInterval is how often the agent pings, in milliseconds.
	PingInterval int64 `json:"ping_interval_ms"`
	// Inactive lists services whose actor is not taking work now.
	Inactive []string `json:"inactive,omitempty"`
	// Started is when the agent started (RFC 3339).
	Started time.Time `json:"started"`
	// InFlight and Handled, optional, count the requests and pushes the
	// agent is handling now and has handled since it started, as of
	// this heartbeat (Warren's agents send both; nil: not reported).
	InFlight *int64 `json:"in_flight,omitempty"`
	Handled  *int64 `json:"handled,omitempty"`
	// QueueType, optional, is the type of the agent's own queue as the
	// agent declared it: QueueClassic or QueueQuorum; "" when not
	// reported. Only QueueClassic lets a mapper send requests without a
	// publisher confirm (see NoNack).
	QueueType string `json:"queue_type,omitempty"`
}

// Values of Heartbeat.QueueType.
const (
	QueueClassic = string(transport.Classic)
	QueueQuorum  = string(transport.Quorum)
)

// NoNack reports whether the agent's own queue, of the type queueType
// that its heartbeat reported (AgentInfo.QueueType, Heartbeat.QueueType),
// is one that the broker does not nack publishes to in normal operation:
// a classic queue, which Warren declares without reject-publish overflow,
// nacks only when its queue process fails. A quorum queue nacks around a
// leader election; an unknown or missing type is taken to nack. Requests
// to such an agent need no publisher confirm: the reply proves delivery,
// and a basic.return that the queue is gone.
func NoNack(queueType string) bool { return queueType == QueueClassic }

// RemoteError is a failure reported by the agent that handled a request.
// errors.Is matches another *RemoteError with the same Code, so
// errors.Is(err, &wire.RemoteError{Code: wire.CodeNoSuchService}) works.
type RemoteError struct {
	Agent   string // identity of the agent that replied
	Path    string
	Code    string
	Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("warren: %s on agent %s: %s: %s", e.Path, e.Agent, e.Code, e.Message)
}

// Is reports whether target is a *RemoteError with the same code.
func (e *RemoteError) Is(target error) bool {
	t, ok := target.(*RemoteError)
	return ok && t.Code == e.Code && (t.Agent == "" || t.Agent == e.Agent)
}

// RemoteCode returns the error code, for code that maps errors without
// importing this package.
func (e *RemoteError) RemoteCode() string { return e.Code }

// Topology declares the exchanges and the dead-letter queue every Warren
// participant relies on (a quorum queue, see DeclareShared). It is
// idempotent.
func Topology(ctx context.Context, tr transport.Transport) error {
	exs := []transport.Exchange{
		{Name: RequestExchange, Kind: transport.Direct, Durable: true},
		{Name: ServiceExchange, Kind: transport.Direct, Durable: true},
		{Name: HeartbeatExchange, Kind: transport.Fanout, Durable: true},
		{Name: ControlExchange, Kind: transport.Fanout, Durable: true},
		{Name: DeadLetterExchange, Kind: transport.Fanout, Durable: true},
	}
	for _, ex := range exs {
		if err := tr.DeclareExchange(ctx, ex); err != nil {
			return fmt.Errorf("declare exchange %s: %w", ex.Name, err)
		}
	}
	return DeclareDeadLetters(ctx, tr)
}

// DeclareDeadLetters declares the dead-letter exchange, its queue and the
// binding between them: what Topology declares for dead letters, for a
// participant that needs only those (package events). It is idempotent.
func DeclareDeadLetters(ctx context.Context, tr transport.Transport) error {
	if err := tr.DeclareExchange(ctx, transport.Exchange{Name: DeadLetterExchange, Kind: transport.Fanout, Durable: true}); err != nil {
		return fmt.Errorf("declare exchange %s: %w", DeadLetterExchange, err)
	}
	if err := DeclareShared(ctx, tr, transport.Queue{Name: DeadLetterQueue}); err != nil {
		return err
	}
	if err := tr.Bind(ctx, transport.Binding{Exchange: DeadLetterExchange, Queue: DeadLetterQueue}); err != nil {
		return fmt.Errorf("bind %s: %w", DeadLetterQueue, err)
	}
	return nil
}

// DeclareShared declares one of the fabric's shared, long-lived queues:
// the dead-letter queue, a service's shared queue, parked work. Such a
// queue outlives every process that uses it, so it is a durable quorum
// queue: replicated over a cluster's nodes, it stays available when the
// node that created it dies, where a durable classic queue would refuse
// every declaration and consumer until that node returns ("home node ...
// is down or inaccessible"). q's Type and Durable are set here; its other
// fields (DeliveryLimit, DeadLetterExchange) are the caller's.
//
// A queue that already exists with other arguments, such as a classic one
// declared by an older Warren, or a quorum one with another delivery
// limit, is used as it is: the broker refuses the declaration as
// inequivalent (transport.ErrPrecondition) and nothing else changes.
// docs/operations.md says how to move such a queue to a quorum queue.
func DeclareShared(ctx context.Context, tr transport.Transport, q transport.Queue) error {
	q.Type, q.Durable = transport.Quorum, true
	if _, err := tr.DeclareQueue(ctx, q); err != nil && !errors.Is(err, transport.ErrPrecondition) {
		return fmt.Errorf("declare queue %s: %w", q.Name, err)
	}
	return nil
}

// ErrInvalidPath is returned for a service path that is not /actor/method.
var ErrInvalidPath = errors.New("warren: invalid service path")

// CheckPath validates a service path: "/actor/method", each part non-empty,
// valid UTF-8 and free of whitespace and control characters.
func CheckPath(p string) error {
	// Without strings.Split: this runs twice per request, and allocates
	// nothing on the way.
	rest, rooted := strings.CutPrefix(p, "/")
	actor, method, two := strings.Cut(rest, "/")
	if !rooted || !two || actor == "" || method == "" || strings.Contains(method, "/") || strings.ContainsAny(p, " \t\r\n") {
		return fmt.Errorf("%w %q: want /actor/method", ErrInvalidPath, p)
	}
	if !utf8.ValidString(p) || strings.ContainsFunc(p, unicode.IsControl) {
		return fmt.Errorf("%w %q: want valid UTF-8 without control characters", ErrInvalidPath, p)
	}
	return nil
}

// ErrInvalidIdentity is returned for an agent or mapper identity that
// breaks the protocol's rule (docs/protocol.md).
var ErrInvalidIdentity = errors.New("warren: invalid identity")

// MaxIdentity is the longest identity, in bytes: the agent's queue name
// (AgentQueue) must fit AMQP's 255-byte short strings.
const MaxIdentity = 255 - len("warren.agent.")

// CheckIdentity validates an agent or mapper identity: non-empty, at most
// MaxIdentity bytes, valid UTF-8, without whitespace, control characters
// or '/'.
func CheckIdentity(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty", ErrInvalidIdentity)
	case len(id) > MaxIdentity:
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidIdentity, len(id), MaxIdentity)
	case !utf8.ValidString(id):
		return fmt.Errorf("%w %q: not valid UTF-8", ErrInvalidIdentity, id)
	case strings.ContainsFunc(id, func(r rune) bool { return r == '/' || unicode.IsSpace(r) || unicode.IsControl(r) }):
		return fmt.Errorf("%w %q: no spaces, control characters or slashes", ErrInvalidIdentity, id)
	}
	return nil
}

// Pinned reports whether headers h mark work for its agent only
// (HeaderPinned true).
func Pinned(h map[string]any) bool {
	pinned, _ := h[HeaderPinned].(bool)
	return pinned
}

// String returns a header as a string, or "".
func String(h map[string]any, key string) string {
	switch v := h[key].(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return ""
}

// Int returns an integer header, accepting every integer type a client
// library may send.
func Int(h map[string]any, key string) (int64, bool) {
	switch v := h[key].(type) {
	case int64:
		return v, true
	case int32:
		return int64(v), true
	case int:
		return int64(v), true
	case int16:
		return int64(v), true
	case int8:
		return int64(v), true
	case uint8:
		return int64(v), true
	case uint16:
		return int64(v), true
	case uint32:
		return int64(v), true
	case float64:
		return int64(v), true
	}
	return 0, false
}

// Deadline returns the request deadline carried in headers, if any.
func Deadline(h map[string]any) (time.Time, bool) {
	ms, ok := Int(h, HeaderDeadline)
	if !ok || ms <= 0 {
		return time.Time{}, false
	}
	return time.UnixMilli(ms), true
}

// WantsRecipient reports whether tr asks for the warren-to header on every
// message addressed to one identity (a secure transport encrypts to it).
// Agents and mappers leave the header out otherwise: every header costs
// the broker time on every message.
func WantsRecipient(tr any) bool {
	w, ok := tr.(interface{ WantsRecipient() bool })
	return ok && w.WantsRecipient()
}

// Limits on what an agent accepts and a mapper sends, unless configured
// otherwise.
const (
	DefaultMaxMessageSize = 16 << 20 // bytes of body
	DefaultMaxDepth       = 64       // nesting of JSON arrays and objects
	DefaultMaxFanOut      = 1000     // agents one fan-out or push reaches
)

// Errors returned by CheckDepth.
var (
	ErrTooDeep = errors.New("warren: JSON nested too deeply")
	// ErrUnbalanced: a bracket closes an array or object that was not
	// opened. Counting on past it would let what follows nest deeper than
	// the limit unseen.
	ErrUnbalanced = errors.New("warren: malformed JSON: unbalanced brackets")
)

// CheckDepth reports an error wrapping ErrTooDeep when the JSON text b nests
// arrays and objects deeper than max, or wrapping ErrUnbalanced when a
// closing bracket has no opening one. It does not validate b otherwise (an
// unclosed bracket is left to the JSON decoder), and reads it once
// without allocating.
func CheckDepth(b []byte, max int) error {
	depth, inString, escaped := 0, false, false
	for _, c := range b {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '[' || c == '{':
			depth++
			if depth > max {
				return fmt.Errorf("%w: more than %d levels", ErrTooDeep, max)
			}
		case c == ']' || c == '}':
			depth--
			if depth < 0 {
				return fmt.Errorf("%w: %q closes nothing", ErrUnbalanced, c)
			}
		}
	}
	return nil
}
