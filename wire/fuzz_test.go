package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// jsonNesting is the nesting depth of valid JSON, by the standard decoder.
func jsonNesting(t *testing.T, b []byte) int {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // valid JSON numbers can overflow float64
	depth, most := 0, 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return most
		}
		if err != nil {
			t.Fatalf("valid JSON %q: %v", b, err)
		}
		switch tok {
		case json.Delim('['), json.Delim('{'):
			depth++
			most = max(most, depth)
		case json.Delim(']'), json.Delim('}'):
			depth--
		}
	}
}

// FuzzCheckDepth: CheckDepth never panics, fails only with its own errors,
// and on valid JSON agrees with the standard decoder's nesting.
func FuzzCheckDepth(f *testing.F) {
	for _, s := range []string{`1`, `[1,[2]]`, `{"a":{"b":[]}}`, `"[[["`, `["\"[", [1]]`, `]`, `]]][[[[1]]]]`, `{"a":1}}`, `[[[`, "\"\\\\\"[", ""} {
		f.Add([]byte(s), 2)
	}
	f.Fuzz(func(t *testing.T, b []byte, limit int) {
		limit = min(max(limit, 0), 100)
		err := CheckDepth(b, limit)
		deep, unbalanced := errors.Is(err, ErrTooDeep), errors.Is(err, ErrUnbalanced)
		if err != nil && !deep && !unbalanced {
			t.Fatalf("CheckDepth(%q, %d): %v wraps neither ErrTooDeep nor ErrUnbalanced", b, limit, err)
		}
		if !json.Valid(b) {
			return
		}
		if unbalanced {
			t.Fatalf("valid JSON %q called unbalanced", b)
		}
		if n := jsonNesting(t, b); deep != (n > limit) {
			t.Fatalf("CheckDepth(%q, %d) = %v, but it nests %d deep", b, limit, err, n)
		}
	})
}

// FuzzHeaders: the readers of untrusted header values (String, Int,
// Deadline, CheckPath) never panic and agree with each other, whatever
// type an AMQP client sent.
func FuzzHeaders(f *testing.F) {
	f.Add(byte(0), int64(1700000000000), 0.0, "/a/b")
	f.Add(byte(8), int64(0), 1.7e12, "")
	f.Add(byte(8), int64(0), math.NaN(), "/a b/c")
	f.Add(byte(9), int64(-1), math.Inf(1), "//b")
	f.Add(byte(13), int64(math.MaxInt64), -1.5, "/a/b/c")
	f.Fuzz(func(t *testing.T, kind byte, i int64, fl float64, s string) {
		values := []any{int64(i), int32(i), int(i), int16(i), int8(i), uint8(i), uint16(i), uint32(i),
			fl, s, []byte(s), i%2 == 0, nil, uint64(i), float32(fl)}
		v := values[int(kind)%len(values)]
		h := map[string]any{HeaderDeadline: v, HeaderPath: v}

		str := String(h, HeaderPath)
		switch v := v.(type) {
		case string:
			if str != v {
				t.Fatalf("String(%q) = %q", v, str)
			}
		case []byte:
			if str != string(v) {
				t.Fatalf("String(%q) = %q", v, str)
			}
		default:
			if str != "" {
				t.Fatalf("String(%T) = %q", v, str)
			}
		}

		n, ok := Int(h, HeaderDeadline)
		switch v := v.(type) {
		case int64, int32, int, int16, int8, uint8, uint16, uint32:
			if want := intOf(v); !ok || n != want {
				t.Fatalf("Int(%T %v) = %d %v", v, v, n, ok)
			}
		case float64:
			if !ok {
				t.Fatalf("Int(float64 %v) not ok", v)
			}
			if v > math.MinInt64 && v < math.MaxInt64 && n != int64(v) {
				t.Fatalf("Int(%v) = %d", v, n)
			}
		default:
			if ok {
				t.Fatalf("Int(%T) = %d, ok", v, n)
			}
		}

		dl, dok := Deadline(h)
		if dok != (ok && n > 0) {
			t.Fatalf("Deadline(%T %v) ok = %v, Int = %d %v", v, v, dok, n, ok)
		}
		if dok && dl.UnixMilli() != n {
			t.Fatalf("Deadline(%d) = %v", n, dl)
		}

		if err := CheckPath(s); err == nil {
			parts := strings.Split(s, "/")
			if len(parts) != 3 || parts[0] != "" || parts[1] == "" || parts[2] == "" || strings.ContainsAny(s, " \t\r\n") ||
				!utf8.ValidString(s) || strings.ContainsFunc(s, unicode.IsControl) {
				t.Fatalf("CheckPath accepted %q", s)
			}
		} else if !errors.Is(err, ErrInvalidPath) {
			t.Fatalf("CheckPath(%q): %v", s, err)
		}
	})
}

func intOf(v any) int64 {
	switch v := v.(type) {
	case int64:
		return v
	case int32:
		return int64(v)
	case int:
		return int64(v)
	case int16:
		return int64(v)
	case int8:
		return int64(v)
	case uint8:
		return int64(v)
	case uint16:
		return int64(v)
	case uint32:
		return int64(v)
	}
	panic("not an integer")
}
