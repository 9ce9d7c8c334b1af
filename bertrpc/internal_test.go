package bertrpc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/bert"
)

func TestParsePriority(t *testing.T) {
	tests := []struct {
		name   string
		arg    any
		want   priority
		wantOK bool
	}{
		{"list low (Ernie's clients)", bert.List{bert.Atom("low")}, low, true},
		{"bare low (Ernie's README)", bert.Atom("low"), low, true},
		{"list high", bert.List{bert.Atom("high")}, high, true},
		{"bare high", bert.Atom("high"), high, true},
		{"unknown", bert.Atom("urgent"), high, false},
		{"binary", []byte("low"), high, false},
		{"two elements", bert.List{bert.Atom("low"), bert.Atom("low")}, high, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := parsePriority(tc.arg)
			if got != tc.want || ok != tc.wantOK {
				t.Fatalf("parsePriority(%s) = %v, %v", bert.Format(tc.arg), got, ok)
			}
		})
	}
}

func TestProclineCommand(t *testing.T) {
	got := proclineCommand("ruby ext.rb")
	if len(got) != 150 || !strings.HasPrefix(got, "ruby ext.rb --procline xxx") || strings.Trim(got[len("ruby ext.rb --procline "):], "x") != "" {
		t.Fatalf("%q (%d)", got, len(got))
	}
	long := strings.Repeat("a", 151)
	if proclineCommand(long) != long {
		t.Fatal("a command over 150 characters must run as is")
	}
	edge := strings.Repeat("a", 145) // Ernie would loop forever on this one
	if got := proclineCommand(edge); got != edge+" --procline " {
		t.Fatalf("%q", got)
	}
}

func TestAccessEntryFormat(t *testing.T) {
	accept := time.Date(2010, 2, 20, 11, 42, 25, 259750000, time.Local)
	e := accessEntry{
		accept: accept, process: accept.Add(53 * time.Microsecond), done: accept.Add(290 * time.Microsecond),
		hq: 0, lq: 2, kind: "nat", prio: high, action: "{call,nat,add,[1,2]}",
	}
	want := "ACC [2010-02-20T11:42:25.259750] 0.000053 0.000237 - 0 2 nat high - {call,nat,add,[1,2]}\n"
	if got := e.format(); got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	e.err, e.kind, e.prio = "External process error boom", "ext", low
	want = "ERR [2010-02-20T11:42:25.259750] 0.000053 0.000237 - 0 2 ext low - External process error boom : {call,nat,add,[1,2]}\n"
	if got := e.format(); got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	e.err = ""
	e.action = "{call,ext,echo,[<<\"" + strings.Repeat("y", 300) + "\">>]}"
	got := e.format()
	if !strings.HasSuffix(got, "...\n") || len(got) > 120+150 {
		t.Fatalf("long action not cut: %q", got)
	}
}

// ernieLine parses an access log line as the final revision of Ernie's
// elib/ernie_access_logger.erl writes it:
//
//	"ACC ~s - ~s~n" and "ERR ~s - ~s : ~s~n", the stats being
//	"[~s] ~f ~f - ~B ~B ~3s ~p" and the time
//	"~4B-~2.10.0B-~2.10.0BT~2.10.0B:~2.10.0B:~2.10.0B.~-6.10.0B".
var ernieLine = regexp.MustCompile(`^(ACC|ERR) \[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6})\] (-?\d+\.\d{6}) (-?\d+\.\d{6}) - (\d+) (\d+) ([ a-z]{3}) (high|low) - (.*)$`)

// TestAccessLogParsesAsErnie: a line of Warren's parses as a line of
// Ernie's does, field for field, and its time is one ISO 8601 entity.
func TestAccessLogParsesAsErnie(t *testing.T) {
	// Lines as Ernie 2.5.2 writes them (its README's example, and an ERR
	// line of its format).
	ernie := []string{
		"ACC [2010-02-20T11:42:25.259750] 0.000053 0.000237 - 0 0 nat high - {call,nat,add,[1,2]}",
		"ERR [2010-02-20T11:42:25.259750] 0.000053 0.000237 - 0 2 ext low - No such function 'ext:nope' : {call,ext,nope,[]}",
	}
	for _, l := range ernie {
		if ernieLine.FindStringSubmatch(l) == nil {
			t.Fatalf("the parser does not read Ernie's own line %q", l)
		}
	}
	accept := time.Date(2010, 2, 20, 11, 42, 25, 259750000, time.Local)
	e := accessEntry{
		accept: accept, process: accept.Add(53 * time.Microsecond), done: accept.Add(290 * time.Microsecond),
		lq: 2, kind: "ext", prio: low, action: "{call,ext,nope,[]}", err: "No such function 'ext:nope'",
	}
	ours := strings.TrimSuffix(e.format(), "\n")
	got := ernieLine.FindStringSubmatch(ours)
	if got == nil {
		t.Fatalf("Warren's line %q does not parse as Ernie's", ours)
	}
	want := ernieLine.FindStringSubmatch(ernie[1])
	if !slices.Equal(got, want) {
		t.Fatalf("fields differ:\nwarren %q\nernie  %q", got[1:], want[1:])
	}
	if ts, err := time.ParseInLocation("2006-01-02T15:04:05.000000", got[2], time.Local); err != nil || !ts.Equal(accept) {
		t.Fatalf("time %q is not ISO 8601 for %v: %v", got[2], accept, err)
	}
}

func FuzzParseErlangTerms(f *testing.F) {
	f.Add(`[{module, ext}, {type, external}, {command, "ruby ext.rb"}, {count, 2}].`)
	f.Add(`[{a, 'q\'x'}, {b, <<"bin", 1, $a>>}, {c, 16#ff}, {d, -1.5e3}, {e, $\n}]. % c`)
	f.Add(`[[[[[[`)
	f.Fuzz(func(t *testing.T, src string) {
		terms, err := parseErlangTerms(src)
		if err == nil {
			for _, term := range terms {
				_ = bert.Format(term)
			}
		}
		_, _ = ParseErlangConfig([]byte(src))
	})
}

func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 131})
	f.Add([]byte{0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		p, ferr := readFrame(bytes.NewReader(data), 1024)
		if ferr == nil && len(p) > 1024 {
			t.Fatalf("frame of %d bytes over the limit", len(p))
		}
	})
}

// TestAccessActionBounded: the access log renders only the part of a
// request it keeps, whatever the request's size, and keeps what Ernie
// keeps.
func TestAccessActionBounded(t *testing.T) {
	big := bytes.Repeat([]byte{0xff}, 16<<20) // 4 bytes of text each, rendered in full
	term := bert.Tuple{bert.Atom("call"), bert.Atom("ext"), bert.Atom("echo"), bert.List{big}}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	action := accessAction(term)
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 64<<10 {
		t.Fatalf("rendering a 16 MiB request for the access log allocated %d bytes", n)
	}
	e := accessEntry{action: action}
	line := e.format()
	if want := " - " + ("{call,ext,echo,[<<" + strings.Repeat("255,", 40))[:maxActionLen] + "...\n"; !strings.HasSuffix(line, want) {
		t.Fatalf("line %q\nwant suffix %q", line, want)
	}

	// Cut or not, the logged text is what rendering everything and cutting
	// at 150 characters (Ernie's way) gives.
	for _, term := range []any{
		bert.Tuple{bert.Atom("call"), bert.Atom("nat"), bert.Atom("add"), bert.List{1, 2}},
		bert.Tuple{bert.Atom("call"), bert.Atom("ext"), bert.Atom("echo"), bert.List{bytes.Repeat([]byte("y\n"), 200)}},
		bert.Tuple{bert.Atom("call"), bert.Atom("ext"), bert.Atom("echo"), bert.List{bytes.Repeat([]byte{1}, 100)}},
		bert.Tuple{bert.Atom("cast"), bert.Atom("ext"), bert.Atom("x"), bert.List{bert.List{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50}}},
	} {
		limited := (&accessEntry{action: accessAction(term)}).format()
		full := (&accessEntry{action: bert.Format(term)}).format()
		if limited != full {
			t.Errorf("limited %q\nfull    %q", limited, full)
		}
	}
}

func BenchmarkAccessAction(b *testing.B) {
	for _, size := range []int{16, 1 << 20, 16 << 20} {
		term := bert.Tuple{bert.Atom("call"), bert.Atom("ext"), bert.Atom("echo"), bert.List{bytes.Repeat([]byte{0xff}, size)}}
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = accessAction(term)
			}
		})
	}
}

// BenchmarkWorkerRequest is what re-encoding a request for an external
// worker costs (runExternal), against forwarding the client's bytes, which
// costs nothing: small calls and 1 MiB / 16 MiB binaries.
func BenchmarkWorkerRequest(b *testing.B) {
	for _, tc := range []struct {
		name string
		args bert.List
	}{
		{"add", bert.List{1.5, 2}},
		{"1MiB", bert.List{make([]byte, 1<<20)}},
		{"16MiB", bert.List{make([]byte, 16<<20-64)}},
	} {
		term := bert.Tuple{bert.Atom("call"), bert.Atom("ext"), bert.Atom("f"), tc.args}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bert.Marshal(term); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// stalled is a reader that has nothing more: the read deadline passed.
type stalled struct{}

func (stalled) Read([]byte) (int, error) { return 0, os.ErrDeadlineExceeded }

// TestStalledFrameHoldsLittle: a frame announcing 16 MiB of which one byte
// came costs about what came, not the size announced (it cost 64 KiB;
// now 512 bytes and the readers, a few KiB under the race detector).
func TestStalledFrameHoldsLittle(t *testing.T) {
	const n = 100
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		r := io.MultiReader(bytes.NewReader([]byte{1, 0, 0, 0, 131}), stalled{})
		_, ferr := readFrame(r, DefaultMaxPacket)
		if ferr == nil || ferr.err != nil || ferr.partial != CodeNoData || !errors.Is(ferr.cause, os.ErrDeadlineExceeded) {
			t.Fatalf("readFrame: %+v", ferr)
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / n; per > 8192 {
		t.Fatalf("a stalled 16 MiB frame allocated %d bytes", per)
	}
}

// TestAccessFormatAsFmt: the hand-appended line is the one fmt wrote.
func TestAccessFormatAsFmt(t *testing.T) {
	at := time.Date(2026, 11, 24, 13, 1, 16, 346366000, time.Local)
	for _, e := range []accessEntry{
		{accept: at, process: at.Add(114 * time.Microsecond), done: at.Add(241 * time.Microsecond), kind: "nat", prio: high, action: "{call,nat,add,[1,2]}"},
		{accept: at, process: at.Add(3 * time.Second), done: at.Add(4 * time.Second), hq: 12, lq: 345, kind: "un", prio: low, action: "{call,nope,x,[]}", err: "No such module 'nope'\nx"},
		{accept: at, process: at, done: at, kind: "toolong", prio: high, action: strings.Repeat("x", 200)},
	} {
		action := e.action
		if len(action) > maxActionLen {
			action = action[:maxActionLen] + "..."
		}
		typ, errPart := "ACC", ""
		if e.err != "" {
			typ, errPart = "ERR", lineSafe.Replace(e.err)+" : "
		}
		want := fmt.Sprintf("%s [%s] %.6f %.6f - %d %d %3.3s %s - %s%s\n", typ, e.accept.Local().Format(accessTimeLayout),
			e.process.Sub(e.accept).Seconds(), e.done.Sub(e.process).Seconds(), e.hq, e.lq, e.kind, e.prio, errPart, action)
		if got := e.format(); got != want {
			t.Errorf("format:\n got %q\nwant %q", got, want)
		}
	}
}

// TestAccessTimeAndSeconds: the hand-made appenders write what
// time.Format and %.6f write, across seconds (the cached prefix).
func TestAccessTimeAndSeconds(t *testing.T) {
	at := time.Date(2026, 12, 6, 2, 59, 59, 999999000, time.Local)
	for i := range 50 {
		tt := at.Add(time.Duration(i) * 37 * time.Millisecond)
		if got, want := string(appendAccessTime(nil, tt)), tt.Local().Format(accessTimeLayout); got != want {
			t.Fatalf("time: got %q, want %q", got, want)
		}
	}
	for _, d := range []time.Duration{0, time.Microsecond, 53 * time.Microsecond, 999999 * time.Microsecond,
		time.Second, 3*time.Second + 250*time.Microsecond, 2 * time.Hour, 1400 * time.Nanosecond, -5 * time.Microsecond} {
		if got, want := string(appendSeconds(nil, d)), fmt.Sprintf("%.6f", d.Seconds()); got != want {
			t.Errorf("%v: got %q, want %q", d, got, want)
		}
	}
}
