package bertrpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/warrenrpc/warren/bert"
)

// Fabric dispatches a request to Warren services: path is "/module/function",
// payload the JSON arguments, selector the config entry's selector ("" for
// the mapper's default). It returns the JSON result.
//
// An error that implements interface{ RemoteCode() string } is a handler
// failure on the remote side: the client receives
// {error, {user, 0, RemoteCode, Message, []}}. A context deadline becomes a
// server TimeoutError, any other error a proxy error.
type Fabric interface {
	Call(ctx context.Context, path string, payload []byte, selector string) ([]byte, error)
}

// ErrNoFabric is returned by [New] when the config has fabric modules but no
// [Fabric] was given with [WithFabric].
var ErrNoFabric = errors.New("bertrpc: fabric modules need a Fabric (warren bert: --broker)")

// ErrMapping is wrapped by errors converting between BERT and JSON.
var ErrMapping = errors.New("bertrpc: cannot map between BERT and JSON")

// ArgsToJSON maps a call's argument list to the JSON payload of a fabric
// request: a single argument is sent as itself, any other count as a JSON
// array. See [TermToJSON] for the term mapping.
func ArgsToJSON(args bert.List) ([]byte, error) {
	var v any = args
	if len(args) == 1 {
		v = args[0]
	}
	var buf bytes.Buffer
	if err := appendJSON(&buf, v, 0); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// TermToJSON maps a BERT term to JSON:
//
//	integer, bignum, float        → number
//	binary (valid UTF-8), string  → string (other binaries: error)
//	atom                          → string, except the atoms true and false
//	{bert,true}, {bert,false}     → true, false
//	{bert,nil}                    → null
//	list, tuple                   → array
//	{bert, dict, ...}, map        → object (keys: binaries, atoms, strings or integers)
//	{bert, time, ...}             → RFC 3339 string
//	{bert, regex, ...}            → error
func TermToJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	if err := appendJSON(&buf, v, 0); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

const maxJSONDepth = 64

// MaxIntDigits bounds the decimal digits of an integer mapped between BERT
// and JSON, in a fabric call's arguments and in its reply. Converting an
// integer between binary and decimal costs time quadratic in its length
// (a 5-million-digit integer in a reply took 41 s of CPU); up to this
// bound the cost per digit stays within a few times that of a small
// integer. 4300 is the bound Python (3.11 on) sets for the same reason; it
// is about 1786 bytes of BERT bignum (2^14284 has 4300 digits).
const MaxIntDigits = 4300

// maxIntBits is the bit length over which an integer surely has more than
// MaxIntDigits digits (2^14285, of 14286 bits, has 4301): such integers
// are refused without being converted.
const maxIntBits = 14285

// errIntTooLong reports an integer over MaxIntDigits; digits < 0: too long
// to count.
func errIntTooLong(digits int) error {
	if digits < 0 {
		return fmt.Errorf("%w: integer has more than %d decimal digits (the limit for integers in fabric calls)", ErrMapping, MaxIntDigits)
	}
	return fmt.Errorf("%w: integer of %d decimal digits exceeds the limit of %d for integers in fabric calls", ErrMapping, digits, MaxIntDigits)
}

func appendJSON(buf *bytes.Buffer, v any, depth int) error {
	if depth > maxJSONDepth {
		return fmt.Errorf("%w: nested deeper than %d", ErrMapping, maxJSONDepth)
	}
	switch t := v.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		buf.WriteString(strconv.FormatBool(t))
	case int:
		buf.WriteString(strconv.Itoa(t))
	case *big.Int:
		// Decimal conversion is quadratic in the length: bound it before
		// converting (a 16 MiB frame of 4 KiB bignums took 1.3 s).
		if t.BitLen() > maxIntBits {
			return errIntTooLong(-1)
		}
		d := t.Append(buf.AvailableBuffer(), 10) // no string to allocate
		if n := len(bytes.TrimPrefix(d, []byte("-"))); n > MaxIntDigits {
			return errIntTooLong(n)
		}
		buf.Write(d)
	case float64:
		if math.IsInf(t, 0) || math.IsNaN(t) {
			return fmt.Errorf("%w: float %v", ErrMapping, t)
		}
		buf.WriteString(strconv.FormatFloat(t, 'g', -1, 64))
	case []byte:
		if !utf8.Valid(t) {
			return fmt.Errorf("%w: binary is not valid UTF-8", ErrMapping)
		}
		writeJSONString(buf, string(t))
	case bert.Charlist:
		writeJSONString(buf, string(t))
	case string:
		writeJSONString(buf, t)
	case bert.Atom:
		if t == "true" || t == "false" { // Erlang's booleans are bare atoms
			buf.WriteString(string(t))
			break
		}
		writeJSONString(buf, string(t))
	case bert.List:
		return appendJSONArray(buf, t, depth)
	case bert.Tuple:
		return appendJSONArray(buf, t, depth)
	case bert.Dict:
		return appendJSONObject(buf, t, depth)
	case bert.Map:
		return appendJSONObject(buf, t, depth)
	case time.Time:
		writeJSONString(buf, t.UTC().Format(time.RFC3339Nano))
	default:
		return fmt.Errorf("%w: %s has no JSON form", ErrMapping, bert.Format(v))
	}
	return nil
}

func appendJSONArray(buf *bytes.Buffer, l []any, depth int) error {
	buf.WriteByte('[')
	for i, e := range l {
		if i > 0 {
			buf.WriteByte(',')
		}
		if err := appendJSON(buf, e, depth+1); err != nil {
			return err
		}
	}
	buf.WriteByte(']')
	return nil
}

func appendJSONObject(buf *bytes.Buffer, kvs []bert.KV, depth int) error {
	buf.WriteByte('{')
	for i, kv := range kvs {
		if i > 0 {
			buf.WriteByte(',')
		}
		var key string
		switch k := kv.Key.(type) {
		case []byte:
			if !utf8.Valid(k) {
				return fmt.Errorf("%w: dict key is not valid UTF-8", ErrMapping)
			}
			key = string(k)
		case bert.Atom:
			key = string(k)
		case bert.Charlist:
			key = string(k)
		case string:
			key = k
		case int:
			key = strconv.Itoa(k)
		default:
			return fmt.Errorf("%w: dict key %s is not a string", ErrMapping, bert.Format(kv.Key))
		}
		writeJSONString(buf, key)
		buf.WriteByte(':')
		if err := appendJSON(buf, kv.Value, depth+1); err != nil {
			return err
		}
	}
	buf.WriteByte('}')
	return nil
}

func writeJSONString(buf *bytes.Buffer, s string) {
	b, _ := json.Marshal(s) // cannot fail for a string
	buf.Write(b)
}

// JSONToTerm maps a fabric reply to a BERT term:
//
//	object → {bert, dict, [{<<"key">>, Value}, ...]} (binary keys, order kept)
//	array  → list
//	string → binary
//	number → integer when it has no fraction or exponent (bignum when large), else float
//	true/false/null → {bert, true}/{bert, false}/{bert, nil}
func JSONToTerm(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := decodeJSONValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data after JSON value", ErrMapping)
	}
	return v, nil
}

func decodeJSONValue(dec *json.Decoder, depth int) (any, error) {
	if depth > maxJSONDepth {
		return nil, fmt.Errorf("%w: JSON nested deeper than %d", ErrMapping, maxJSONDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMapping, err)
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '[':
			l := bert.List{}
			for dec.More() {
				e, err := decodeJSONValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				l = append(l, e)
			}
			if _, err := dec.Token(); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrMapping, err)
			}
			return l, nil
		case '{':
			d := bert.Dict{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, fmt.Errorf("%w: %v", ErrMapping, err)
				}
				k, _ := kt.(string)
				v, err := decodeJSONValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				d = append(d, bert.KV{Key: []byte(k), Value: v})
			}
			if _, err := dec.Token(); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrMapping, err)
			}
			return d, nil
		}
		return nil, fmt.Errorf("%w: unexpected %v", ErrMapping, t)
	case string:
		return []byte(t), nil
	case json.Number:
		return jsonNumber(t)
	case bool:
		return t, nil
	case nil:
		return nil, nil
	}
	return nil, fmt.Errorf("%w: unexpected token %v", ErrMapping, tok)
}

func jsonNumber(n json.Number) (any, error) {
	s := n.String()
	if !strings.ContainsAny(s, ".eE") {
		if d := len(strings.TrimPrefix(s, "-")); d > MaxIntDigits {
			// big.Int.SetString is quadratic: 5 million digits took 41 s.
			return nil, errIntTooLong(d)
		}
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return int(i), nil
		}
		if b, ok := new(big.Int).SetString(s, 10); ok {
			return b, nil
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: number %s: %v", ErrMapping, s, err)
	}
	return f, nil
}

// fabricCall runs module:function through the fabric and returns the reply
// term ({reply, R}) or an *Error.
func fabricCall(ctx context.Context, f Fabric, module, function, selector string, args bert.List) (any, *Error) {
	payload, err := ArgsToJSON(args)
	if err != nil {
		return nil, serverErr(CodeUndesignated, "MappingError", "%s:%s arguments: %v", module, function, err)
	}
	res, err := f.Call(ctx, "/"+module+"/"+function, payload, selector)
	if err != nil {
		var rc interface{ RemoteCode() string }
		switch {
		case errors.As(err, &rc):
			return nil, &Error{Type: UserError, Code: CodeUndesignated, Class: rc.RemoteCode(), Detail: err.Error()}
		case errors.Is(err, context.DeadlineExceeded):
			return nil, serverErr(CodeUndesignated, "TimeoutError", "%s:%s: %v", module, function, err)
		default:
			return nil, &Error{Type: ProxyError, Code: CodeUndesignated, Class: "ProxyError", Detail: err.Error()}
		}
	}
	term, err := JSONToTerm(res)
	if err != nil {
		return nil, serverErr(CodeUndesignated, "MappingError", "%s:%s reply: %v", module, function, err)
	}
	return term, nil
}
