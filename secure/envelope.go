package secure

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/warrenrpc/warren/transport"
)

// ContentType is the AMQP content_type of a secure message. The original
// content type travels inside the envelope.
const ContentType = "application/vnd.warren.secure+json"

// Version is the envelope format version, the "v" field. Version 2 added
// the destination (fields "ex" and "rk").
const Version = 2

// Suite names the HPKE ciphersuite in the "enc" field: RFC 9180 base mode,
// DHKEM(P-256, HKDF-SHA256) (KEM 0x0010), HKDF-SHA256 (KDF 0x0001),
// AES-128-GCM (AEAD 0x0001).
const Suite = "hpke-base-p256-sha256-aes128gcm"

// Limits of the envelope decoder.
const (
	// DefaultMaxMessageSize bounds the encoded envelope (the AMQP body).
	DefaultMaxMessageSize = 16 << 20
	// DefaultMaxDepth bounds JSON nesting in an envelope; the format itself
	// needs 1.
	DefaultMaxDepth = 4
	maxSigSize      = 512
	maxCertSize     = 16 << 10
)

// Errors of the envelope decoder; a message rejected for them is
// dead-lettered with reason security_malformed.
var (
	ErrTooLarge  = errors.New("secure: envelope too large")
	ErrTooDeep   = errors.New("secure: envelope nested too deeply")
	ErrMalformed = errors.New("secure: malformed envelope")
)

// envelope is the JSON body of a secure message. []byte fields are
// standard base64 with padding, as encoding/json writes them.
type envelope struct {
	V      int    `json:"v"`
	Alg    string `json:"alg"`
	Signer string `json:"signer"`
	Cert   []byte `json:"cert,omitempty"`
	TS     int64  `json:"ts"`
	CT     string `json:"ct,omitempty"`
	CE     string `json:"ce,omitempty"`
	To     string `json:"to,omitempty"`
	RFP    string `json:"rfp,omitempty"`
	Enc    string `json:"enc,omitempty"`
	Ex     string `json:"ex,omitempty"` // the exchange it was published to
	RK     string `json:"rk,omitempty"` // with this routing key
	Body   []byte `json:"body"`
	Sig    []byte `json:"sig"`
}

func encodeEnvelope(e *envelope) ([]byte, error) { return json.Marshal(e) }

// decodeEnvelope parses untrusted bytes. It checks the size, then the
// nesting depth, then the fields; it never panics.
func decodeEnvelope(data []byte, maxSize, maxDepth int) (*envelope, error) {
	if maxSize <= 0 {
		maxSize = DefaultMaxMessageSize
	}
	if maxDepth <= 0 {
		maxDepth = DefaultMaxDepth
	}
	if len(data) > maxSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(data), maxSize)
	}
	if d, err := jsonDepth(data, maxDepth); err != nil {
		return nil, err
	} else if d == 0 {
		return nil, fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	var e envelope
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := e.check(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return &e, nil
}

func (e *envelope) check() error {
	switch {
	case e.V != Version:
		return fmt.Errorf("version %d, want %d", e.V, Version)
	case e.Alg != algES256 && e.Alg != algEdDSA:
		return fmt.Errorf("signature algorithm %q", e.Alg)
	case len(e.Sig) == 0:
		return errors.New("no signature")
	case len(e.Sig) > maxSigSize:
		return errors.New("signature too long")
	case len(e.Cert) > maxCertSize:
		return errors.New("certificate too long")
	case e.TS <= 0:
		return errors.New("no timestamp")
	case len(e.Ex) > 255 || len(e.RK) > 255:
		return errors.New("destination longer than an AMQP short string")
	}
	if err := checkIdentity(e.Signer); err != nil {
		return fmt.Errorf("signer: %v", err)
	}
	switch e.Enc {
	case "":
		if e.To != "" || e.RFP != "" {
			return errors.New("recipient without encryption")
		}
	case Suite:
		if err := checkIdentity(e.To); err != nil {
			return fmt.Errorf("recipient: %v", err)
		}
		if len(e.RFP) != 64 {
			return errors.New("recipient fingerprint: want 64 hex digits")
		}
	default:
		return fmt.Errorf("encryption %q, want %q", e.Enc, Suite)
	}
	return nil
}

// jsonDepth returns the maximum nesting depth of data, failing as soon as
// it exceeds limit, or when a bracket closes what was not opened. It looks
// only at brackets outside strings: the JSON decoder checks the rest.
func jsonDepth(data []byte, limit int) (int, error) {
	depth, most := 0, 0
	inString, escaped := false, false
	for _, c := range data {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
			if depth > limit {
				return 0, fmt.Errorf("%w: more than %d levels", ErrTooDeep, limit)
			}
			most = max(most, depth)
		case '}', ']':
			depth--
			if depth < 0 {
				return 0, fmt.Errorf("%w: %q closes what was not opened", ErrMalformed, c)
			}
		}
	}
	return most, nil
}

// Domain separation of the two byte strings built from a message.
const (
	labelAAD = "warren-secure-v1 aad"
	labelSig = "warren-secure-v1 sig"
	hpkeInfo = "warren-secure-v1"
)

// signedBytes is the canonical encoding that the signature covers (with
// the body) and that HPKE authenticates as associated data (without it).
// Each item is a 4-byte big-endian length and its bytes, so no two
// different messages encode alike. See docs/security.md.
func signedBytes(label string, e *envelope, msg *transport.Message, body []byte, withBody bool) ([]byte, error) {
	b := make([]byte, 0, 512+len(e.Cert)+len(body))
	add := func(s string) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	addBytes := func(p []byte) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	add(label)
	add(strconv.Itoa(e.V))
	add(e.Alg)
	add(e.Signer)
	addBytes(e.Cert)
	add(strconv.FormatInt(e.TS, 10))
	add(e.CT)
	add(e.CE)
	add(e.To)
	add(e.RFP)
	add(e.Enc)
	add(e.Ex)
	add(e.RK)
	add(msg.Type)
	add(msg.MessageID)
	add(msg.CorrelationID)
	add(msg.ReplyTo)
	add(msg.AppID) // the sender's identity
	// Not the expiration: RabbitMQ removes it from a message it
	// dead-letters, so a signed one would make every dead letter that had
	// one unreplayable. Agents act on warren-deadline, which is signed.
	add(timestampString(msg.Timestamp))
	names := make([]string, 0, 8)
	for k := range msg.Headers {
		if isSignedHeader(k) {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	add(strconv.Itoa(len(names)))
	for _, k := range names {
		v, err := headerString(msg.Headers[k])
		if err != nil {
			return nil, fmt.Errorf("header %s: %w", k, err)
		}
		add(k)
		add(v)
	}
	if withBody {
		addBytes(body)
	}
	return b, nil
}

// isSignedHeader reports whether a header is covered by the signature:
// every header of the warren- namespace.
func isSignedHeader(name string) bool {
	return strings.HasPrefix(strings.ToLower(name), "warren-")
}

// roundExpiration rounds a per-message TTL up to whole milliseconds, as it
// travels on the wire, so that signer and verifier see the same value.
func roundExpiration(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	ms := (d + time.Millisecond - 1) / time.Millisecond
	return ms * time.Millisecond
}

func timestampString(t time.Time) string {
	if t.IsZero() || t.Unix() <= 0 {
		return ""
	}
	return strconv.FormatInt(t.Unix(), 10)
}

// headerString encodes a header value with its kind, so that every integer
// type an AMQP client may send for one value encodes alike.
func headerString(v any) (string, error) {
	switch v := v.(type) {
	case nil:
		return "n", nil
	case string:
		return "s" + v, nil
	case []byte:
		return "s" + string(v), nil
	case bool:
		return "b" + strconv.FormatBool(v), nil
	case int:
		return "i" + strconv.FormatInt(int64(v), 10), nil
	case int8:
		return "i" + strconv.FormatInt(int64(v), 10), nil
	case int16:
		return "i" + strconv.FormatInt(int64(v), 10), nil
	case int32:
		return "i" + strconv.FormatInt(int64(v), 10), nil
	case int64:
		return "i" + strconv.FormatInt(v, 10), nil
	case uint8:
		return "i" + strconv.FormatUint(uint64(v), 10), nil
	case uint16:
		return "i" + strconv.FormatUint(uint64(v), 10), nil
	case uint32:
		return "i" + strconv.FormatUint(uint64(v), 10), nil
	case uint64:
		return "i" + strconv.FormatUint(v, 10), nil
	case float32:
		return floatString(float64(v)), nil
	case float64:
		return floatString(v), nil
	case time.Time:
		return "t" + strconv.FormatInt(v.Unix(), 10), nil
	}
	return "", fmt.Errorf("value of type %T cannot be signed (use a string or a number)", v)
}

func floatString(f float64) string {
	if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
		return "i" + strconv.FormatInt(int64(f), 10)
	}
	return "f" + strconv.FormatFloat(f, 'g', -1, 64)
}
