package bert

import (
	"math/big"
	"strconv"
	"strings"
)

// Format renders v in Erlang's text syntax, for logs and error messages:
// {call,mod,fn,[1,<<"x">>]}. Go conveniences are shown as the terms they
// encode to (nil as {bert,nil}, a Dict as {bert,dict,[...]}); values that
// Marshal cannot encode are shown as <unsupported TYPE>.
func Format(v any) string {
	var b strings.Builder
	format(&b, canon(v, 0))
	return b.String()
}

func format(b *strings.Builder, v any) {
	switch v := v.(type) {
	case int:
		b.WriteString(strconv.Itoa(v))
	case *big.Int:
		b.WriteString(v.String())
	case float64:
		b.WriteString(formatFloat(v))
	case Atom:
		formatAtom(b, string(v))
	case []byte:
		formatBinary(b, v)
	case Charlist:
		if printable(string(v)) {
			b.WriteByte('"')
			writeEscaped(b, string(v), '"')
			b.WriteByte('"')
			return
		}
		b.WriteByte('[')
		for i := range len(v) {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.Itoa(int(v[i])))
		}
		b.WriteByte(']')
	case Tuple:
		b.WriteByte('{')
		for i, e := range v {
			if i > 0 {
				b.WriteByte(',')
			}
			format(b, e)
		}
		b.WriteByte('}')
	case List:
		b.WriteByte('[')
		for i, e := range v {
			if i > 0 {
				b.WriteByte(',')
			}
			format(b, e)
		}
		b.WriteByte(']')
	case Map:
		b.WriteString("#{")
		for i, kv := range v {
			if i > 0 {
				b.WriteByte(',')
			}
			format(b, kv.Key)
			b.WriteString(" => ")
			format(b, kv.Value)
		}
		b.WriteByte('}')
	case unsupportedValue:
		b.WriteString("<unsupported ")
		if v.t == nil {
			b.WriteString("nil")
		} else {
			b.WriteString(v.t.String())
		}
		b.WriteByte('>')
	}
}

// formatFloat writes the shortest text that reads back as f, in Erlang's
// style: 1.0, 0.1, 1.0e20, -2.5e-7.
func formatFloat(f float64) string {
	s := strconv.FormatFloat(f, 'g', -1, 64)
	mant, exp, hasExp := strings.Cut(s, "e")
	if !strings.ContainsAny(mant, ".NI") { // NaN and Inf never reach Marshal, but Format must not lie
		mant += ".0"
	}
	if !hasExp {
		return mant
	}
	neg := strings.HasPrefix(exp, "-")
	exp = strings.TrimLeft(exp, "+-0")
	if neg {
		exp = "-" + exp
	}
	return mant + "e" + exp
}

var reserved = map[string]bool{
	"after": true, "and": true, "andalso": true, "band": true, "begin": true, "bnot": true,
	"bor": true, "bsl": true, "bsr": true, "bxor": true, "case": true, "catch": true,
	"cond": true, "div": true, "else": true, "end": true, "fun": true, "if": true, "let": true,
	"maybe": true, "not": true, "of": true, "or": true, "orelse": true, "receive": true,
	"rem": true, "try": true, "when": true, "xor": true,
}

func formatAtom(b *strings.Builder, a string) {
	bare := a != "" && 'a' <= a[0] && a[0] <= 'z' && !reserved[a]
	for i := 0; bare && i < len(a); i++ {
		c := a[i]
		bare = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '@'
	}
	if bare {
		b.WriteString(a)
		return
	}
	b.WriteByte('\'')
	writeEscaped(b, a, '\'')
	b.WriteByte('\'')
}

func formatBinary(b *strings.Builder, v []byte) {
	b.WriteString("<<")
	if len(v) > 0 && printable(string(v)) {
		b.WriteByte('"')
		writeEscaped(b, string(v), '"')
		b.WriteByte('"')
	} else {
		for i, c := range v {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.Itoa(int(c)))
		}
	}
	b.WriteString(">>")
}

// printable reports whether s is non-empty and only printable ASCII or
// common whitespace escapes.
func printable(s string) bool {
	if s == "" {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if (c < 0x20 || c > 0x7e) && c != '\n' && c != '\t' && c != '\r' {
			return false
		}
	}
	return true
}

// writeEscaped writes s with Erlang escapes for quote, backslash and
// control characters; bytes outside ASCII are written as \xHH.
func writeEscaped(b *strings.Builder, s string, quote byte) {
	for i := range len(s) {
		c := s[i]
		switch {
		case c == quote || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\t':
			b.WriteString(`\t`)
		case c == '\r':
			b.WriteString(`\r`)
		case c < 0x20 || c > 0x7e:
			b.WriteString(`\x{`)
			b.WriteString(strconv.FormatUint(uint64(c), 16))
			b.WriteByte('}')
		default:
			b.WriteByte(c)
		}
	}
}
