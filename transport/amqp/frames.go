package amqp

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/warrenrpc/warren/transport"
)

// The limits amqp091-go v1.16.0 puts on what it reads (read.go): a field
// table or array nested deeper than maxFieldDepth, or holding more than
// maxContainerElements entries, is ErrSyntax, and its connection's reader
// shuts the whole connection down with a 501 FRAME_ERROR.
const (
	maxFieldDepth        = 32
	maxContainerElements = 8192
)

// AMQP frame types, the frame end octet and the basic class's property flags
// in the order their values follow each other in a content header.
const (
	frameHeader     = 2
	frameEnd        = 0xCE
	frameHeaderSize = 7

	flagHeaders = 0x2000
)

const numProperties = 14

// propertyFlags lists the basic class's properties in wire order: each flag
// with the kind of its value.
var propertyFlags = [numProperties]struct {
	flag uint16
	kind byte // 's' short string, 'F' table, 'o' octet, 'T' 64-bit timestamp
	name string
}{
	{0x8000, 's', "content_type"},
	{0x4000, 's', "content_encoding"},
	{flagHeaders, 'F', "headers"},
	{0x1000, 'o', "delivery_mode"},
	{0x0800, 'o', "priority"},
	{0x0400, 's', "correlation_id"},
	{0x0200, 's', "reply_to"},
	{0x0100, 's', "expiration"},
	{0x0080, 's', "message_id"},
	{0x0040, 'T', "timestamp"},
	{0x0020, 's', "type"},
	{0x0010, 's', "user_id"},
	{0x0008, 's', "app_id"},
	{0x0004, 's', "reserved"},
}

// maxHeaderFrame bounds the content header frames the filter reads whole;
// a larger one (beyond any frame_max Warren negotiates) is passed on as it
// is, for amqp091 to refuse.
const maxHeaderFrame = 1 << 20

// frameConn is the socket of one AMQP connection (the plaintext side under
// TLS) as amqp091 reads it: every content header frame that amqp091 would
// refuse, killing the connection, is rewritten into one it accepts. The
// headers it cannot read are removed and transport.HeaderMalformed says
// why; every other property, the body and every other frame pass through
// unchanged. Only the connection's reader goroutine calls Read.
type frameConn struct {
	net.Conn
	r         *bufio.Reader
	out       []byte // bytes of a rewritten or buffered frame still to return
	pass      int64  // bytes of the current frame still to pass through
	buf       []byte
	hdr       [frameHeaderSize]byte
	onRewrite func(channel uint16, reason string)
}

func newFrameConn(c net.Conn, onRewrite func(channel uint16, reason string)) *frameConn {
	return &frameConn{Conn: c, r: bufio.NewReaderSize(c, 64<<10), onRewrite: onRewrite}
}

func (f *frameConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(f.out) > 0 {
		n := copy(p, f.out)
		f.out = f.out[n:]
		return n, nil
	}
	if f.pass > 0 {
		n, err := f.r.Read(p[:min(int64(len(p)), f.pass)])
		f.pass -= int64(n)
		return n, err
	}
	hdr := f.hdr[:]
	if n, err := io.ReadFull(f.r, hdr); err != nil {
		return copy(p, hdr[:n]), err
	}
	size := binary.BigEndian.Uint32(hdr[3:7])
	if hdr[0] != frameHeader || size > maxHeaderFrame {
		// Everything else streams through: amqp091 checks it.
		f.pass = int64(size) + 1
		n := copy(p, hdr)
		f.out = hdr[n:]
		return n, nil
	}
	need := frameHeaderSize + int(size) + 1
	if cap(f.buf) < need {
		f.buf = make([]byte, need)
	}
	frame := f.buf[:need]
	copy(frame, hdr)
	if n, err := io.ReadFull(f.r, frame[frameHeaderSize:]); err != nil {
		f.out = frame[:frameHeaderSize+n]
		n := copy(p, f.out)
		f.out = f.out[n:]
		return n, err
	}
	if fixed, reason := sanitizeContentHeader(frame); fixed != nil {
		frame = fixed
		if f.onRewrite != nil {
			f.onRewrite(binary.BigEndian.Uint16(hdr[1:3]), reason)
		}
	}
	n := copy(p, frame)
	f.out = frame[n:]
	return n, nil
}

// SetReadDeadline and friends go to the socket (amqp091 sets them for its
// heartbeats and the handshake); the embedded net.Conn provides them.
var _ interface{ SetReadDeadline(time.Time) error } = (*frameConn)(nil)

// sanitizeContentHeader checks a whole content header frame (frame header,
// payload, frame end) against what amqp091 reads. It returns nil when the
// frame is fine, or a rewritten frame and the reason for the rewrite.
func sanitizeContentHeader(frame []byte) ([]byte, string) {
	payload := frame[frameHeaderSize : len(frame)-1]
	// class-id, weight, body-size, property flags.
	const fixed = 2 + 2 + 8 + 2
	if len(payload) < fixed || frame[len(frame)-1] != frameEnd {
		return nil, "" // not a content header amqp091 could read: its error
	}
	flags := binary.BigEndian.Uint16(payload[12:14])
	r := fieldReader{b: payload, off: fixed}
	var (
		props    [numProperties][]byte
		problems []string
		headers  []byte // the headers table's entries, when readable
	)
	for i, p := range propertyFlags {
		if flags&p.flag == 0 {
			continue
		}
		start := r.off
		var err string
		switch p.kind {
		case 's':
			err = r.skipShortstr()
		case 'o':
			err = r.skip(1)
		case 'T':
			err = r.skip(8)
		case 'F':
			var entries []byte
			var removed []string
			entries, removed, err = r.table()
			if err == "" {
				headers = entries
				if len(removed) > 0 {
					problems = append(problems, "headers removed: "+strings.Join(removed, ", "))
				}
			}
		}
		if err != "" {
			// Unreadable from here on: keep what came before.
			problems = append(problems, fmt.Sprintf("properties from %s on removed (%s)", p.name, err))
			break
		}
		props[i] = r.b[start:r.off]
	}
	if len(problems) == 0 {
		return nil, ""
	}
	why := strings.Join(problems, "; ")
	var kept [][]byte
	if headers != nil {
		kept = keptEntries(headers)
	}
	props[2] = encodeTable(kept, why)
	out := make([]byte, 0, len(frame)+64+len(why))
	out = append(out, frame[:frameHeaderSize]...)
	out = append(out, payload[:12]...)
	var newFlags uint16
	for i, p := range propertyFlags {
		if props[i] != nil {
			newFlags |= p.flag
		}
	}
	out = binary.BigEndian.AppendUint16(out, newFlags)
	for i := range propertyFlags {
		out = append(out, props[i]...)
	}
	out = append(out, frameEnd)
	binary.BigEndian.PutUint32(out[3:7], uint32(len(out)-frameHeaderSize-1))
	return out, why
}

// encodeTable encodes a field table from the raw entries kept (each key
// and value as they came) and the transport.HeaderMalformed entry.
func encodeTable(kept [][]byte, why string) []byte {
	out := make([]byte, 4, 64+len(why))
	for _, e := range kept {
		out = append(out, e...)
	}
	out = append(out, byte(len(transport.HeaderMalformed)))
	out = append(out, transport.HeaderMalformed...)
	out = append(out, 'S')
	out = binary.BigEndian.AppendUint32(out, uint32(len(why)))
	out = append(out, why...)
	binary.BigEndian.PutUint32(out[:4], uint32(len(out)-4))
	return out
}

// keptEntries returns the entries of the headers table body b (as table
// returned it) that amqp091 can read, at most maxContainerElements-1 of
// them (room for the marker), without a transport.HeaderMalformed.
func keptEntries(b []byte) [][]byte {
	var kept [][]byte
	t := fieldReader{b: b}
	for t.off < len(b) && len(kept) < maxContainerElements-1 {
		start := t.off
		if t.skipShortstr() != "" {
			break
		}
		key := string(b[start+1 : t.off])
		why, resumable := t.field(0)
		if why != "" && !resumable {
			break
		}
		if why == "" && key != transport.HeaderMalformed {
			kept = append(kept, b[start:t.off])
		}
	}
	return kept
}

// fieldReader walks encoded AMQP values without building them.
type fieldReader struct {
	b   []byte
	off int
}

func (r *fieldReader) skip(n int) string {
	if n < 0 || len(r.b)-r.off < n {
		return "truncated"
	}
	r.off += n
	return ""
}

func (r *fieldReader) u8() (byte, string) {
	if r.off >= len(r.b) {
		return 0, "truncated"
	}
	r.off++
	return r.b[r.off-1], ""
}

func (r *fieldReader) u32() (uint32, string) {
	if len(r.b)-r.off < 4 {
		return 0, "truncated"
	}
	r.off += 4
	return binary.BigEndian.Uint32(r.b[r.off-4:]), ""
}

func (r *fieldReader) skipShortstr() string {
	n, err := r.u8()
	if err != "" {
		return err
	}
	return r.skip(int(n))
}

// maxShownKey bounds a header name quoted in a reason.
const maxShownKey = 64

// table reads the headers table at r as amqp091 would (at depth 0). It
// returns the table's body, and what amqp091 would refuse in it: one line
// per entry. err is set when the table cannot be delimited at all.
func (r *fieldReader) table() (body []byte, removed []string, err string) {
	n, err := r.u32()
	if err != "" {
		return nil, nil, err
	}
	if n > 1<<31-1 || int64(n) > int64(len(r.b)-r.off) {
		return nil, nil, "headers table truncated"
	}
	end := r.off + int(n)
	body = r.b[r.off:end]
	r.off = end
	t := fieldReader{b: body}
	count := 0
	for t.off < len(body) {
		start := t.off
		if t.skipShortstr() != "" {
			removed = append(removed, "the last entry (truncated)")
			break
		}
		key := body[start+1 : t.off]
		why, resumable := t.field(0)
		count++
		if why != "" {
			if !resumable {
				removed = append(removed, fmt.Sprintf("%s and all after it (%s)", showKey(key), why))
				break
			}
			removed = append(removed, fmt.Sprintf("%s (%s)", showKey(key), why))
		}
	}
	if count > maxContainerElements {
		removed = append(removed, fmt.Sprintf("entries beyond %d (more than amqp091 reads)", maxContainerElements-1))
	}
	return body, removed, ""
}

func showKey(key []byte) string {
	k := string(key)
	if len(k) > maxShownKey {
		k = k[:maxShownKey] + "..."
	}
	return fmt.Sprintf("%q", k)
}

// field skips one typed value at depth (the depth amqp091 gives the table
// or array holding it). It returns why amqp091 would refuse it, if it
// would, and whether the value's end is known all the same, so that the
// entries after it can be read.
func (r *fieldReader) field(depth int) (string, bool) {
	typ, err := r.u8()
	if err != "" {
		return err, false
	}
	switch typ {
	case 't', 'B', 'b':
		err = r.skip(1)
	case 's', 'u':
		err = r.skip(2)
	case 'I', 'i', 'f':
		err = r.skip(4)
	case 'l', 'd', 'T':
		err = r.skip(8)
	case 'D':
		err = r.skip(5)
	case 'V':
	case 'S', 'x':
		n, e := r.u32()
		if e != "" {
			return e, false
		}
		if n > 1<<31-1 {
			return "invalid length", false
		}
		err = r.skip(int(n))
	case 'F', 'A':
		return r.container(typ, depth+1)
	default:
		return fmt.Sprintf("unknown field type %q", typ), false
	}
	return err, err == ""
}

// container skips a table ('F') or array ('A') at depth.
func (r *fieldReader) container(typ byte, depth int) (string, bool) {
	n, err := r.u32()
	if err != "" {
		return err, false
	}
	if n > 1<<31-1 || int64(n) > int64(len(r.b)-r.off) {
		return "truncated", false
	}
	end := r.off + int(n)
	if depth > maxFieldDepth {
		r.off = end
		return fmt.Sprintf("nested deeper than %d levels", maxFieldDepth), true
	}
	c := fieldReader{b: r.b[:end], off: r.off}
	r.off = end
	for count := 0; c.off < end; count++ {
		if count >= maxContainerElements {
			return fmt.Sprintf("more than %d entries", maxContainerElements), true
		}
		if typ == 'F' {
			if e := c.skipShortstr(); e != "" {
				return e, true
			}
		}
		if why, _ := c.field(depth); why != "" {
			return why, true
		}
	}
	return "", true
}
