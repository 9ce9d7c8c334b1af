package bert

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// These tests check the codec against the real thing: Erlang's
// term_to_binary/binary_to_term (package erlang-nox) and the Ruby bert gem
// (packages ruby and ruby-bert), the client Ernie users have. They skip
// when the programs are missing, unless CI is set.

func needProgram(t *testing.T, name string, check ...string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil && len(check) > 0 {
		err = exec.Command(path, check...).Run()
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not usable (%v); install it (see scripts)", name, err)
		}
		t.Skipf("%s not usable: %v", name, err)
	}
	return path
}

func runProgram(t *testing.T, path string, stdin string, args ...string) []string {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), "TZ=UTC", "RUBYOPT=-W0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\nstderr:\n%s\nstdout:\n%s", path, err, stderr.String(), out)
	}
	return strings.Split(strings.TrimRight(string(out), "\n"), "\n")
}

// runErlang evaluates the Erlang expressions in prog (too long for a
// command line) with file:script.
func runErlang(t *testing.T, erl, prog string) []string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "prog.erl")
	if err := os.WriteFile(f, []byte(prog+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	eval := fmt.Sprintf(`case file:script(%q) of {ok, _} -> halt(0); Err -> io:format(standard_error, "~p~n", [Err]), halt(1) end.`, f)
	return runProgram(t, erl, "", "-noshell", "-eval", eval)
}

func erlBinary(b []byte) string {
	var s strings.Builder
	s.WriteString("<<")
	for i, c := range b {
		if i > 0 {
			s.WriteByte(',')
		}
		s.WriteString(strconv.Itoa(int(c)))
	}
	s.WriteString(">>")
	return s.String()
}

// interopCase pairs a Go value with the same term in Erlang syntax.
type interopCase struct {
	erl string // Erlang expression
	enc any    // what Go encodes
	dec any    // what Go decodes from Erlang's encoding (nil: same as enc)
	// otherBytes is set when Marshal writes another encoding of the same
	// term than term_to_binary.
	otherBytes bool
}

func erlangCases(t *testing.T) []interopCase {
	when := time.Unix(1255295581, 446228000).UTC() // the spec's example
	long := strings.Repeat("x", 300)
	big300 := "1" + strings.Repeat("0", 700) // > 255 bytes: LARGE_BIG_EXT
	bigTuple := make(Tuple, 300)
	var bigTupleErl strings.Builder
	bigTupleErl.WriteString("{")
	for i := range bigTuple {
		bigTuple[i] = i
		if i > 0 {
			bigTupleErl.WriteString(",")
		}
		bigTupleErl.WriteString(strconv.Itoa(i))
	}
	bigTupleErl.WriteString("}")
	return []interopCase{
		{erl: "0", enc: 0},
		{erl: "255", enc: 255},
		{erl: "256", enc: 256},
		{erl: "-1", enc: -1},
		{erl: "2147483647", enc: 2147483647},
		{erl: "-2147483648", enc: -2147483648},
		{erl: "2147483648", enc: 2147483648},
		{erl: "-2147483649", enc: -2147483649},
		{erl: "9223372036854775807", enc: 9223372036854775807},
		{erl: "-9223372036854775808", enc: -9223372036854775808},
		{erl: "9223372036854775808", enc: uint64(1 << 63), dec: bigInt(t, "9223372036854775808")},
		{erl: "18446744073709551615", enc: uint64(18446744073709551615), dec: bigInt(t, "18446744073709551615")},
		{erl: "-123456789012345678901234567890", enc: bigInt(t, "-123456789012345678901234567890")},
		{erl: big300, enc: bigInt(t, big300)},
		{erl: "-" + big300, enc: bigInt(t, "-"+big300)},
		{erl: "0.0", enc: 0.0},
		{erl: "1.0", enc: 1.0},
		{erl: "-2.5", enc: -2.5},
		{erl: "0.1", enc: 0.1},
		{erl: "1.7976931348623157e308", enc: 1.7976931348623157e308},
		{erl: "4.9406564584124654e-324", enc: 4.9406564584124654e-324},
		{erl: "-1.2345678901234567e-300", enc: -1.2345678901234567e-300},
		{erl: "3.1415927410125732", enc: float32(3.14159274), dec: 3.1415927410125732},
		{erl: "foo", enc: Atom("foo")},
		{erl: "''", enc: Atom("")},
		{erl: "'Hello World'", enc: Atom("Hello World")},
		{erl: "'" + strings.Repeat("a", 255) + "'", enc: Atom(strings.Repeat("a", 255))},
		{erl: "{}", enc: Tuple{}},
		{erl: "{coord, 23, 42}", enc: Tuple{Atom("coord"), 23, 42}},
		{erl: bigTupleErl.String(), enc: bigTuple},
		{erl: "[]", enc: List{}},
		{erl: "[a, [1, 2], <<\"x\">>]", enc: []any{Atom("a"), Charlist("\x01\x02"), "x"}, dec: List{Atom("a"), Charlist("\x01\x02"), []byte("x")}},
		{erl: "[1, 2, 300]", enc: List{1, 2, 300}},
		{erl: "[1, 2]", enc: List{1, 2}, dec: Charlist("\x01\x02"), otherBytes: true},
		{erl: "\"abc\"", enc: Charlist("abc")},
		{erl: "\"\"", enc: Charlist(""), dec: List{}, otherBytes: true},
		{erl: "lists:duplicate(70000, $a)", enc: Charlist(strings.Repeat("a", 70000)), dec: func() List {
			l := make(List, 70000)
			for i := range l {
				l[i] = int('a')
			}
			return l
		}()},
		{erl: "<<>>", enc: []byte{}},
		{erl: "<<\"Roses are red\\0Violets are blue\">>", enc: "Roses are red\x00Violets are blue", dec: []byte("Roses are red\x00Violets are blue")},
		{erl: "list_to_binary(lists:duplicate(300, $x))", enc: []byte(long)},
		{erl: "{bert, nil}", enc: nil},
		{erl: "{bert, true}", enc: true},
		{erl: "{bert, false}", enc: false},
		{erl: "{bert, dict, []}", enc: Dict{}},
		{erl: "{bert, dict, [{name, <<\"Tom\">>}, {age, 30}]}", enc: Dict{{Atom("name"), []byte("Tom")}, {Atom("age"), 30}}},
		{erl: "{bert, dict, [{<<\"a\">>, 1}, {<<\"b\">>, {bert, nil}}]}", enc: map[string]any{"b": nil, "a": 1}, dec: Dict{{[]byte("a"), 1}, {[]byte("b"), nil}}},
		{erl: "{bert, time, 1255, 295581, 446228}", enc: when},
		{erl: "{bert, time, 0, 0, 0}", enc: time.Unix(0, 0).UTC()},
		{erl: "{bert, regex, <<\"^c(a*)t$\">>, [caseless]}", enc: Regex{Source: "^c(a*)t$", Options: List{Atom("caseless")}}},
		{erl: "{bert, regex, <<\"x\">>, []}", enc: Regex{Source: "x", Options: List{}}},
		{erl: "{bert, other, 1}", enc: Tuple{Atom("bert"), Atom("other"), 1}},
		// Erlang writes [99] as a bytelist (STRING_EXT); Marshal writes a List
		// as LIST_EXT, as the Ruby gem does. Both are the same Erlang term.
		{erl: "{call, photox, img_size, [99]}", enc: Tuple{Atom("call"), Atom("photox"), Atom("img_size"), List{99}},
			dec: Tuple{Atom("call"), Atom("photox"), Atom("img_size"), Charlist("c")}, otherBytes: true},
		{erl: "{call, photox, img_size, [<<\"a\">>]}", enc: Tuple{Atom("call"), Atom("photox"), Atom("img_size"), []any{"a"}},
			dec: Tuple{Atom("call"), Atom("photox"), Atom("img_size"), List{[]byte("a")}}},
		{erl: "{error, {server, 2, <<\"BERTError\">>, <<\"no\">>, [<<\"file:1\">>]}}",
			enc: Tuple{Atom("error"), Tuple{Atom("server"), 2, "BERTError", "no", []any{"file:1"}}},
			dec: Tuple{Atom("error"), Tuple{Atom("server"), 2, []byte("BERTError"), []byte("no"), List{[]byte("file:1")}}}},
	}
}

// TestErlangDecodesMarshal checks that Marshal's bytes are exactly what
// term_to_binary(Term, [{minor_version, 0}]) writes and that
// binary_to_term reads them back as the same term.
func TestErlangDecodesMarshal(t *testing.T) {
	erl := needProgram(t, "erl", "-noshell", "-eval", "halt().")
	cases := erlangCases(t)
	var prog strings.Builder
	prog.WriteString("Cases = [\n")
	for i, c := range cases {
		b, err := Marshal(c.enc)
		if err != nil {
			t.Fatalf("Marshal(%s): %v", c.erl, err)
		}
		if i > 0 {
			prog.WriteString(",\n")
		}
		fmt.Fprintf(&prog, "{%s, %s, %t}", erlBinary(b), c.erl, c.otherBytes)
	}
	prog.WriteString(`],
lists:foreach(fun({B, E, OtherBytes}) ->
    R = try binary_to_term(B) catch C:X -> {C, X} end,
    Same = OtherBytes orelse (term_to_binary(E, [{minor_version, 0}]) =:= B),
    io:format("~s~n", [if R =:= E, Same -> "ok"; R =:= E -> "bytes differ"; true -> io_lib:format("got ~w", [R]) end])
  end, Cases).`)
	lines := runErlang(t, erl, prog.String())
	if len(lines) != len(cases) {
		t.Fatalf("erl printed %d lines for %d cases: %q", len(lines), len(cases), lines)
	}
	for i, c := range cases {
		if lines[i] != "ok" {
			t.Errorf("%s: erl says %s", c.erl, lines[i])
		}
	}
}

// TestUnmarshalErlang decodes term_to_binary output of the Erlang on this
// machine with several options: the default (NEW_FLOAT_EXT), minor
// version 0 (FLOAT_EXT), minor version 2 (UTF-8 atoms).
func TestUnmarshalErlang(t *testing.T) {
	erl := needProgram(t, "erl", "-noshell", "-eval", "halt().")
	cases := erlangCases(t)
	cases = append(cases,
		interopCase{erl: "'日本'", dec: Atom("日本")},
		interopCase{erl: "list_to_atom([16#65e5 || _ <- lists:seq(1, 255)])", dec: Atom(strings.Repeat("日", 255))},
		interopCase{erl: "#{}", dec: Map{}},
		interopCase{erl: "#{a => 1}", dec: Map{{Atom("a"), 1}}},
		interopCase{erl: "#{<<\"k\">> => [1.5]}", dec: Map{{[]byte("k"), List{1.5}}}},
		interopCase{erl: "{bert, dict, [{bert, nil}]}", dec: Dict{{Atom("bert"), Atom("nil")}}},
	)
	opts := []string{"[]", "[{minor_version, 0}]", "[{minor_version, 1}]", "[{minor_version, 2}]"}
	var prog strings.Builder
	prog.WriteString("Cases = [\n")
	for i, c := range cases {
		if i > 0 {
			prog.WriteString(",\n")
		}
		prog.WriteString(c.erl)
	}
	fmt.Fprintf(&prog, `],
lists:foreach(fun(T) ->
    io:format("~s~n", [lists:join(" ", [binary:encode_hex(term_to_binary(T, O)) || O <- [%s]])])
  end, Cases).`, strings.Join(opts, ", "))
	lines := runErlang(t, erl, prog.String())
	if len(lines) != len(cases) {
		t.Fatalf("erl printed %d lines for %d cases: %q", len(lines), len(cases), lines)
	}
	tags := map[byte]bool{}
	for i, c := range cases {
		want := c.dec
		if want == nil {
			want = c.enc
		}
		for j, h := range strings.Fields(lines[i]) {
			b, err := hex.DecodeString(h)
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range b {
				tags[x] = true // rough: records which tag bytes appeared at all
			}
			got, err := Unmarshal(b)
			if err != nil {
				t.Errorf("%s with %s: %v", c.erl, opts[j], err)
				continue
			}
			if !sameTerm(got, want) {
				t.Errorf("%s with %s: got %s (%T), want %s (%T)", c.erl, opts[j], Format(got), got, Format(want), want)
			}
		}
	}
	for _, tag := range []byte{tagNewFloat, tagFloat, tagMap, tagSmallAtomUTF, tagAtomUTF8, tagLargeBig, tagLargeTuple} {
		if !tags[tag] {
			t.Errorf("no case produced tag %d; the test does not cover it", tag)
		}
	}
}

// rubyCase pairs a Go value with the same value in Ruby syntax, as the
// bert gem maps it.
type rubyCase struct {
	ruby string
	enc  any // what Go encodes (nil is a real value here: use noValue)
	dec  any // what Go decodes from BERT.encode
}

type noValueT struct{}

var noValue = noValueT{}

func rubyCases(t *testing.T) []rubyCase {
	big := bigInt(t, "-123456789012345678901234567890")
	huge := "1" + strings.Repeat("0", 700)
	return []rubyCase{
		{ruby: "0", enc: 0, dec: 0},
		{ruby: "255", enc: 255, dec: 255},
		{ruby: "-1", enc: -1, dec: -1},
		{ruby: "2**27", enc: 1 << 27, dec: 1 << 27},
		{ruby: "-2**31", enc: -(1 << 31), dec: -(1 << 31)},
		{ruby: "2**40", enc: 1 << 40, dec: 1 << 40},
		{ruby: "-(2**63)", enc: -(1 << 63), dec: -(1 << 63)},
		{ruby: "2**64", enc: bigInt(t, "18446744073709551616"), dec: bigInt(t, "18446744073709551616")},
		{ruby: "-123456789012345678901234567890", enc: big, dec: big},
		{ruby: huge, enc: bigInt(t, huge), dec: bigInt(t, huge)},
		{ruby: "1.5", enc: 1.5, dec: 1.5},
		{ruby: "-0.1", enc: -0.1, dec: -0.1},
		{ruby: "1.0e300", enc: 1.0e300, dec: 1.0e300},
		{ruby: ":foo", enc: Atom("foo"), dec: Atom("foo")},
		{ruby: "\"\"", enc: "", dec: []byte{}},
		{ruby: "\"héllo\".b", enc: "héllo", dec: []byte("héllo")},
		{ruby: "t[]", enc: Tuple{}, dec: Tuple{}},
		{ruby: "t[:call, :mod, :fun, [1, \"x\"]]", enc: Tuple{Atom("call"), Atom("mod"), Atom("fun"), []any{1, "x"}},
			dec: Tuple{Atom("call"), Atom("mod"), Atom("fun"), List{1, []byte("x")}}},
		{ruby: "t[*(1..300)]", enc: func() Tuple {
			tu := make(Tuple, 300)
			for i := range tu {
				tu[i] = i + 1
			}
			return tu
		}(), dec: noValue},
		{ruby: "[]", enc: List{}, dec: List{}},
		{ruby: "[[], [:a]]", enc: List{List{}, List{Atom("a")}}, dec: List{List{}, List{Atom("a")}}},
		{ruby: "nil", enc: nil, dec: nil},
		{ruby: "true", enc: true, dec: true},
		{ruby: "false", enc: false, dec: false},
		{ruby: "{}", enc: Dict{}, dec: Dict{}},
		{ruby: "{:a => 1, \"b\" => [nil, true]}", enc: Dict{{Atom("a"), 1}, {"b", []any{nil, true}}},
			dec: Dict{{Atom("a"), 1}, {[]byte("b"), List{nil, true}}}},
		{ruby: "Time.at(1255295521, 446228)", enc: time.Date(2009, 10, 11, 21, 12, 1, 446228000, time.UTC),
			dec: time.Date(2009, 10, 11, 21, 12, 1, 446228000, time.UTC)},
		{ruby: "/^c(a*)t$/ix", enc: Regex{Source: "^c(a*)t$", Options: List{Atom("caseless"), Atom("extended")}},
			dec: Regex{Source: "^c(a*)t$", Options: List{Atom("caseless"), Atom("extended")}}},
		{ruby: "/x/", enc: Regex{Source: "x"}, dec: Regex{Source: "x", Options: List{}}},
		// Ruby reads a bytelist (STRING_EXT) as an array of integers.
		{ruby: "[97, 98]", enc: Charlist("ab"), dec: noValue},
		{ruby: "[]", enc: Charlist(""), dec: noValue},
	}
}

// TestRubyDecodesMarshal checks that the Ruby bert gem's BERT.decode reads
// Marshal's output as the Ruby value a Ruby client expects.
func TestRubyDecodesMarshal(t *testing.T) {
	ruby := needProgram(t, "ruby", "-e", "require 'bert'")
	cases := rubyCases(t)
	var prog strings.Builder
	prog.WriteString("require 'bert'\ncases = [\n")
	for _, c := range cases {
		b, err := Marshal(c.enc)
		if err != nil {
			t.Fatalf("Marshal(%s): %v", c.ruby, err)
		}
		fmt.Fprintf(&prog, "  [%q, (%s)],\n", hex.EncodeToString(b), c.ruby)
	}
	prog.WriteString(`]
cases.each do |h, want|
  got = begin
    BERT.decode([h].pack('H*'))
  rescue => e
    e
  end
  if got.class == want.class && got.inspect == want.inspect
    puts "ok"
  else
    puts "got #{got.inspect} (#{got.class})"
  end
end
`)
	lines := runProgram(t, ruby, prog.String())
	if len(lines) != len(cases) {
		t.Fatalf("ruby printed %d lines for %d cases: %q", len(lines), len(cases), lines)
	}
	for i, c := range cases {
		if lines[i] != "ok" {
			t.Errorf("%s: ruby says %s", c.ruby, lines[i])
		}
	}
}

// TestUnmarshalRuby decodes BERT.encode output of the Ruby bert gem.
func TestUnmarshalRuby(t *testing.T) {
	ruby := needProgram(t, "ruby", "-e", "require 'bert'")
	cases := rubyCases(t)
	var prog strings.Builder
	prog.WriteString("require 'bert'\n")
	for _, c := range cases {
		fmt.Fprintf(&prog, "puts BERT.encode(%s).unpack1('H*')\n", c.ruby)
	}
	lines := runProgram(t, ruby, prog.String())
	if len(lines) != len(cases) {
		t.Fatalf("ruby printed %d lines for %d cases: %q", len(lines), len(cases), lines)
	}
	for i, c := range cases {
		if c.dec == noValue {
			continue
		}
		b, err := hex.DecodeString(lines[i])
		if err != nil {
			t.Fatal(err)
		}
		got, err := Unmarshal(b)
		if err != nil {
			t.Errorf("%s: %v", c.ruby, err)
			continue
		}
		if !sameTerm(got, c.dec) {
			t.Errorf("%s: got %s (%T), want %s (%T)", c.ruby, Format(got), got, Format(c.dec), c.dec)
		}
	}
}
