package bert

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"time"
	"unicode/utf8"
)

// Unmarshal decodes one BERT (the version byte 131 followed by exactly one
// term) within [DefaultLimits]. See the package documentation for the Go
// types it produces. Errors wrap [ErrMalformed] or [ErrLimit].
func Unmarshal(data []byte) (any, error) {
	return UnmarshalLimits(data, Limits{})
}

// UnmarshalLimits is [Unmarshal] with explicit limits; zero fields of lim
// take their defaults. Whatever the length fields in data claim, the
// memory it uses is proportional to len(data) (at most about 40 bytes per
// input byte, for a list of empty lists).
func UnmarshalLimits(data []byte, lim Limits) (any, error) {
	lim = lim.withDefaults()
	d := &decoder{data: data, lim: lim, elems: lim.MaxElements}
	if len(data) > lim.MaxSize {
		return nil, d.errLimit(0, "input is %d bytes, more than MaxSize %d", len(data), lim.MaxSize)
	}
	if len(data) == 0 {
		return nil, d.errMalformed(0, "empty input")
	}
	if data[0] != tagVersion {
		return nil, d.errMalformed(0, "version byte is %d, want 131", data[0])
	}
	d.pos = 1
	v, err := d.term(0)
	if err != nil {
		return nil, err
	}
	if d.pos != len(data) {
		return nil, d.errMalformed(d.pos, "%d trailing bytes after the term", len(data)-d.pos)
	}
	return v, nil
}

// errFormatLen bounds the text of a term quoted in an error message.
const errFormatLen = 60

type decoder struct {
	data  []byte
	pos   int
	lim   Limits
	elems int // terms that may still be decoded
}

func (d *decoder) errMalformed(off int, format string, args ...any) error {
	return &DecodeError{Offset: off, Reason: fmt.Sprintf(format, args...), Kind: ErrMalformed}
}

func (d *decoder) errLimit(off int, format string, args ...any) error {
	return &DecodeError{Offset: off, Reason: fmt.Sprintf(format, args...), Kind: ErrLimit}
}

// take returns the next n bytes, or an error naming what was being read.
func (d *decoder) take(n int, what string) ([]byte, error) {
	if n < 0 || n > len(d.data)-d.pos {
		return nil, d.errMalformed(d.pos, "truncated %s: need %d bytes, %d remain", what, n, len(d.data)-d.pos)
	}
	b := d.data[d.pos : d.pos+n]
	d.pos += n
	return b, nil
}

func (d *decoder) u8(what string) (int, error) {
	b, err := d.take(1, what)
	if err != nil {
		return 0, err
	}
	return int(b[0]), nil
}

func (d *decoder) u16(what string) (int, error) {
	b, err := d.take(2, what)
	if err != nil {
		return 0, err
	}
	return int(binary.BigEndian.Uint16(b)), nil
}

func (d *decoder) u32(what string) (int, error) {
	b, err := d.take(4, what)
	if err != nil {
		return 0, err
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(math.MaxInt) {
		return 0, d.errMalformed(d.pos-4, "%s %d does not fit in int", what, n)
	}
	return int(n), nil
}

// count checks that n more terms, each at least minBytes long, fit in the
// element budget and in the remaining input. It is called before any
// allocation sized by n.
func (d *decoder) count(off, n, minBytes int, what string) error {
	if rem := len(d.data) - d.pos; n > rem/minBytes {
		return d.errMalformed(off, "%s of %d elements cannot fit in the remaining %d bytes", what, n, rem)
	}
	if n > d.elems {
		return d.errLimit(off, "%s of %d elements exceeds MaxElements %d", what, n, d.lim.MaxElements)
	}
	return nil
}

func (d *decoder) enter(off, depth int) error {
	if depth >= d.lim.MaxDepth {
		return d.errLimit(off, "nesting deeper than MaxDepth %d", d.lim.MaxDepth)
	}
	return nil
}

// term decodes the term at d.pos. depth is the number of enclosing
// containers.
func (d *decoder) term(depth int) (any, error) {
	start := d.pos
	if d.pos >= len(d.data) {
		return nil, d.errMalformed(start, "truncated: expected a term tag, input ended")
	}
	if d.elems <= 0 {
		return nil, d.errLimit(start, "more than MaxElements %d terms", d.lim.MaxElements)
	}
	d.elems--
	tag := d.data[d.pos]
	d.pos++
	switch tag {
	case tagSmallInteger:
		return d.u8("SMALL_INTEGER_EXT")
	case tagInteger:
		b, err := d.take(4, "INTEGER_EXT")
		if err != nil {
			return nil, err
		}
		return int(int32(binary.BigEndian.Uint32(b))), nil
	case tagFloat:
		return d.floatText(start)
	case tagNewFloat:
		b, err := d.take(8, "NEW_FLOAT_EXT")
		if err != nil {
			return nil, err
		}
		f := math.Float64frombits(binary.BigEndian.Uint64(b))
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, d.errMalformed(start, "NEW_FLOAT_EXT holds %v, which is not an Erlang float", f)
		}
		return f, nil
	case tagAtom, tagAtomUTF8:
		n, err := d.u16("atom length")
		if err != nil {
			return nil, err
		}
		return d.atom(start, n, tag == tagAtomUTF8)
	case tagSmallAtom, tagSmallAtomUTF:
		n, err := d.u8("atom length")
		if err != nil {
			return nil, err
		}
		return d.atom(start, n, tag == tagSmallAtomUTF)
	case tagSmallTuple:
		n, err := d.u8("SMALL_TUPLE_EXT arity")
		if err != nil {
			return nil, err
		}
		return d.tuple(start, n, depth, false)
	case tagLargeTuple:
		n, err := d.u32("LARGE_TUPLE_EXT arity")
		if err != nil {
			return nil, err
		}
		return d.tuple(start, n, depth, false)
	case tagNil:
		return List{}, nil
	case tagString:
		n, err := d.u16("STRING_EXT length")
		if err != nil {
			return nil, err
		}
		b, err := d.take(n, "STRING_EXT")
		if err != nil {
			return nil, err
		}
		return Charlist(b), nil
	case tagList:
		n, err := d.u32("LIST_EXT length")
		if err != nil {
			return nil, err
		}
		return d.list(start, n, depth, false)
	case tagBinary:
		n, err := d.u32("BINARY_EXT length")
		if err != nil {
			return nil, err
		}
		b, err := d.take(n, "BINARY_EXT")
		if err != nil {
			return nil, err
		}
		return append([]byte{}, b...), nil
	case tagSmallBig:
		n, err := d.u8("SMALL_BIG_EXT length")
		if err != nil {
			return nil, err
		}
		return d.bignum(start, n)
	case tagLargeBig:
		n, err := d.u32("LARGE_BIG_EXT length")
		if err != nil {
			return nil, err
		}
		return d.bignum(start, n)
	case tagMap:
		n, err := d.u32("MAP_EXT arity")
		if err != nil {
			return nil, err
		}
		return d.mapExt(start, n, depth)
	}
	if name := tagName(tag); name != "" {
		return nil, d.errMalformed(start, "unsupported tag %d (%s): not a BERT term", tag, name)
	}
	return nil, d.errMalformed(start, "unknown tag %d", tag)
}

// floatText decodes the 31-byte "%.20e"-style text of FLOAT_EXT. The text
// ends at the first NUL; Erlang pads with NULs, the Ruby bert gem writes
// "%15.15e" padded with NULs.
func (d *decoder) floatText(start int) (any, error) {
	b, err := d.take(floatLen, "FLOAT_EXT")
	if err != nil {
		return nil, err
	}
	end := 0
	for end < len(b) && b[end] != 0 {
		end++
	}
	s := b[:end]
	for len(s) > 0 && s[0] == ' ' {
		s = s[1:]
	}
	for len(s) > 0 && s[len(s)-1] == ' ' {
		s = s[:len(s)-1]
	}
	ok := len(s) > 0
	for _, c := range s {
		if !('0' <= c && c <= '9' || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
			ok = false
			break
		}
	}
	if ok {
		f, err := strconv.ParseFloat(string(s), 64)
		if err == nil {
			return f, nil
		}
	}
	return nil, d.errMalformed(start, "FLOAT_EXT text %q is not a finite float", b[:end])
}

func (d *decoder) atom(start, n int, isUTF8 bool) (any, error) {
	if n > d.lim.MaxAtomLen {
		return nil, d.errLimit(start, "atom of %d bytes exceeds MaxAtomLen %d", n, d.lim.MaxAtomLen)
	}
	b, err := d.take(n, "atom")
	if err != nil {
		return nil, err
	}
	if isUTF8 && !utf8.Valid(b) {
		return nil, d.errMalformed(start, "UTF-8 atom is not valid UTF-8")
	}
	return Atom(b), nil
}

func (d *decoder) bignum(start, n int) (any, error) {
	if n > d.lim.MaxBigLen {
		return nil, d.errLimit(start, "bignum of %d bytes exceeds MaxBigLen %d", n, d.lim.MaxBigLen)
	}
	sign, err := d.u8("bignum sign")
	if err != nil {
		return nil, err
	}
	if sign > 1 {
		return nil, d.errMalformed(d.pos-1, "bignum sign byte is %d, want 0 or 1", sign)
	}
	digits, err := d.take(n, "bignum digits")
	if err != nil {
		return nil, err
	}
	top := n // ignore leading zero digits (little-endian: at the end)
	for top > 0 && digits[top-1] == 0 {
		top--
	}
	if top <= 8 {
		var u uint64
		for i := top - 1; i >= 0; i-- {
			u = u<<8 | uint64(digits[i])
		}
		if sign == 0 && u <= math.MaxInt {
			return int(u), nil
		}
		if sign == 1 && u <= math.MaxInt+1 {
			return int(-u), nil // two's complement: -u wraps correctly for MinInt
		}
	}
	be := make([]byte, top)
	for i := range top {
		be[top-1-i] = digits[i]
	}
	z := new(big.Int).SetBytes(be)
	if sign == 1 {
		z.Neg(z)
	}
	return z, nil
}

// tuple decodes the elements of a tuple of arity n. With raw set it does
// not interpret {bert, ...} complex types at this level.
func (d *decoder) tuple(start, n, depth int, raw bool) (any, error) {
	if err := d.enter(start, depth); err != nil {
		return nil, err
	}
	if err := d.count(start, n, 1, "tuple"); err != nil {
		return nil, err
	}
	t := make(Tuple, 0, n)
	for i := range n {
		v, err := d.term(depth + 1)
		if err != nil {
			return nil, err
		}
		t = append(t, v)
		if i == 0 && !raw && n >= 2 && v == Atom("bert") {
			return d.complex(start, n, depth, t)
		}
	}
	return t, nil
}

// list decodes the elements and the tail of a LIST_EXT of n elements. With
// raw set the elements must be 2-tuples, decoded as raw tuples (the entries
// of a dict).
func (d *decoder) list(start, n, depth int, pairs bool) (List, error) {
	if err := d.enter(start, depth); err != nil {
		return nil, err
	}
	if err := d.count(start, n, 1, "list"); err != nil {
		return nil, err
	}
	l := make(List, 0, n)
	for range n {
		var v any
		var err error
		if pairs {
			v, err = d.pair(depth + 1)
		} else {
			v, err = d.term(depth + 1)
		}
		if err != nil {
			return nil, err
		}
		l = append(l, v)
	}
	if d.pos >= len(d.data) {
		return nil, d.errMalformed(d.pos, "truncated: list tail missing")
	}
	if d.data[d.pos] != tagNil {
		return nil, d.errMalformed(d.pos, "improper list: tail has tag %d, want NIL_EXT (106)", d.data[d.pos])
	}
	d.pos++
	return l, nil
}

// pair decodes one {Key, Value} entry of a dict.
func (d *decoder) pair(depth int) (any, error) {
	start := d.pos
	rest := d.data[d.pos:]
	var hdr int
	switch {
	case len(rest) >= 2 && rest[0] == tagSmallTuple && rest[1] == 2:
		hdr = 2
	case len(rest) >= 5 && rest[0] == tagLargeTuple && binary.BigEndian.Uint32(rest[1:5]) == 2:
		hdr = 5
	default:
		return nil, d.errMalformed(start, "dict entry is not a {Key, Value} tuple")
	}
	if d.elems <= 0 {
		return nil, d.errLimit(start, "more than MaxElements %d terms", d.lim.MaxElements)
	}
	d.elems--
	d.pos += hdr
	return d.tuple(start, 2, depth, true)
}

func (d *decoder) mapExt(start, n, depth int) (any, error) {
	if err := d.enter(start, depth); err != nil {
		return nil, err
	}
	if n > math.MaxInt/2 {
		return nil, d.errMalformed(start, "map arity %d too large", n)
	}
	if err := d.count(start, 2*n, 1, "map"); err != nil {
		return nil, err
	}
	m := make(Map, 0, n)
	for range n {
		k, err := d.term(depth + 1)
		if err != nil {
			return nil, err
		}
		v, err := d.term(depth + 1)
		if err != nil {
			return nil, err
		}
		m = append(m, KV{Key: k, Value: v})
	}
	return m, nil
}

// complex decodes the rest of a tuple of arity n whose first element was
// the atom bert; t holds that first element.
func (d *decoder) complex(start, n, depth int, t Tuple) (any, error) {
	kind, err := d.term(depth + 1)
	if err != nil {
		return nil, err
	}
	name, _ := kind.(Atom)
	want := complexArity[name]
	if want == 0 {
		// Not a complex type this package knows: keep the plain tuple.
		t = append(t, kind)
		for range n - 2 {
			v, err := d.term(depth + 1)
			if err != nil {
				return nil, err
			}
			t = append(t, v)
		}
		return t, nil
	}
	if n != want {
		return nil, d.errMalformed(start, "{bert, %s} complex type must have %d elements, has %d", name, want, n)
	}
	switch name {
	case "nil":
		return nil, nil
	case "true":
		return true, nil
	case "false":
		return false, nil
	case "dict":
		off := d.pos
		if d.pos >= len(d.data) {
			return nil, d.errMalformed(off, "truncated: {bert, dict, ...} has no entry list")
		}
		switch d.data[d.pos] {
		case tagNil:
			d.pos++
			if d.elems <= 0 {
				return nil, d.errLimit(off, "more than MaxElements %d terms", d.lim.MaxElements)
			}
			d.elems--
			return Dict{}, nil
		case tagList:
			d.pos++
			if d.elems <= 0 {
				return nil, d.errLimit(off, "more than MaxElements %d terms", d.lim.MaxElements)
			}
			d.elems--
			n, err := d.u32("LIST_EXT length")
			if err != nil {
				return nil, err
			}
			l, err := d.list(off, n, depth+1, true)
			if err != nil {
				return nil, err
			}
			dict := make(Dict, len(l))
			for i, e := range l {
				p := e.(Tuple)
				dict[i] = KV{Key: p[0], Value: p[1]}
			}
			return dict, nil
		}
		return nil, d.errMalformed(off, "{bert, dict, ...} entries are not a list (tag %d)", d.data[d.pos])
	case "time":
		var f [3]int
		names := [3]string{"MegaSecs", "Secs", "MicroSecs"}
		for i := range f {
			off := d.pos
			v, err := d.term(depth + 1)
			if err != nil {
				return nil, err
			}
			x, ok := v.(int)
			if !ok {
				return nil, d.errMalformed(off, "{bert, time, ...} %s is %s, want an integer", names[i], FormatLimit(v, errFormatLen))
			}
			limit := 1_000_000
			if i == 0 {
				limit = math.MaxInt64/1_000_000 - 1
			}
			if x < 0 || x >= limit {
				return nil, d.errMalformed(off, "{bert, time, ...} %s is %d, out of range", names[i], x)
			}
			f[i] = x
		}
		return time.Unix(int64(f[0])*1_000_000+int64(f[1]), int64(f[2])*1000).UTC(), nil
	case "regex":
		off := d.pos
		src, err := d.term(depth + 1)
		if err != nil {
			return nil, err
		}
		b, ok := src.([]byte)
		if !ok {
			return nil, d.errMalformed(off, "{bert, regex, ...} source is %s, want a binary", FormatLimit(src, errFormatLen))
		}
		off = d.pos
		opts, err := d.term(depth + 1)
		if err != nil {
			return nil, err
		}
		l, ok := opts.(List)
		if !ok {
			return nil, d.errMalformed(off, "{bert, regex, ...} options are %s, want a list", FormatLimit(opts, errFormatLen))
		}
		return Regex{Source: string(b), Options: l}, nil
	}
	panic("bert: complexArity and complex disagree on " + string(name))
}

// complexArity is the tuple size of each complex type {bert, Name, ...}.
var complexArity = map[Atom]int{"nil": 2, "true": 2, "false": 2, "dict": 3, "time": 5, "regex": 4}
