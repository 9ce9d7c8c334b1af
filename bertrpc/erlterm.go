package bertrpc

import (
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/warrenrpc/warren/bert"
)

// parseErlangTerms reads a file in the syntax of Erlang's file:consult/1:
// a sequence of terms, each ending with a dot. Comments start with % and
// run to the end of the line. The result uses the bert package's Go types:
// atoms are bert.Atom, "strings" are bert.Charlist, <<"binaries">> are
// []byte, lists are bert.List and tuples bert.Tuple.
//
// Only what configuration files use is supported: atoms (plain and quoted),
// integers (with an optional Base# prefix), floats, strings, binaries of
// strings and bytes, $c character literals, lists and tuples.
func parseErlangTerms(src string) ([]any, error) {
	p := &termParser{src: src, line: 1}
	var terms []any
	for {
		p.skipSpace()
		if p.pos >= len(p.src) {
			return terms, nil
		}
		t, err := p.term(0)
		if err != nil {
			return nil, err
		}
		p.skipSpace()
		if !p.eat('.') {
			return nil, p.errorf("expected '.' after term")
		}
		terms = append(terms, t)
	}
}

type termParser struct {
	src  string
	pos  int
	line int
}

const maxTermDepth = 64

func (p *termParser) errorf(format string, args ...any) error {
	return fmt.Errorf("line %d: %s", p.line, fmt.Sprintf(format, args...))
}

func (p *termParser) skipSpace() {
	for p.pos < len(p.src) {
		c := p.src[p.pos]
		switch {
		case c == '\n':
			p.line++
			p.pos++
		case c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v':
			p.pos++
		case c == '%':
			for p.pos < len(p.src) && p.src[p.pos] != '\n' {
				p.pos++
			}
		default:
			return
		}
	}
}

func (p *termParser) peek() byte {
	if p.pos < len(p.src) {
		return p.src[p.pos]
	}
	return 0
}

func (p *termParser) eat(c byte) bool {
	if p.peek() == c {
		p.pos++
		return true
	}
	return false
}

func (p *termParser) term(depth int) (any, error) {
	if depth > maxTermDepth {
		return nil, p.errorf("terms nested deeper than %d", maxTermDepth)
	}
	p.skipSpace()
	if p.pos >= len(p.src) {
		return nil, p.errorf("unexpected end of file")
	}
	c := p.src[p.pos]
	switch {
	case c == '[':
		p.pos++
		elems, err := p.sequence(']', depth)
		if err != nil {
			return nil, err
		}
		return bert.List(elems), nil
	case c == '{':
		p.pos++
		elems, err := p.sequence('}', depth)
		if err != nil {
			return nil, err
		}
		return bert.Tuple(elems), nil
	case c == '<' && strings.HasPrefix(p.src[p.pos:], "<<"):
		p.pos += 2
		return p.binary()
	case c == '"':
		s, err := p.quoted('"')
		if err != nil {
			return nil, err
		}
		return bert.Charlist(s), nil
	case c == '\'':
		s, err := p.quoted('\'')
		if err != nil {
			return nil, err
		}
		return bert.Atom(s), nil
	case c == '$':
		p.pos++
		r, err := p.char()
		if err != nil {
			return nil, err
		}
		return int(r), nil
	case c == '-' || c == '+' || isDigit(c):
		return p.number()
	case c >= 'a' && c <= 'z':
		start := p.pos
		for p.pos < len(p.src) && isAtomChar(p.src[p.pos]) {
			p.pos++
		}
		return bert.Atom(p.src[start:p.pos]), nil
	case c >= 'A' && c <= 'Z' || c == '_':
		return nil, p.errorf("variables are not allowed in a config file")
	}
	return nil, p.errorf("unexpected character %q", c)
}

// sequence reads comma-separated terms up to the closing bracket.
func (p *termParser) sequence(closing byte, depth int) ([]any, error) {
	elems := []any{}
	p.skipSpace()
	if p.eat(closing) {
		return elems, nil
	}
	for {
		t, err := p.term(depth + 1)
		if err != nil {
			return nil, err
		}
		elems = append(elems, t)
		p.skipSpace()
		switch {
		case p.eat(','):
		case p.eat(closing):
			return elems, nil
		case closing == ']' && p.peek() == '|':
			return nil, p.errorf("improper lists are not supported")
		default:
			return nil, p.errorf("expected ',' or '%c'", closing)
		}
	}
}

func (p *termParser) binary() (any, error) {
	var out []byte
	p.skipSpace()
	if strings.HasPrefix(p.src[p.pos:], ">>") {
		p.pos += 2
		return []byte{}, nil
	}
	for {
		p.skipSpace()
		switch c := p.peek(); {
		case c == '"':
			s, err := p.quoted('"')
			if err != nil {
				return nil, err
			}
			out = append(out, s...)
		case isDigit(c) || c == '$':
			t, err := p.term(1)
			if err != nil {
				return nil, err
			}
			n, ok := t.(int)
			if !ok || n < 0 || n > 255 {
				return nil, p.errorf("binary segment must be a byte")
			}
			out = append(out, byte(n))
		default:
			return nil, p.errorf("unsupported binary segment")
		}
		p.skipSpace()
		if p.eat(',') {
			continue
		}
		if strings.HasPrefix(p.src[p.pos:], ">>") {
			p.pos += 2
			return out, nil
		}
		return nil, p.errorf("expected ',' or '>>' in binary")
	}
}

// quoted reads a string or quoted atom with Erlang's escapes.
func (p *termParser) quoted(q byte) (string, error) {
	p.pos++ // opening quote
	var b strings.Builder
	for {
		if p.pos >= len(p.src) {
			return "", p.errorf("unterminated %c", q)
		}
		c := p.src[p.pos]
		switch c {
		case q:
			p.pos++
			return b.String(), nil
		case '\\':
			p.pos++
			r, err := p.escape()
			if err != nil {
				return "", err
			}
			b.WriteRune(r)
		default:
			if c == '\n' {
				p.line++
			}
			r, size := utf8.DecodeRuneInString(p.src[p.pos:])
			b.WriteRune(r)
			p.pos += size
		}
	}
}

// char reads the character after $.
func (p *termParser) char() (rune, error) {
	if p.pos >= len(p.src) {
		return 0, p.errorf("unexpected end of file after $")
	}
	if p.src[p.pos] == '\\' {
		p.pos++
		return p.escape()
	}
	r, size := utf8.DecodeRuneInString(p.src[p.pos:])
	p.pos += size
	return r, nil
}

func (p *termParser) escape() (rune, error) {
	if p.pos >= len(p.src) {
		return 0, p.errorf("unterminated escape")
	}
	c := p.src[p.pos]
	p.pos++
	switch c {
	case 'n':
		return '\n', nil
	case 't':
		return '\t', nil
	case 'r':
		return '\r', nil
	case 's':
		return ' ', nil
	case 'e':
		return 27, nil
	case 'd':
		return 127, nil
	case 'b':
		return '\b', nil
	case 'f':
		return '\f', nil
	case 'v':
		return '\v', nil
	case '0', '1', '2', '3', '4', '5', '6', '7':
		n := int(c - '0')
		for i := 0; i < 2 && p.pos < len(p.src) && p.src[p.pos] >= '0' && p.src[p.pos] <= '7'; i++ {
			n = n*8 + int(p.src[p.pos]-'0')
			p.pos++
		}
		return rune(n), nil
	case 'x':
		end := p.pos
		if p.peek() == '{' {
			end = strings.IndexByte(p.src[p.pos:], '}')
			if end < 0 {
				return 0, p.errorf("unterminated \\x{...}")
			}
			hex := p.src[p.pos+1 : p.pos+end]
			p.pos += end + 1
			n, err := strconv.ParseUint(hex, 16, 32)
			if err != nil {
				return 0, p.errorf("bad \\x escape")
			}
			return rune(n), nil
		}
		for end < len(p.src) && end-p.pos < 2 && isHex(p.src[end]) {
			end++
		}
		n, err := strconv.ParseUint(p.src[p.pos:end], 16, 8)
		if err != nil {
			return 0, p.errorf("bad \\x escape")
		}
		p.pos = end
		return rune(n), nil
	}
	r, size := utf8.DecodeRuneInString(p.src[p.pos-1:])
	p.pos += size - 1
	return r, nil
}

func (p *termParser) number() (any, error) {
	start := p.pos
	if c := p.peek(); c == '-' || c == '+' {
		p.pos++
	}
	for p.pos < len(p.src) && (isDigit(p.src[p.pos]) || p.src[p.pos] == '_') {
		p.pos++
	}
	digits := strings.ReplaceAll(p.src[start:p.pos], "_", "")
	if digits == "" || digits == "-" || digits == "+" {
		return nil, p.errorf("bad number")
	}
	// Base#Digits
	if p.peek() == '#' {
		p.pos++
		base, err := strconv.Atoi(strings.TrimLeft(digits, "+-"))
		if err != nil || base < 2 || base > 36 {
			return nil, p.errorf("bad number base")
		}
		ds := p.pos
		for p.pos < len(p.src) && (isDigit(p.src[p.pos]) || isAlpha(p.src[p.pos])) {
			p.pos++
		}
		n, ok := new(big.Int).SetString(p.src[ds:p.pos], base)
		if !ok {
			return nil, p.errorf("bad base-%d number", base)
		}
		if strings.HasPrefix(digits, "-") {
			n.Neg(n)
		}
		return intOrBig(n), nil
	}
	// Float: Digits.Digits[e[+-]Digits]
	if p.peek() == '.' && p.pos+1 < len(p.src) && isDigit(p.src[p.pos+1]) {
		p.pos++
		for p.pos < len(p.src) && isDigit(p.src[p.pos]) {
			p.pos++
		}
		if c := p.peek(); c == 'e' || c == 'E' {
			p.pos++
			if c := p.peek(); c == '-' || c == '+' {
				p.pos++
			}
			for p.pos < len(p.src) && isDigit(p.src[p.pos]) {
				p.pos++
			}
		}
		f, err := strconv.ParseFloat(p.src[start:p.pos], 64)
		if err != nil {
			return nil, p.errorf("bad float %q", p.src[start:p.pos])
		}
		return f, nil
	}
	n, ok := new(big.Int).SetString(digits, 10)
	if !ok {
		return nil, p.errorf("bad integer %q", digits)
	}
	return intOrBig(n), nil
}

func intOrBig(n *big.Int) any {
	if n.IsInt64() {
		return int(n.Int64())
	}
	return n
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isHex(c byte) bool {
	return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}
func isAtomChar(c byte) bool { return isAlpha(c) || isDigit(c) || c == '_' || c == '@' }
