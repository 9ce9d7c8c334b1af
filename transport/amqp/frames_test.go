package amqp

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/transport"
)

// Encoders for test frames.

func shortstr(s string) []byte { return append([]byte{byte(len(s))}, s...) }

func longBytes(typ byte, b []byte) []byte {
	out := []byte{}
	if typ != 0 {
		out = append(out, typ)
	}
	out = binary.BigEndian.AppendUint32(out, uint32(len(b)))
	return append(out, b...)
}

// table encodes entries (key, encoded typed value) as a field table.
func table(entries ...[]byte) []byte { return longBytes(0, bytes.Join(entries, nil)) }

func entry(key string, value []byte) []byte { return append(shortstr(key), value...) }

func str(s string) []byte { return longBytes('S', []byte(s)) }

// deep returns an 'F' value of n nested tables.
func deep(n int) []byte {
	v := str("bottom")
	for range n {
		v = append([]byte{'F'}, table(entry("n", v))...)
	}
	return v
}

// headerFrame encodes a content header frame on channel 1 with a body of
// 5 bytes, the given property flags and encoded properties.
func headerFrame(flags uint16, props ...[]byte) []byte {
	payload := []byte{0, 60, 0, 0}
	payload = binary.BigEndian.AppendUint64(payload, 5)
	payload = binary.BigEndian.AppendUint16(payload, flags)
	payload = append(payload, bytes.Join(props, nil)...)
	f := []byte{frameHeader, 0, 1}
	f = binary.BigEndian.AppendUint32(f, uint32(len(payload)))
	f = append(f, payload...)
	return append(f, frameEnd)
}

const (
	fContentType = 0x8000
	fMessageID   = 0x0080
	fAppID       = 0x0008
)

// props decodes the short string properties and the headers' string
// entries of a content header frame, for checks.
func decode(t *testing.T, frame []byte) (flags uint16, headers map[string]string, rest []byte) {
	t.Helper()
	payload := frame[frameHeaderSize : len(frame)-1]
	if int(binary.BigEndian.Uint32(frame[3:7])) != len(payload) {
		t.Fatalf("frame size %d, payload %d", binary.BigEndian.Uint32(frame[3:7]), len(payload))
	}
	flags = binary.BigEndian.Uint16(payload[12:14])
	r := fieldReader{b: payload, off: 14}
	if flags&fContentType != 0 {
		r.skipShortstr()
	}
	headers = map[string]string{}
	if flags&flagHeaders != 0 {
		body, removed, err := r.table()
		if err != "" || len(removed) > 0 {
			t.Fatalf("rewritten headers not clean: %q %q", err, removed)
		}
		tr := fieldReader{b: body}
		for tr.off < len(body) {
			s := tr.off
			tr.skipShortstr()
			key := string(body[s+1 : tr.off])
			vs := tr.off
			tr.field(0)
			v := body[vs:tr.off]
			if v[0] == 'S' {
				headers[key] = string(v[5:])
			} else {
				headers[key] = "<" + string(v[0]) + ">"
			}
		}
	}
	return flags, headers, payload[r.off:]
}

func TestSanitizeContentHeader(t *testing.T) {
	tooMany := make([][]byte, 0, maxContainerElements+1)
	for i := range maxContainerElements + 1 {
		tooMany = append(tooMany, entry(strings.Repeat("k", 1+i%200)+string(rune('a'+i%26))+string(rune('a'+i/26%26))+string(rune('a'+i/676)), []byte{'V'}))
	}
	manyInside := make([][]byte, 0, maxContainerElements+1)
	for range maxContainerElements + 1 {
		manyInside = append(manyInside, []byte{'V'})
	}
	cases := []struct {
		name    string
		frame   []byte
		clean   bool
		reason  string
		headers map[string]string // expected string headers of the rewrite
	}{
		{name: "no properties", frame: headerFrame(0), clean: true},
		{name: "32 deep", frame: headerFrame(flagHeaders, table(entry("d", deep(32)))), clean: true},
		{name: "every type", frame: headerFrame(fContentType|flagHeaders|fMessageID, shortstr("text/plain"), table(
			entry("t", []byte{'t', 1}), entry("B", []byte{'B', 1}), entry("b", []byte{'b', 1}),
			entry("s", []byte{'s', 0, 1}), entry("u", []byte{'u', 0, 1}), entry("I", []byte{'I', 0, 0, 0, 1}),
			entry("i", []byte{'i', 0, 0, 0, 1}), entry("f", []byte{'f', 0, 0, 0, 1}), entry("l", []byte{'l', 0, 0, 0, 0, 0, 0, 0, 1}),
			entry("d", []byte{'d', 0, 0, 0, 0, 0, 0, 0, 1}), entry("T", []byte{'T', 0, 0, 0, 0, 0, 0, 0, 1}),
			entry("D", []byte{'D', 2, 0, 0, 0, 1}), entry("V", []byte{'V'}), entry("S", str("x")),
			entry("x", longBytes('x', []byte{1, 2})), entry("A", longBytes('A', append(str("a"), 'V'))),
		), shortstr("id")), clean: true},
		{
			name:    "33 deep",
			frame:   headerFrame(fContentType|flagHeaders|fMessageID, shortstr("text/plain"), table(entry("keep", str("me")), entry("deep", deep(33)), entry("after", str("too"))), shortstr("id-1")),
			reason:  `headers removed: "deep" (nested deeper than 32 levels)`,
			headers: map[string]string{"keep": "me", "after": "too"},
		},
		{
			name:   "33 deep in an array",
			frame:  headerFrame(flagHeaders, table(entry("a", longBytes('A', deep(32))))),
			reason: `"a" (nested deeper than 32 levels)`,
		},
		{
			name:   "unknown type",
			frame:  headerFrame(flagHeaders|fAppID, table(entry("ok", str("1")), entry("bad", []byte{'Z', 1, 2}), entry("lost", str("2"))), shortstr("app")),
			reason: `"bad" and all after it (unknown field type 'Z')`, headers: map[string]string{"ok": "1"},
		},
		{
			name:   "too many entries",
			frame:  headerFrame(flagHeaders, table(tooMany...)),
			reason: "entries beyond 8191",
		},
		{
			name:   "too many in an array",
			frame:  headerFrame(flagHeaders, table(entry("arr", longBytes('A', bytes.Join(manyInside, nil))))),
			reason: `"arr" (more than 8192 entries)`,
		},
		{
			name:   "negative byte array",
			frame:  headerFrame(flagHeaders, table(entry("x", []byte{'x', 0xff, 0xff, 0xff, 0xff}))),
			reason: `"x" and all after it (invalid length)`,
		},
		{
			name:   "truncated property",
			frame:  headerFrame(fContentType|fMessageID, shortstr("text/plain"), []byte{10, 'a'}),
			reason: "properties from message_id on removed (truncated)",
		},
		{
			name:   "forged marker",
			frame:  headerFrame(flagHeaders, table(entry(transport.HeaderMalformed, str("forged")), entry("deep", deep(40)))),
			reason: `"deep" (nested deeper than 32 levels)`, headers: map[string]string{},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, why := sanitizeContentHeader(c.frame)
			if c.clean {
				if out != nil {
					t.Fatalf("rewritten: %q", why)
				}
				return
			}
			if out == nil {
				t.Fatal("not rewritten")
			}
			if !strings.Contains(why, c.reason) {
				t.Errorf("reason %q, want it to contain %q", why, c.reason)
			}
			if again, why := sanitizeContentHeader(out); again != nil {
				t.Fatalf("the rewrite is not clean: %q", why)
			}
			if !bytes.Equal(out[:frameHeaderSize-4], c.frame[:frameHeaderSize-4]) || !bytes.Equal(out[7:19], c.frame[7:19]) {
				t.Error("frame type, channel, class, weight or body size changed")
			}
			_, headers, _ := decode(t, out)
			if headers[transport.HeaderMalformed] != why {
				t.Errorf("marker %q, want %q", headers[transport.HeaderMalformed], why)
			}
			for k, v := range c.headers {
				if headers[k] != v {
					t.Errorf("header %q = %q, want %q", k, headers[k], v)
				}
			}
			if c.headers != nil && len(headers) != len(c.headers)+1 {
				t.Errorf("headers %v, want %v and the marker", headers, c.headers)
			}
		})
	}
}

// TestSanitizePreservesOtherProperties: properties around the headers
// come through a rewrite byte for byte.
func TestSanitizePreservesOtherProperties(t *testing.T) {
	f := headerFrame(fContentType|flagHeaders|fMessageID|fAppID, shortstr("text/plain"), table(entry("deep", deep(33))), shortstr("id-1"), shortstr("app"))
	out, _ := sanitizeContentHeader(f)
	flags, _, rest := decode(t, out)
	if flags != fContentType|flagHeaders|fMessageID|fAppID {
		t.Errorf("flags %#x", flags)
	}
	if want := append(shortstr("id-1"), shortstr("app")...); !bytes.Equal(rest, want) {
		t.Errorf("after the headers %q, want %q", rest, want)
	}
}

// TestFrameConnStreams reads a method frame, a poisoned content header
// and a body frame through a frameConn a few bytes at a time: the other
// frames come through unchanged, the header rewritten.
func TestFrameConnStreams(t *testing.T) {
	method := []byte{1, 0, 1, 0, 0, 0, 4, 0, 60, 0, 60, frameEnd}
	bad := headerFrame(flagHeaders, table(entry("deep", deep(33))))
	body := []byte{3, 0, 1, 0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o', frameEnd}
	heartbeat := []byte{8, 0, 0, 0, 0, 0, 0, frameEnd}
	good := headerFrame(fAppID, shortstr("app"))
	fixed, _ := sanitizeContentHeader(bad)
	want := bytes.Join([][]byte{method, fixed, body, heartbeat, method, good, body}, nil)

	server, client := net.Pipe()
	defer client.Close()
	go func() {
		for _, f := range [][]byte{method, bad, body, heartbeat, method, good, body} {
			server.Write(f)
		}
		server.Close()
	}()
	var rewrites []string
	fc := newFrameConn(client, func(ch uint16, why string) {
		if ch != 1 {
			t.Errorf("channel %d", ch)
		}
		rewrites = append(rewrites, why)
	})
	_ = fc.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got []byte
	buf := make([]byte, 3)
	for {
		n, err := fc.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read\n%q\nwant\n%q", got, want)
	}
	if len(rewrites) != 1 {
		t.Errorf("rewrites %q, want one", rewrites)
	}
}

// BenchmarkFrameConn reads typical deliveries (basic.deliver, a content
// header with Warren's headers, a 100-byte body) through a frameConn: the
// filter's cost per message.
func BenchmarkFrameConn(b *testing.B) {
	method := []byte{1, 0, 1, 0, 0, 0, 4, 0, 60, 0, 60, frameEnd}
	hdr := headerFrame(fContentType|flagHeaders|fMessageID|fAppID, shortstr("application/json"), table(
		entry("warren-path", str("/simple/echo")), entry("warren-deadline", []byte{'l', 0, 0, 1, 2, 3, 4, 5, 6}),
		entry("warren-version", []byte{'l', 0, 0, 0, 0, 0, 0, 0, 2}), entry("warren-to", str("fred")),
	), shortstr("0123456789abcdef0123456789abcdef"), shortstr("mapper-1"))
	body := append([]byte{3, 0, 1, 0, 0, 0, 100}, make([]byte, 100)...)
	body = append(body, frameEnd)
	msg := bytes.Join([][]byte{method, hdr, body}, nil)
	stream := bytes.Repeat(msg, 1000)
	buf := make([]byte, 4096)
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	for i := 0; i < b.N; i += 1000 {
		fc := newFrameConn(&readConn{Reader: bytes.NewReader(stream)}, nil)
		for {
			if _, err := fc.Read(buf); err != nil {
				break
			}
		}
	}
}

// readConn is a net.Conn that reads from a Reader.
type readConn struct {
	net.Conn
	io.Reader
}

func (c *readConn) Read(p []byte) (int, error) { return c.Reader.Read(p) }

// FuzzSanitizeContentHeader: any payload, read as a content header frame,
// never panics, and a rewrite is one the filter (and so amqp091) accepts,
// with the same frame type, channel, class, weight and body size.
func FuzzSanitizeContentHeader(f *testing.F) {
	f.Add(headerFrame(flagHeaders, table(entry("deep", deep(33))))[frameHeaderSize:])
	f.Add(headerFrame(fContentType|flagHeaders|fMessageID, shortstr("a"), table(entry("x", []byte{'Z'})), shortstr("id"))[frameHeaderSize:])
	f.Add(headerFrame(0xFFFF)[frameHeaderSize:])
	f.Fuzz(func(t *testing.T, payload []byte) {
		if len(payload) == 0 || payload[len(payload)-1] != frameEnd {
			payload = append(payload, frameEnd)
		}
		frame := []byte{frameHeader, 0, 7}
		frame = binary.BigEndian.AppendUint32(frame, uint32(len(payload)-1))
		frame = append(frame, payload...)
		out, why := sanitizeContentHeader(frame)
		if out == nil {
			return
		}
		if why == "" {
			t.Fatal("rewritten without a reason")
		}
		if again, why := sanitizeContentHeader(out); again != nil {
			t.Fatalf("the rewrite is not clean: %s", why)
		}
		if int(binary.BigEndian.Uint32(out[3:7])) != len(out)-frameHeaderSize-1 || out[len(out)-1] != frameEnd {
			t.Fatal("bad frame size or end")
		}
		if !bytes.Equal(out[:3], frame[:3]) || !bytes.Equal(out[7:19], frame[7:19]) {
			t.Fatal("frame type, channel, class, weight or body size changed")
		}
	})
}
