package amqp

import (
	"fmt"
	"math"
	"strconv"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenrpc/warren/transport"
)

// returnTokenHeader carries the delivery tag of a mandatory publish whose
// message id cannot identify it (none, or one already in flight on its
// channel), so that a basic.return can be matched to the Publish that
// caused it. It is reserved: stripped from what callers publish and from
// deliveries.
const returnTokenHeader = "x-warren-return-token"

// toPublishing converts a transport message to its AMQP form, checking header
// types.
func toPublishing(m transport.Message) (amqp091.Publishing, error) {
	if err := checkMessage(&m); err != nil {
		return amqp091.Publishing{}, err
	}
	headers, err := toTable(m.Headers)
	if err != nil {
		return amqp091.Publishing{}, err
	}
	p := amqp091.Publishing{
		Headers:         headers,
		ContentType:     m.ContentType,
		ContentEncoding: m.ContentEncoding,
		CorrelationId:   m.CorrelationID,
		ReplyTo:         m.ReplyTo,
		MessageId:       m.MessageID,
		Type:            m.Type,
		AppId:           m.AppID,
		Priority:        m.Priority,
		Body:            m.Body,
	}
	if !m.Timestamp.IsZero() {
		p.Timestamp = m.Timestamp
	}
	if m.Persistent {
		p.DeliveryMode = amqp091.Persistent
	}
	switch {
	case m.Expiration < 0:
		return amqp091.Publishing{}, fmt.Errorf("amqp: negative expiration %v", m.Expiration)
	case m.Expiration > MaxExpiration:
		// RabbitMQ would close the channel (406 PRECONDITION_FAILED),
		// which the publish reports as a lost connection.
		return amqp091.Publishing{}, fmt.Errorf("amqp: expiration %v is over RabbitMQ's limit of %v (2^32-1 ms)", m.Expiration, MaxExpiration)
	case m.Expiration > 0:
		// Round up: a sub-millisecond TTL must not become "expire now".
		ms := (m.Expiration + time.Millisecond - 1) / time.Millisecond
		p.Expiration = strconv.FormatInt(int64(ms), 10)
	}
	return p, nil
}

// MaxExpiration is the longest message expiration (per-message TTL)
// RabbitMQ accepts: transport.MaxExpiration.
const MaxExpiration = transport.MaxExpiration

// fromDelivery converts an AMQP delivery to a transport message.
func fromDelivery(d *amqp091.Delivery) transport.Message {
	m := transport.Message{
		Body:            d.Body,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		Headers:         fromTable(d.Headers),
		MessageID:       d.MessageId,
		CorrelationID:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		Type:            d.Type,
		AppID:           d.AppId,
		Persistent:      d.DeliveryMode == amqp091.Persistent,
		Priority:        d.Priority,
	}
	if m.Headers != nil {
		delete(m.Headers, returnTokenHeader)
		if len(m.Headers) == 0 {
			m.Headers = nil
		}
	}
	if !d.Timestamp.IsZero() {
		m.Timestamp = d.Timestamp.UTC()
	}
	if d.Expiration != "" {
		if ms, err := strconv.ParseInt(d.Expiration, 10, 64); err == nil && ms > 0 && ms <= math.MaxInt64/int64(time.Millisecond) {
			m.Expiration = time.Duration(ms) * time.Millisecond
		}
	}
	return m
}

// toTable checks and converts headers for the wire. It accepts the types
// documented on transport.Message, converts the other integer types to int64,
// and refuses anything else.
func toTable(h map[string]any) (amqp091.Table, error) {
	if h == nil {
		return nil, nil
	}
	if wireReady(h) {
		// The common case (strings and int64s): no copy. amqp091 only
		// reads the table, during Publish.
		return amqp091.Table(h), nil
	}
	t := make(amqp091.Table, len(h))
	for k, v := range h {
		if k == returnTokenHeader {
			continue // reserved for matching returns: never trust a caller's
		}
		if err := checkShort("header key", k); err != nil {
			return nil, err
		}
		w, err := toValue(v)
		if err != nil {
			return nil, fmt.Errorf("amqp: header %q: %w", k, err)
		}
		t[k] = w
	}
	return t, nil
}

func toValue(v any) (any, error) {
	switch v := v.(type) {
	case nil, string, []byte, bool, int32, int64, float64:
		return v, nil
	case time.Time:
		return v, nil
	case int:
		return int64(v), nil
	case int8:
		return int64(v), nil
	case int16:
		return int64(v), nil
	case uint8:
		return int64(v), nil
	case uint16:
		return int64(v), nil
	case uint32:
		return int64(v), nil
	case uint:
		if uint64(v) > math.MaxInt64 {
			return nil, fmt.Errorf("value %d overflows int64", v)
		}
		return int64(v), nil
	case uint64:
		if v > math.MaxInt64 {
			return nil, fmt.Errorf("value %d overflows int64", v)
		}
		return int64(v), nil
	case map[string]any:
		return toTable(v)
	case amqp091.Table:
		return toTable(v)
	case []any:
		a := make([]any, len(v))
		for i, e := range v {
			w, err := toValue(e)
			if err != nil {
				return nil, fmt.Errorf("element %d: %w", i, err)
			}
			a[i] = w
		}
		return a, nil
	default:
		return nil, fmt.Errorf("unsupported type %T (want string, []byte, bool, an integer, float64, time.Time, []any or map[string]any)", v)
	}
}

// fromTable converts received headers to the types documented on
// transport.Message: smaller integers become int64, float32 becomes float64,
// AMQP decimals become float64, tables become map[string]any. A void value
// stays nil.
func fromTable(t amqp091.Table) map[string]any {
	if t == nil {
		return nil
	}
	if received(t) {
		// Nothing to convert: hand the decoded table over as it is (it
		// belongs to this delivery alone).
		return map[string]any(t)
	}
	h := make(map[string]any, len(t))
	for k, v := range t {
		h[k] = fromValue(v)
	}
	return h
}

func fromValue(v any) any {
	switch v := v.(type) {
	case int8:
		return int64(v)
	case int16:
		return int64(v)
	case int:
		return int64(v)
	case uint8:
		return int64(v)
	case uint16:
		return int64(v)
	case uint32:
		return int64(v)
	case float32:
		return float64(v)
	case amqp091.Decimal:
		return float64(v.Value) / math.Pow10(int(v.Scale))
	case time.Time:
		return v.UTC()
	case amqp091.Table:
		return fromTable(v)
	case []any:
		a := make([]any, len(v))
		for i, e := range v {
			a[i] = fromValue(e)
		}
		return a
	default:
		return v
	}
}

// maxShortstr is the AMQP limit on names, keys, header keys and most
// properties. amqp091 finds a longer one only while writing the frame, and
// the half-written frame breaks the whole connection: check first.
const maxShortstr = 255

// checkShort returns an error naming what when s is too long for the wire.
func checkShort(what, s string) error {
	if len(s) > maxShortstr {
		return fmt.Errorf("%s is %d bytes long, more than AMQP's %d", what, len(s), maxShortstr)
	}
	return nil
}

// checkMessage checks the properties that travel as short strings.
func checkMessage(m *transport.Message) error {
	for _, f := range []struct{ what, s string }{
		{"content type", m.ContentType},
		{"content encoding", m.ContentEncoding},
		{"message id", m.MessageID},
		{"correlation id", m.CorrelationID},
		{"reply-to", m.ReplyTo},
		{"type", m.Type},
		{"app id", m.AppID},
	} {
		if err := checkShort(f.what, f.s); err != nil {
			return err
		}
	}
	return nil
}

// wireReady reports whether h needs no conversion for the wire: short keys
// and only scalar values of the types amqp091 writes as they are.
func wireReady(h map[string]any) bool {
	for k, v := range h {
		if len(k) > 255 || k == returnTokenHeader {
			return false
		}
		switch v.(type) {
		case nil, string, []byte, bool, int32, int64, float64:
		default:
			return false
		}
	}
	return true
}

// received reports whether a decoded table holds only values that
// fromValue would return unchanged.
func received(t amqp091.Table) bool {
	for _, v := range t {
		switch v.(type) {
		case nil, string, []byte, bool, int32, int64, float64:
		default:
			return false
		}
	}
	return true
}
