package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/warrenrpc/warren/transport"
)

// Discovery, in the shape of NATS micro's (ADR-32): a client asks every
// agent PING, INFO or STATS on ControlExchange, and each service instance
// that matches answers to the client's queue with the JSON NATS micro
// uses. A Warren service is an actor on one agent: name the actor
// ("simple"), id the agent's identity, endpoints the actor's methods.
// docs/protocol.md has the whole text.

// Discovery verbs, the last word of a discovery question's routing key.
const (
	VerbPing  = "PING"
	VerbInfo  = "INFO"
	VerbStats = "STATS"
)

// DiscoverPrefix starts the routing key of a discovery question,
// "$SRV.PING", "$SRV.INFO" or "$SRV.STATS": NATS micro's control subjects.
const DiscoverPrefix = "$SRV."

// Message types of discovery.
const (
	TypeDiscover      = "warren.discover"       // a question, on ControlExchange
	TypeDiscoverReply = "warren.discover.reply" // one service instance's answer
)

// Headers of a discovery question that narrow who answers: only the
// instances of the service named HeaderServiceName, only the agent
// HeaderServiceID.
const (
	HeaderServiceName = "warren-service-name"
	HeaderServiceID   = "warren-service-id"
)

// The type field of each answer, NATS micro's.
const (
	PingResponseType  = "io.nats.micro.v1.ping_response"
	InfoResponseType  = "io.nats.micro.v1.info_response"
	StatsResponseType = "io.nats.micro.v1.stats_response"
)

// ServiceIdentity names one service instance: name the actor, id the
// agent's identity, version the agent's Config.Version. Metadata is never
// null.
type ServiceIdentity struct {
	Name     string            `json:"name"`
	ID       string            `json:"id"`
	Version  string            `json:"version"`
	Metadata map[string]string `json:"metadata"`
}

// ServicePing answers PING.
type ServicePing struct {
	ServiceIdentity
	Type string `json:"type"`
}

// ServiceInfo answers INFO.
type ServiceInfo struct {
	ServiceIdentity
	Type        string         `json:"type"`
	Description string         `json:"description"`
	Endpoints   []EndpointInfo `json:"endpoints"`
}

// EndpointInfo is one method of the actor: name the method, subject the
// service path, queue_group the shared queue the agent consumes ("" when
// it serves only requests addressed to it).
type EndpointInfo struct {
	Name       string            `json:"name"`
	Subject    string            `json:"subject"`
	QueueGroup string            `json:"queue_group"`
	Metadata   map[string]string `json:"metadata"`
}

// ServiceStats answers STATS.
type ServiceStats struct {
	ServiceIdentity
	Type      string          `json:"type"`
	Started   time.Time       `json:"started"`
	Endpoints []EndpointStats `json:"endpoints"`
}

// EndpointStats counts one endpoint's work since the agent started: the
// requests and pushes its handler ran (declined ones are not counted),
// those that failed, the last failure ("code: message") and the time
// spent in the handler, in nanoseconds as NATS micro sends it.
type EndpointStats struct {
	Name                  string          `json:"name"`
	Subject               string          `json:"subject"`
	QueueGroup            string          `json:"queue_group"`
	NumRequests           int             `json:"num_requests"`
	NumErrors             int             `json:"num_errors"`
	LastError             string          `json:"last_error"`
	ProcessingTime        time.Duration   `json:"processing_time"`
	AverageProcessingTime time.Duration   `json:"average_processing_time"`
	Data                  json.RawMessage `json:"data,omitempty"`
}

// DiscoverQuestion is what a discovery question asks.
type DiscoverQuestion struct {
	Verb string // VerbPing, VerbInfo or VerbStats
	Name string // "" for every service
	ID   string // "" for every agent
}

// ErrBadDiscover is returned for a discovery question or answer that
// breaks docs/protocol.md.
var ErrBadDiscover = errors.New("warren: bad discovery message")

func checkVerb(v string) error {
	switch v {
	case VerbPing, VerbInfo, VerbStats:
		return nil
	}
	return fmt.Errorf("%w: verb %q: want PING, INFO or STATS", ErrBadDiscover, v)
}

// NewDiscover builds a discovery question from the client from, to be
// published on ControlExchange with the routing key returned; the answers
// come to replyTo with correlation id corr.
func NewDiscover(q DiscoverQuestion, from, replyTo, corr string) (string, transport.Message, error) {
	if err := checkVerb(q.Verb); err != nil {
		return "", transport.Message{}, err
	}
	if replyTo == "" || corr == "" {
		return "", transport.Message{}, fmt.Errorf("%w: a question needs reply_to and correlation_id", ErrBadDiscover)
	}
	msg := transport.Message{
		Type:          TypeDiscover,
		AppID:         from,
		ReplyTo:       replyTo,
		CorrelationID: corr,
		Timestamp:     time.Now(),
	}
	if q.Name != "" || q.ID != "" {
		msg.Headers = map[string]any{}
		if q.Name != "" {
			msg.Headers[HeaderServiceName] = q.Name
		}
		if q.ID != "" {
			msg.Headers[HeaderServiceID] = q.ID
		}
	}
	return DiscoverPrefix + q.Verb, msg, nil
}

// ReadDiscover reads a discovery question.
func ReadDiscover(d *transport.Delivery) (DiscoverQuestion, error) {
	verb, ok := strings.CutPrefix(d.RoutingKey, DiscoverPrefix)
	q := DiscoverQuestion{Verb: verb, Name: String(d.Headers, HeaderServiceName), ID: String(d.Headers, HeaderServiceID)}
	if !ok || d.Type != TypeDiscover {
		return q, fmt.Errorf("%w: type %q, routing key %q", ErrBadDiscover, d.Type, d.RoutingKey)
	}
	if err := checkVerb(verb); err != nil {
		return q, err
	}
	if d.ReplyTo == "" || d.CorrelationID == "" {
		return q, fmt.Errorf("%w: no reply_to or correlation_id", ErrBadDiscover)
	}
	return q, nil
}

// Matches reports whether the service instance name on agent id answers q.
func (q DiscoverQuestion) Matches(name, id string) bool {
	return (q.Name == "" || q.Name == name) && (q.ID == "" || q.ID == id)
}

// DiscoverReply builds from's answer to question d; v is a ServicePing,
// ServiceInfo or ServiceStats.
func DiscoverReply(d *transport.Delivery, from string, v any) (transport.Message, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return transport.Message{}, fmt.Errorf("%w: %v", ErrBadDiscover, err)
	}
	msg := replyTo(d, from)
	msg.Type = TypeDiscoverReply
	msg.Body = body
	return msg, nil
}

// ReadDiscoverReply checks an answer to the question with correlation id
// corr and returns its JSON and its type field.
func ReadDiscoverReply(d *transport.Delivery, corr string) (json.RawMessage, string, error) {
	if d.Type != TypeDiscoverReply || d.CorrelationID != corr {
		return nil, "", fmt.Errorf("%w: type %q, correlation id %q", ErrBadDiscover, d.Type, d.CorrelationID)
	}
	var head struct {
		Type string `json:"type"`
		Name string `json:"name"`
		ID   string `json:"id"`
	}
	if err := json.Unmarshal(d.Body, &head); err != nil {
		return nil, "", fmt.Errorf("%w: %v", ErrBadDiscover, err)
	}
	switch head.Type {
	case PingResponseType, InfoResponseType, StatsResponseType:
	default:
		return nil, "", fmt.Errorf("%w: answer of type %q", ErrBadDiscover, head.Type)
	}
	if head.Name == "" || head.ID == "" {
		return nil, "", fmt.Errorf("%w: answer without name or id", ErrBadDiscover)
	}
	return json.RawMessage(d.Body), head.Type, nil
}
