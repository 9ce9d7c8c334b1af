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
	return FormatLimit(v, 0)
}

// FormatLimit is [Format] that stops after about max bytes and then
// ends the text with "...". It does the work for the part it shows only,
// so it suits logging untrusted terms. A max of 0 or less means no limit.
func FormatLimit(v any, max int) string {
	f := formatter{max: max}
	f.term(v, 0)
	if f.cut {
		f.b.WriteString("...")
	}
	return f.b.String()
}

type formatter struct {
	b   strings.Builder
	max int
	cut bool // output reached max
}

// ws and wb write unless the output was cut.
func (f *formatter) ws(s string) {
	if !f.cut {
		f.b.WriteString(s)
	}
}

func (f *formatter) wb(c byte) {
	if !f.cut {
		f.b.WriteByte(c)
	}
}

// full reports whether the output has reached the limit; from then on
// nothing more is written.
func (f *formatter) full() bool {
	if f.max > 0 && f.b.Len() >= f.max {
		f.cut = true
	}
	return f.cut
}

func (f *formatter) seq(open, close string, n int, elem func(i int)) {
	f.ws(open)
	for i := range n {
		if f.full() {
			return
		}
		if i > 0 {
			f.wb(',')
		}
		elem(i)
	}
	f.ws(close)
}

// term writes v. The decoded types are written directly; other Go values
// go through canon first.
func (f *formatter) term(v any, depth int) {
	if f.full() {
		return
	}
	if depth > maxCanonDepth {
		f.ws("...")
		return
	}
	switch v := v.(type) {
	case int:
		f.ws(strconv.Itoa(v))
	case *big.Int:
		if v == nil {
			f.ws("<unsupported *big.Int>")
			return
		}
		f.ws(v.String())
	case float64:
		f.ws(formatFloat(v))
	case Atom:
		formatAtom(&f.b, string(v))
	case []byte:
		f.binary(v)
	case Charlist:
		if printable(v) {
			f.wb('"')
			escaped(f, v, '"')
			f.wb('"')
			return
		}
		f.seq("[", "]", len(v), func(i int) { f.ws(strconv.Itoa(int(v[i]))) })
	case Tuple:
		f.seq("{", "}", len(v), func(i int) { f.term(v[i], depth+1) })
	case List:
		f.seq("[", "]", len(v), func(i int) { f.term(v[i], depth+1) })
	case Map:
		f.seq("#{", "}", len(v), func(i int) {
			f.term(v[i].Key, depth+1)
			f.ws(" => ")
			f.term(v[i].Value, depth+1)
		})
	case Dict:
		f.ws("{bert,dict,")
		f.seq("[", "]", len(v), func(i int) {
			f.seq("{", "}", 2, func(j int) {
				if j == 0 {
					f.term(v[i].Key, depth+3)
				} else {
					f.term(v[i].Value, depth+3)
				}
			})
		})
		f.wb('}')
	case unsupportedValue:
		f.ws("<unsupported ")
		if v.t == nil {
			f.ws("nil")
		} else {
			f.ws(v.t.String())
		}
		f.wb('>')
	default:
		f.term(canon(v, depth), depth)
	}
}

func (f *formatter) binary(v []byte) {
	if printable(v) {
		f.ws(`<<"`)
		escaped(f, v, '"')
		f.ws(`">>`)
		return
	}
	f.seq("<<", ">>", len(v), func(i int) { f.ws(strconv.Itoa(int(v[i]))) })
}

// escaped writes s with Erlang escapes for quote, backslash and control
// characters; bytes outside ASCII are written as \x{HH}.
func escaped[T ~string | ~[]byte](f *formatter, s T, quote byte) {
	for i := range len(s) {
		if i%64 == 0 && f.full() {
			return
		}
		writeEscapedByte(&f.b, s[i], quote)
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
	for i := range len(a) {
		writeEscapedByte(b, a[i], '\'')
	}
	b.WriteByte('\'')
}

// printable reports whether s is non-empty and only printable ASCII or
// common whitespace escapes.
func printable[T ~string | ~[]byte](s T) bool {
	if len(s) == 0 {
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

// writeEscapedByte writes c escaped for a text quoted with quote.
func writeEscapedByte(b *strings.Builder, c, quote byte) {
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
