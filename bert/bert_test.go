package bert

import (
	"bytes"
	"errors"
	"math"
	"math/big"
	"runtime"
	"strings"
	"testing"
	"time"
)

// term builds a BERT from tag bytes: 131 followed by parts.
func term(parts ...any) []byte {
	out := []byte{tagVersion}
	for _, p := range parts {
		switch p := p.(type) {
		case int:
			out = append(out, byte(p))
		case string:
			out = append(out, p...)
		case []byte:
			out = append(out, p...)
		default:
			panic("term: bad part")
		}
	}
	return out
}

func floatText(s string) string {
	return s + strings.Repeat("\x00", floatLen-len(s))
}

var atomBert = "d\x00\x04bert"

// decodeCases cover every tag Unmarshal accepts, with the exact Go value
// (types included) it must produce.
var decodeCases = []struct {
	name string
	in   []byte
	want any
}{
	{"SMALL_INTEGER_EXT 0", term(97, 0), 0},
	{"SMALL_INTEGER_EXT 255", term(97, 255), 255},
	{"INTEGER_EXT -1", term(98, "\xff\xff\xff\xff"), -1},
	{"INTEGER_EXT max", term(98, "\x7f\xff\xff\xff"), math.MaxInt32},
	{"INTEGER_EXT min", term(98, "\x80\x00\x00\x00"), math.MinInt32},
	{"INTEGER_EXT small value", term(98, "\x00\x00\x00\x05"), 5},
	{"FLOAT_EXT Erlang", term(99, floatText("1.00000000000000000000e+00")), 1.0},
	{"FLOAT_EXT Ruby", term(99, floatText("-2.500000000000000e-01")), -0.25},
	{"FLOAT_EXT short", term(99, floatText("3.5")), 3.5},
	{"FLOAT_EXT padded with spaces", term(99, floatText(" 7.0e1 ")), 70.0},
	{"NEW_FLOAT_EXT", term(70, "\x3f\xf8\x00\x00\x00\x00\x00\x00"), 1.5},
	{"NEW_FLOAT_EXT negative zero", term(70, "\x80\x00\x00\x00\x00\x00\x00\x00"), math.Copysign(0, -1)},
	{"ATOM_EXT", term(100, 0, 3, "foo"), Atom("foo")},
	{"ATOM_EXT empty", term(100, 0, 0), Atom("")},
	{"SMALL_ATOM_EXT", term(115, 3, "foo"), Atom("foo")},
	{"ATOM_UTF8_EXT", term(118, 0, 6, "日本"), Atom("日本")},
	{"SMALL_ATOM_UTF8_EXT", term(119, 6, "日本"), Atom("日本")},
	{"SMALL_TUPLE_EXT empty", term(104, 0), Tuple{}},
	{"SMALL_TUPLE_EXT", term(104, 2, 97, 1, 100, 0, 1, "a"), Tuple{1, Atom("a")}},
	{"LARGE_TUPLE_EXT", term(105, "\x00\x00\x00\x02", 97, 1, 97, 2), Tuple{1, 2}},
	{"NIL_EXT", term(106), List{}},
	{"STRING_EXT", term(107, 0, 3, "abc"), Charlist("abc")},
	{"STRING_EXT empty", term(107, 0, 0), Charlist("")},
	{"LIST_EXT", term(108, "\x00\x00\x00\x02", 97, 1, 106, 106), List{1, List{}}},
	{"LIST_EXT empty", term(108, "\x00\x00\x00\x00", 106), List{}},
	{"BINARY_EXT", term(109, "\x00\x00\x00\x02", "hi"), []byte("hi")},
	{"BINARY_EXT empty", term(109, "\x00\x00\x00\x00"), []byte{}},
	{"SMALL_BIG_EXT positive", term(110, 4, 0, "\x00\x00\x00\x80"), 1 << 31},
	{"SMALL_BIG_EXT negative", term(110, 4, 1, "\x01\x00\x00\x80"), -(1 << 31) - 1},
	{"SMALL_BIG_EXT max int64", term(110, 8, 0, "\xff\xff\xff\xff\xff\xff\xff\x7f"), math.MaxInt64},
	{"SMALL_BIG_EXT min int64", term(110, 8, 1, "\x00\x00\x00\x00\x00\x00\x00\x80"), math.MinInt64},
	{"SMALL_BIG_EXT 2^63", term(110, 8, 0, "\x00\x00\x00\x00\x00\x00\x00\x80"), new(big.Int).Lsh(big.NewInt(1), 63)},
	{"SMALL_BIG_EXT -2^63-1", term(110, 8, 1, "\x01\x00\x00\x00\x00\x00\x00\x80"), new(big.Int).Neg(new(big.Int).Add(new(big.Int).Lsh(big.NewInt(1), 63), big.NewInt(1)))},
	{"SMALL_BIG_EXT 2^64", term(110, 9, 0, "\x00\x00\x00\x00\x00\x00\x00\x00\x01"), new(big.Int).Lsh(big.NewInt(1), 64)},
	{"SMALL_BIG_EXT leading zero digits", term(110, 10, 0, "\x05\x00\x00\x00\x00\x00\x00\x00\x00\x00"), 5},
	{"SMALL_BIG_EXT zero length", term(110, 0, 0), 0},
	{"SMALL_BIG_EXT negative zero", term(110, 1, 1, 0), 0},
	{"LARGE_BIG_EXT", term(111, "\x00\x00\x00\x01", 1, 7), -7},
	{"MAP_EXT", term(116, "\x00\x00\x00\x02", 100, 0, 1, "a", 97, 1, 109, "\x00\x00\x00\x00", 106), Map{{Atom("a"), 1}, {[]byte{}, List{}}}},
	{"MAP_EXT empty", term(116, "\x00\x00\x00\x00"), Map{}},
	{"{bert, nil}", term(104, 2, atomBert, 100, 0, 3, "nil"), nil},
	{"{bert, true}", term(104, 2, atomBert, 100, 0, 4, "true"), true},
	{"{bert, false}", term(104, 2, atomBert, 100, 0, 5, "false"), false},
	{"{bert, true} with UTF-8 atoms", term(104, 2, 119, 4, "bert", 119, 4, "true"), true},
	{"{bert, dict, []}", term(104, 3, atomBert, 100, 0, 4, "dict", 106), Dict{}},
	{"{bert, dict, [{a, 1}]}", term(104, 3, atomBert, 100, 0, 4, "dict", 108, "\x00\x00\x00\x01", 104, 2, 100, 0, 1, "a", 97, 1, 106), Dict{{Atom("a"), 1}}},
	{"{bert, dict, [{a, 1}]} large tuple pair", term(104, 3, atomBert, 100, 0, 4, "dict", 108, "\x00\x00\x00\x01", 105, "\x00\x00\x00\x02", 100, 0, 1, "a", 97, 1, 106), Dict{{Atom("a"), 1}}},
	{"{bert, dict, [{bert, nil}]} keeps the pair", term(104, 3, atomBert, 100, 0, 4, "dict", 108, "\x00\x00\x00\x01", 104, 2, atomBert, 100, 0, 3, "nil", 106), Dict{{Atom("bert"), Atom("nil")}}},
	{"{bert, time, 1255, 295581, 446228}", term(104, 5, atomBert, 100, 0, 4, "time", 98, "\x00\x00\x04\xe7", 98, "\x00\x04\x82\x9d", 98, "\x00\x06\xcf\x14"), time.Unix(1255295581, 446228000).UTC()},
	{"{bert, regex, <<\"a\">>, [caseless]}", term(104, 4, atomBert, 100, 0, 5, "regex", 109, "\x00\x00\x00\x01", "a", 108, "\x00\x00\x00\x01", 100, 0, 8, "caseless", 106), Regex{Source: "a", Options: List{Atom("caseless")}}},
	{"{bert, regex, <<>>, []}", term(104, 4, atomBert, 100, 0, 5, "regex", 109, "\x00\x00\x00\x00", 106), Regex{Source: "", Options: List{}}},
	{"{bert, other} stays a tuple", term(104, 2, atomBert, 100, 0, 5, "other"), Tuple{Atom("bert"), Atom("other")}},
	{"{bert, 1, 2} stays a tuple", term(104, 3, atomBert, 97, 1, 97, 2), Tuple{Atom("bert"), 1, 2}},
	{"{bert} stays a tuple", term(104, 1, atomBert), Tuple{Atom("bert")}},
	{"nested complex", term(108, "\x00\x00\x00\x02", 104, 2, atomBert, 100, 0, 3, "nil", 104, 2, atomBert, 100, 0, 4, "true", 106), List{nil, true}},
}

func TestUnmarshal(t *testing.T) {
	for _, c := range decodeCases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Unmarshal(c.in)
			if err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			if !sameTerm(got, c.want) {
				t.Fatalf("got %s (%T), want %s (%T)", Format(got), got, Format(c.want), c.want)
			}
			if f, ok := c.want.(float64); ok && math.Signbit(f) != math.Signbit(got.(float64)) {
				t.Fatalf("sign of %v lost", f)
			}
		})
	}
}

// TestUnmarshalCopies checks that decoded binaries do not alias the input.
func TestUnmarshalCopies(t *testing.T) {
	in := term(109, "\x00\x00\x00\x02", "hi")
	v, err := Unmarshal(in)
	if err != nil {
		t.Fatal(err)
	}
	in[len(in)-1] = 'X'
	if string(v.([]byte)) != "hi" {
		t.Fatalf("decoded binary changed with the input: %q", v)
	}
}

func TestTruncatedAtEveryByte(t *testing.T) {
	for _, c := range decodeCases {
		for i := range len(c.in) {
			_, err := Unmarshal(c.in[:i])
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("%s cut at %d of %d: err = %v, want ErrMalformed", c.name, i, len(c.in), err)
			}
		}
		_, err := Unmarshal(append(append([]byte{}, c.in...), 0))
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "trailing") {
			t.Errorf("%s with a trailing byte: err = %v, want trailing bytes", c.name, err)
		}
	}
}

func TestUnmarshalMalformed(t *testing.T) {
	cases := []struct {
		name   string
		in     []byte
		reason string // substring of the error
	}{
		{"empty", nil, "empty input"},
		{"bad version", []byte{130, 97, 1}, "version byte is 130"},
		{"compressed", term(80, "\x00\x00\x00\x01", "x"), "compressed"},
		{"unknown tag", term(1), "unknown tag 1"},
		{"pid", term(103, 100, 0, 0), "PID_EXT"},
		{"fun", term(117), "FUN_EXT"},
		{"bitstring", term(77, "\x00\x00\x00\x01", 3, 0), "BIT_BINARY_EXT"},
		{"float garbage", term(99, floatText("1.0zz")), "not a finite float"},
		{"float empty", term(99, floatText("")), "not a finite float"},
		{"float inf text", term(99, floatText("inf")), "not a finite float"},
		{"float hex", term(99, floatText("0x1p3")), "not a finite float"},
		{"float out of range", term(99, floatText("1e999")), "not a finite float"},
		{"new float NaN", term(70, "\x7f\xf8\x00\x00\x00\x00\x00\x00"), "not an Erlang float"},
		{"new float +Inf", term(70, "\x7f\xf0\x00\x00\x00\x00\x00\x00"), "not an Erlang float"},
		{"bad UTF-8 atom", term(119, 2, "\xc3\x28"), "not valid UTF-8"},
		{"bad UTF-8 long atom", term(118, 0, 1, "\xff"), "not valid UTF-8"},
		{"bignum sign 2", term(110, 1, 2, 1), "sign byte is 2"},
		{"improper list", term(108, "\x00\x00\x00\x01", 97, 1, 97, 2), "improper list"},
		{"improper list of zero", term(108, "\x00\x00\x00\x00", 100, 0, 1, "a"), "improper list"},
		{"list length lies", term(108, "\x00\x00\x00\x05", 97, 1, 106), "cannot fit"},
		{"list length 4G", term(108, "\xff\xff\xff\xff", 106), "cannot fit"},
		{"binary length 4G", term(109, "\xff\xff\xff\xff", "ab"), "truncated BINARY_EXT"},
		{"tuple arity 4G", term(105, "\xff\xff\xff\xff", 97, 1), "cannot fit"},
		{"map arity 4G", term(116, "\xff\xff\xff\xff", 97, 1), "cannot fit"},
		{"string length lies", term(107, "\xff\xff", "ab"), "truncated STRING_EXT"},
		{"large big length 4G", term(111, "\x00\x00\x10\x00", 0, 1), "truncated bignum digits"},
		{"{bert, nil, 1}", term(104, 3, atomBert, 100, 0, 3, "nil", 97, 1), "{bert, nil} complex type must have 2 elements, has 3"},
		{"{bert, true, x}", term(104, 3, atomBert, 100, 0, 4, "true", 100, 0, 1, "x"), "{bert, true} complex type must have 2"},
		{"{bert, dict}", term(104, 2, atomBert, 100, 0, 4, "dict"), "{bert, dict} complex type must have 3"},
		{"{bert, dict, foo}", term(104, 3, atomBert, 100, 0, 4, "dict", 100, 0, 3, "foo"), "entries are not a list"},
		{"{bert, dict, \"ab\"}", term(104, 3, atomBert, 100, 0, 4, "dict", 107, 0, 2, "ab"), "entries are not a list"},
		{"{bert, dict, [a]}", term(104, 3, atomBert, 100, 0, 4, "dict", 108, "\x00\x00\x00\x01", 100, 0, 1, "a", 106), "not a {Key, Value} tuple"},
		{"{bert, dict, [{a}]}", term(104, 3, atomBert, 100, 0, 4, "dict", 108, "\x00\x00\x00\x01", 104, 1, 100, 0, 1, "a", 106), "not a {Key, Value} tuple"},
		{"{bert, dict, [{a, 1} | b]}", term(104, 3, atomBert, 100, 0, 4, "dict", 108, "\x00\x00\x00\x01", 104, 2, 100, 0, 1, "a", 97, 1, 100, 0, 1, "b"), "improper list"},
		{"{bert, time, -1, x, y}", term(104, 5, atomBert, 100, 0, 4, "time", 98, "\xff\xff\xff\xff", 100, 0, 1, "x", 100, 0, 1, "y"), "MegaSecs is -1, out of range"},
		{"{bert, time, 1, x, y}", term(104, 5, atomBert, 100, 0, 4, "time", 97, 1, 100, 0, 1, "x", 100, 0, 1, "y"), "Secs is x, want an integer"},
		{"{bert, time, 1, 1000000, 0}", term(104, 5, atomBert, 100, 0, 4, "time", 97, 1, 98, "\x00\x0f\x42\x40", 97, 0), "Secs is 1000000, out of range"},
		{"{bert, time, 1, 0, 1.0}", term(104, 5, atomBert, 100, 0, 4, "time", 97, 1, 97, 0, 70, "\x3f\xf0\x00\x00\x00\x00\x00\x00"), "MicroSecs is 1.0, want an integer"},
		{"{bert, time, 2^70, 0, 0}", term(104, 5, atomBert, 100, 0, 4, "time", 110, 9, 0, "\x00\x00\x00\x00\x00\x00\x00\x00\x40", 97, 0, 97, 0), "MegaSecs is 1180591620717411303424, want an integer"},
		{"{bert, time, 1, 2}", term(104, 4, atomBert, 100, 0, 4, "time", 97, 1, 97, 2), "{bert, time} complex type must have 5"},
		{"{bert, regex, \"abc\", []}", term(104, 4, atomBert, 100, 0, 5, "regex", 107, 0, 3, "abc", 106), "source is \"abc\", want a binary"},
		{"{bert, regex, <<>>, caseless}", term(104, 4, atomBert, 100, 0, 5, "regex", 109, "\x00\x00\x00\x00", 100, 0, 8, "caseless"), "options are caseless, want a list"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, err := Unmarshal(c.in)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Unmarshal = %s, %v; want ErrMalformed", Format(v), err)
			}
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %T is not a *DecodeError", err)
			}
			if !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("error %q does not say %q", err, c.reason)
			}
		})
	}
}

func nested(n int) []byte {
	b := []byte{tagVersion}
	for range n {
		b = append(b, tagList, 0, 0, 0, 1)
	}
	b = append(b, tagSmallInteger, 1)
	for range n {
		b = append(b, tagNil)
	}
	return b
}

func TestLimits(t *testing.T) {
	longAtom := term(100, 0, 200, strings.Repeat("a", 200))
	manyInts := term(108, "\x00\x00\x00\x03", 97, 1, 97, 2, 97, 3, 106)
	bigNum := term(110, 20, 0, strings.Repeat("\x01", 20))
	cases := []struct {
		name   string
		in     []byte
		lim    Limits
		reason string // empty: must succeed
	}{
		{"depth at limit", nested(3), Limits{MaxDepth: 3}, ""},
		{"depth over limit", nested(4), Limits{MaxDepth: 3}, "nesting deeper than MaxDepth 3"},
		{"default depth", nested(DefaultMaxDepth), Limits{}, ""},
		{"default depth exceeded", nested(DefaultMaxDepth + 1), Limits{}, "nesting deeper"},
		{"deep tuples", term(104, 1, 104, 1, 104, 1, 106), Limits{MaxDepth: 2}, "nesting deeper"},
		{"deep dict", term(104, 3, atomBert, 100, 0, 4, "dict", 108, "\x00\x00\x00\x01", 104, 2, 97, 1, 97, 1, 106), Limits{MaxDepth: 2}, "nesting deeper"},
		{"dict within depth", term(104, 3, atomBert, 100, 0, 4, "dict", 108, "\x00\x00\x00\x01", 104, 2, 97, 1, 97, 1, 106), Limits{MaxDepth: 3}, ""},
		{"atom length", longAtom, Limits{MaxAtomLen: 199}, "atom of 200 bytes exceeds MaxAtomLen 199"},
		{"atom length ok", longAtom, Limits{MaxAtomLen: 200}, ""},
		{"elements", manyInts, Limits{MaxElements: 3}, "exceeds MaxElements 3"},
		{"elements ok", manyInts, Limits{MaxElements: 4}, ""},
		{"size", manyInts, Limits{MaxSize: len(manyInts) - 1}, "more than MaxSize"},
		{"bignum", bigNum, Limits{MaxBigLen: 19}, "exceeds MaxBigLen 19"},
		{"bignum ok", bigNum, Limits{MaxBigLen: 20}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := UnmarshalLimits(c.in, c.lim)
			if c.reason == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("err = %v, want ErrLimit saying %q", err, c.reason)
			}
		})
	}
}

// TestLyingLengthsDoNotAllocate feeds short inputs whose length fields
// claim gigabytes and checks that decoding fails without allocating.
func TestLyingLengthsDoNotAllocate(t *testing.T) {
	inputs := [][]byte{
		term(108, "\xff\xff\xff\xff", 97, 1, 106),
		term(109, "\xff\xff\xff\xff", "abcd"),
		term(105, "\xff\xff\xff\xff", 97, 1),
		term(116, "\x7f\xff\xff\xff", 97, 1),
		term(111, "\xff\xff\xff\xff", 0, 1),
	}
	for _, in := range inputs {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := UnmarshalLimits(in, Limits{MaxElements: math.MaxInt, MaxBigLen: math.MaxInt})
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Fatalf("% x decoded", in)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 64<<10 {
			t.Errorf("% x: allocated %d bytes before failing (%v)", in, n, err)
		}
	}
}

func TestDecodeErrorOffset(t *testing.T) {
	_, err := Unmarshal(term(104, 2, 97, 1, 200))
	var de *DecodeError
	if !errors.As(err, &de) || de.Offset != 5 {
		t.Fatalf("err = %v, want a DecodeError at offset 5", err)
	}
}

// encodeCases pin Marshal's exact output.
var encodeCases = []struct {
	name string
	in   any
	want []byte
}{
	{"int 0", 0, term(97, 0)},
	{"int 255", 255, term(97, 255)},
	{"int 256", 256, term(98, "\x00\x00\x01\x00")},
	{"int -1", -1, term(98, "\xff\xff\xff\xff")},
	{"int32 min", int32(math.MinInt32), term(98, "\x80\x00\x00\x00")},
	{"int 2^31", int64(1 << 31), term(110, 4, 0, "\x00\x00\x00\x80")},
	{"int -2^31-1", int64(-(1 << 31) - 1), term(110, 4, 1, "\x01\x00\x00\x80")},
	{"int64 min", int64(math.MinInt64), term(110, 8, 1, "\x00\x00\x00\x00\x00\x00\x00\x80")},
	{"uint64 max", uint64(math.MaxUint64), term(110, 8, 0, "\xff\xff\xff\xff\xff\xff\xff\xff")},
	{"uint8", uint8(7), term(97, 7)},
	{"int8 negative", int8(-2), term(98, "\xff\xff\xff\xfe")},
	{"big.Int small", big.NewInt(300), term(98, "\x00\x00\x01\x2c")},
	{"big.Int 2^64", new(big.Int).Lsh(big.NewInt(1), 64), term(110, 9, 0, "\x00\x00\x00\x00\x00\x00\x00\x00\x01")},
	{"big.Int -2^64", new(big.Int).Neg(new(big.Int).Lsh(big.NewInt(1), 64)), term(110, 9, 1, "\x00\x00\x00\x00\x00\x00\x00\x00\x01")},
	{"big.Int 2^2048", new(big.Int).Lsh(big.NewInt(1), 2048), term(111, "\x00\x00\x01\x01", 0, strings.Repeat("\x00", 256), 1)},
	{"float64", 1.0, term(99, floatText("1.00000000000000000000e+00"))},
	{"float64 negative zero", math.Copysign(0, -1), term(99, floatText("-0.00000000000000000000e+00"))},
	{"float64 tiny", 5e-324, term(99, floatText("4.94065645841246544177e-324"))},
	{"float32", float32(0.5), term(99, floatText("5.00000000000000000000e-01"))},
	{"Atom", Atom("foo"), term(100, 0, 3, "foo")},
	{"Atom UTF-8 as ATOM_EXT", Atom("日"), term(100, 0, 3, "日")},
	{"string", "hi", term(109, "\x00\x00\x00\x02", "hi")},
	{"[]byte", []byte("hi"), term(109, "\x00\x00\x00\x02", "hi")},
	{"nil []byte", []byte(nil), term(109, "\x00\x00\x00\x00")},
	{"Charlist", Charlist("ab"), term(107, 0, 2, "ab")},
	{"Charlist empty", Charlist(""), term(107, 0, 0)},
	{"Tuple", Tuple{Atom("a"), 1}, term(104, 2, 100, 0, 1, "a", 97, 1)},
	{"nil Tuple", Tuple(nil), term(104, 0)},
	{"List", List{1}, term(108, "\x00\x00\x00\x01", 97, 1, 106)},
	{"List empty", List{}, term(106)},
	{"[]any", []any{1}, term(108, "\x00\x00\x00\x01", 97, 1, 106)},
	{"[]any nil", []any(nil), term(106)},
	{"[]string", []string{"a"}, term(108, "\x00\x00\x00\x01", 109, "\x00\x00\x00\x01", "a", 106)},
	{"[]int empty", []int{}, term(106)},
	{"named string", namedString("x"), term(109, "\x00\x00\x00\x01", "x")},
	{"named int", namedInt(3), term(97, 3)},
	{"named uint", namedUint(1 << 40), term(110, 6, 0, "\x00\x00\x00\x00\x00\x01")},
	{"named bool", namedBool(true), term(104, 2, atomBert, 100, 0, 4, "true")},
	{"named float", namedFloat(0.5), term(99, floatText("5.00000000000000000000e-01"))},
	{"named bytes", namedBytes("x"), term(109, "\x00\x00\x00\x01", "x")},
	{"[]int", []int{1, 2}, term(108, "\x00\x00\x00\x02", 97, 1, 97, 2, 106)},
	{"[]Tuple", []Tuple{{}}, term(108, "\x00\x00\x00\x01", 104, 0, 106)},
	{"int16", int16(-300), term(98, "\xff\xff\xfe\xd4")},
	{"uint16", uint16(300), term(98, "\x00\x00\x01\x2c")},
	{"uint32 max", uint32(math.MaxUint32), term(110, 4, 0, "\xff\xff\xff\xff")},
	{"uint", uint(5), term(97, 5)},
	{"nil", nil, term(104, 2, atomBert, 100, 0, 3, "nil")},
	{"true", true, term(104, 2, atomBert, 100, 0, 4, "true")},
	{"false", false, term(104, 2, atomBert, 100, 0, 5, "false")},
	{"Dict empty", Dict{}, term(104, 3, atomBert, 100, 0, 4, "dict", 106)},
	{"Dict", Dict{{Atom("a"), 1}}, term(104, 3, atomBert, 100, 0, 4, "dict", 108, "\x00\x00\x00\x01", 104, 2, 100, 0, 1, "a", 97, 1, 106)},
	{"map[string]any sorted", map[string]any{"b": 2, "a": 1}, term(104, 3, atomBert, 100, 0, 4, "dict", 108, "\x00\x00\x00\x02",
		104, 2, 109, "\x00\x00\x00\x01", "a", 97, 1, 104, 2, 109, "\x00\x00\x00\x01", "b", 97, 2, 106)},
	{"map[Atom]any keeps atom keys", map[Atom]any{"b": 2, "a": 1}, term(104, 3, atomBert, 100, 0, 4, "dict", 108, "\x00\x00\x00\x02",
		104, 2, 100, 0, 1, "a", 97, 1, 104, 2, 100, 0, 1, "b", 97, 2, 106)},
	{"map[string]int", map[string]int{"a": 1}, term(104, 3, atomBert, 100, 0, 4, "dict", 108, "\x00\x00\x00\x01", 104, 2, 109, "\x00\x00\x00\x01", "a", 97, 1, 106)},
	{"time", time.Unix(1255295581, 446228999).In(time.FixedZone("X", 3600)), term(104, 5, atomBert, 100, 0, 4, "time", 98, "\x00\x00\x04\xe7", 98, "\x00\x04\x82\x9d", 98, "\x00\x06\xcf\x14")},
	{"Regex", Regex{Source: "a", Options: List{Atom("caseless")}}, term(104, 4, atomBert, 100, 0, 5, "regex", 109, "\x00\x00\x00\x01", "a", 108, "\x00\x00\x00\x01", 100, 0, 8, "caseless", 106)},
	{"*Regex no options", &Regex{Source: "a"}, term(104, 4, atomBert, 100, 0, 5, "regex", 109, "\x00\x00\x00\x01", "a", 106)},
}

type (
	namedString string
	namedInt    int
	namedUint   uint64
	namedBool   bool
	namedFloat  float64
	namedBytes  []byte
)

func TestMarshal(t *testing.T) {
	for _, c := range encodeCases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Marshal(c.in)
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			if !bytes.Equal(got, c.want) {
				t.Fatalf("got  % x\nwant % x", got, c.want)
			}
			back, err := Unmarshal(got)
			if err != nil {
				t.Fatalf("Unmarshal(Marshal): %v", err)
			}
			if !Equal(back, c.in) {
				t.Fatalf("Unmarshal(Marshal) = %s, not Equal to %s", Format(back), Format(c.in))
			}
		})
	}
}

// TestMarshalDecodeCases re-encodes what every decode case produced (the
// encodable ones) and checks the result decodes to the same value.
func TestMarshalDecodeCases(t *testing.T) {
	for _, c := range decodeCases {
		if _, isMap := c.want.(Map); isMap {
			continue
		}
		b, err := Marshal(c.want)
		if err != nil {
			t.Errorf("%s: Marshal: %v", c.name, err)
			continue
		}
		back, err := Unmarshal(b)
		if err != nil {
			t.Errorf("%s: Unmarshal: %v", c.name, err)
			continue
		}
		if !Equal(back, c.want) {
			t.Errorf("%s: round trip gave %s", c.name, Format(back))
		}
	}
}

func TestMarshalErrors(t *testing.T) {
	cyclic := []any{nil}
	cyclic[0] = cyclic
	deep := any(1)
	for range DefaultMaxDepth + 1 {
		deep = Tuple{deep}
	}
	cases := []struct {
		name   string
		in     any
		reason string
	}{
		{"Map", Map{{Atom("a"), 1}}, "maps are not BERT"},
		{"NaN", math.NaN(), "float NaN"},
		{"Inf", math.Inf(-1), "float -Inf"},
		{"float32 Inf", float32(math.Inf(1)), "float +Inf"},
		{"long atom", Atom(strings.Repeat("a", 256)), "atom of 256 bytes"},
		{"before 1970", time.Unix(-1, 0), "before 1970"},
		{"chan", make(chan int), "cannot encode chan int"},
		{"struct", struct{}{}, "cannot encode struct"},
		{"array", [2]int{}, "cannot encode [2]int"},
		{"pointer", new(int), "cannot encode *int"},
		{"func in list", []any{func() {}}, "cannot encode func()"},
		{"map[int]any", map[int]any{1: 1}, "map with int keys"},
		{"nil *big.Int", (*big.Int)(nil), "nil *big.Int"},
		{"nil *Regex", (*Regex)(nil), "nil *Regex"},
		{"cyclic", cyclic, "nesting deeper"},
		{"too deep", deep, "nesting deeper"},
		{"Map in Dict", Dict{{Atom("a"), Map{}}}, "maps are not BERT"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := Marshal(c.in)
			if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("Marshal = % x, %v; want ErrUnsupported saying %q", b, err, c.reason)
			}
		})
	}
}

// TestMarshalDepthMatchesUnmarshal checks that Marshal accepts exactly the
// nesting that Unmarshal accepts by default.
func TestMarshalDepthMatchesUnmarshal(t *testing.T) {
	for _, mk := range []func(any) any{
		func(v any) any { return Tuple{v} },
		func(v any) any { return List{v} },
		func(v any) any { return Dict{{1, v}} },
		func(v any) any { return Regex{Options: List{v}} },
	} {
		v := any(1)
		for i := 0; ; i++ {
			b, encErr := Marshal(v)
			var decErr error
			if encErr == nil {
				_, decErr = Unmarshal(b)
				if decErr != nil {
					t.Fatalf("%s: Marshal accepts what Unmarshal refuses: %v", Format(mk(1)), decErr)
				}
			} else {
				// The same term, written by hand deeper than Marshal allows,
				// must be refused by Unmarshal too.
				if i == 0 {
					t.Fatalf("Marshal(1): %v", encErr)
				}
				break
			}
			v = mk(v)
		}
	}
}

func TestEqual(t *testing.T) {
	cases := []struct {
		a, b any
		want bool
	}{
		{1, 1, true},
		{int64(1), uint8(1), true},
		{1, 1.0, false},
		{big.NewInt(5), 5, true},
		{new(big.Int).Lsh(big.NewInt(1), 64), new(big.Int).Lsh(big.NewInt(1), 64), true},
		{uint64(math.MaxUint64), new(big.Int).SetUint64(math.MaxUint64), true},
		{0.0, math.Copysign(0, -1), false},
		{float32(0.5), 0.5, true},
		{"x", []byte("x"), true},
		{"x", Atom("x"), false},
		{"x", Charlist("x"), false},
		{Charlist("ab"), List{97, 98}, true},
		{List{97, 98}, Charlist("ab"), true},
		{Charlist("ab"), List{97, 98.0}, false},
		{Charlist(""), List{}, true},
		{[]any{1}, List{1}, true},
		{Tuple{1}, List{1}, false},
		{nil, Tuple{Atom("bert"), Atom("nil")}, true},
		{true, false, false},
		{true, Atom("true"), false},
		{map[string]any{"a": 1, "b": 2}, Dict{{"a", 1}, {"b", 2}}, true},
		{Dict{{"b", 2}, {"a", 1}}, Dict{{"a", 1}, {"b", 2}}, false},
		{Map{{"b", 2}, {"a", 1}}, Map{{"a", 1}, {"b", 2}}, true},
		{Map{{"a", 1}, {"a", 1}}, Map{{"a", 1}, {"b", 1}}, false},
		{time.Unix(5, 1000), time.Unix(5, 1999).UTC(), true},
		{time.Unix(5, 1000), time.Unix(5, 2000), false},
		{Regex{Source: "a"}, Regex{Source: "a", Options: List{}}, true},
		{Regex{Source: "a"}, &Regex{Source: "b"}, false},
		{make(chan int), make(chan int), false},
		{struct{}{}, struct{}{}, false},
	}
	for _, c := range cases {
		if got := Equal(c.a, c.b); got != c.want {
			t.Errorf("Equal(%s, %s) = %v, want %v", Format(c.a), Format(c.b), got, c.want)
		}
		if got := Equal(c.b, c.a); got != c.want {
			t.Errorf("Equal(%s, %s) = %v, want %v (reversed)", Format(c.b), Format(c.a), got, c.want)
		}
	}
}

func TestFormat(t *testing.T) {
	cases := []struct {
		in   any
		want string
	}{
		{Tuple{Atom("call"), Atom("mod"), Atom("fn"), []any{1, "x"}}, `{call,mod,fn,[1,<<"x">>]}`},
		{-12, "-12"},
		{new(big.Int).Lsh(big.NewInt(1), 64), "18446744073709551616"},
		{1.0, "1.0"},
		{0.1, "0.1"},
		{-2.5e-7, "-2.5e-7"},
		{1e20, "1.0e20"},
		{1.5e300, "1.5e300"},
		{Atom("ok"), "ok"},
		{Atom("Hello"), "'Hello'"},
		{Atom(""), "''"},
		{Atom("a b"), "'a b'"},
		{Atom("it's"), `'it\'s'`},
		{Atom("case"), "'case'"},
		{Atom("node@host_1"), "node@host_1"},
		{[]byte{}, "<<>>"},
		{[]byte{1, 2}, "<<1,2>>"},
		{"say \"hi\"\n", `<<"say \"hi\"\n">>`},
		{Charlist("abc"), `"abc"`},
		{Charlist("\x01"), "[1]"},
		{List{}, "[]"},
		{Tuple{}, "{}"},
		{nil, "{bert,nil}"},
		{true, "{bert,true}"},
		{Dict{{Atom("a"), 1}}, "{bert,dict,[{a,1}]}"},
		{map[string]any{}, "{bert,dict,[]}"},
		{time.Unix(1255295581, 446228000), "{bert,time,1255,295581,446228}"},
		{Regex{Source: "^a", Options: List{Atom("caseless")}}, `{bert,regex,<<"^a">>,[caseless]}`},
		{Map{{Atom("a"), 1}, {[]byte("b"), List{}}}, `#{a => 1,<<"b">> => []}`},
		{[]any{make(chan int)}, "[<unsupported chan int>]"},
	}
	for _, c := range cases {
		if got := Format(c.in); got != c.want {
			t.Errorf("Format(%#v) = %s, want %s", c.in, got, c.want)
		}
	}
}

func TestFormatLimit(t *testing.T) {
	huge := bytes.Repeat([]byte("a"), 1<<20)
	cases := []struct {
		in   any
		max  int
		want string
	}{
		{Tuple{Atom("call"), Atom("m")}, 0, "{call,m}"},
		{Tuple{Atom("call"), Atom("m")}, 100, "{call,m}"},
		{Tuple{Atom("call"), Atom("m")}, 3, "{call..."},
		{List{1, 2, 3, 4, 5}, 4, "[1,2..."},
		{List{1, 2}, 5, "[1,2]"},
		{huge, 10, `<<"` + strings.Repeat("a", 64) + "..."},
		{Dict{{1, 2}, {3, 4}}, 13, "{bert,dict,[{..."},
		{Dict{{1, 2}, {3, 4}}, 17, "{bert,dict,[{1,2}..."},
		{Charlist("abc"), 2, `"abc"`},
		{Charlist(strings.Repeat("x", 100)), 2, `"` + strings.Repeat("x", 64) + "..."},
	}
	for _, c := range cases {
		if got := FormatLimit(c.in, c.max); got != c.want {
			t.Errorf("FormatLimit(%.80s, %d) = %.200s, want %.200s", Format(c.in), c.max, got, c.want)
		}
	}
	cyclic := Tuple{nil}
	cyclic[0] = cyclic
	if got := FormatLimit(cyclic, 20); !strings.HasSuffix(got, "...") {
		t.Errorf("cyclic tuple: %s", got)
	}
}

// TestErrorMessagesAreShort checks that a huge term in a bad complex type
// is not copied into the error message.
func TestErrorMessagesAreShort(t *testing.T) {
	bin := term(109, "\x00\x10\x00\x00", strings.Repeat("z", 1<<20))[1:]
	in := term(104, 5, atomBert, 100, 0, 4, "time", bin, 97, 0, 97, 0)
	_, err := Unmarshal(in)
	if !errors.Is(err, ErrMalformed) || len(err.Error()) > 300 {
		t.Fatalf("err (%d bytes) = %.300v", len(err.Error()), err)
	}
}
