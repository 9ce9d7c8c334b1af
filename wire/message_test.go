package wire

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
)

func TestReadDeadline(t *testing.T) {
	ms := time.Now().Add(time.Minute).UnixMilli()
	for _, v := range []any{ms, int32(1 << 30), uint32(1 << 31), float64(ms)} {
		dl, err := ReadDeadline(map[string]any{HeaderDeadline: v})
		if err != nil || dl.IsZero() {
			t.Errorf("ReadDeadline(%T %v) = %v, %v", v, v, dl, err)
		}
	}
	if dl, err := ReadDeadline(map[string]any{}); err != nil || !dl.IsZero() {
		t.Errorf("no header: %v, %v", dl, err)
	}
	for _, tc := range []struct {
		v    any
		says string
	}{
		{"1900000000000", "a string, want an integer"},
		{[]byte("1900000000000"), "a string, want an integer"},
		{int64(-5), "-5, want a positive integer"},
		{int64(0), "0, want a positive integer"},
		{1.5, "a float"},
		{math.NaN(), "a float"},
		{math.Inf(1), "a float"},
		{true, "a boolean"},
		{nil, "a value of type <nil>"},
		{uint64(5), "unsigned 64-bit"},
	} {
		_, err := ReadDeadline(map[string]any{HeaderDeadline: tc.v})
		if err == nil || !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), HeaderDeadline) {
			t.Errorf("ReadDeadline(%T %v) = %v, want an error with %q", tc.v, tc.v, err, tc.says)
		}
	}
}

func TestReadRequest(t *testing.T) {
	d := &transport.Delivery{Message: transport.Message{Type: TypeRequest, ReplyTo: "q", Headers: map[string]any{HeaderPath: int64(3)}}}
	_, err := ReadRequest(d)
	if err == nil || strings.Contains(err.Error(), `""`) || !strings.Contains(err.Error(), "warren-path: an integer, want a string") {
		t.Errorf("path of type int64: %v", err)
	}
	d = &transport.Delivery{Message: transport.Message{Type: TypePush, Headers: map[string]any{}}, Exchange: ServiceExchange, RoutingKey: "/a/b"}
	if r, err := ReadRequest(d); err != nil || r.Path != "/a/b" || !r.Push {
		t.Errorf("path from the routing key: %+v %v", r, err)
	}
	// A bad deadline is refused, with what could be read.
	d = &transport.Delivery{Message: transport.Message{Type: TypePush, Headers: map[string]any{HeaderPath: "/a/b", HeaderDeadline: "x"}}}
	if r, err := ReadRequest(d); err == nil || r.Path != "/a/b" {
		t.Errorf("string deadline: %+v %v", r, err)
	}
	// What NewRequest builds, ReadRequest reads.
	dl := time.Now().Add(time.Minute).Truncate(time.Millisecond)
	msg := NewRequest(TypeRequest, "/a/b", "me", "id1", []byte(`1`), dl)
	r, err := ReadRequest(&transport.Delivery{Message: msg})
	if err != nil || r.Path != "/a/b" || !r.Deadline.Equal(dl) || msg.Expiration <= 0 || msg.Expiration > time.Minute || msg.AppID != "me" {
		t.Errorf("round trip: %+v %v, expiration %v", r, err, msg.Expiration)
	}
}

func TestReplies(t *testing.T) {
	d := &transport.Delivery{Message: transport.Message{MessageID: "m1", AppID: "caller", Headers: map[string]any{HeaderPath: "/a/b"}}}
	ok := Reply(d, "fred", "", []byte(`5`))
	if ok.CorrelationID != "m1" || ok.Type != TypeReply || ok.AppID != "fred" || len(ok.Headers) != 0 || string(ok.Body) != "5" {
		t.Errorf("reply: %+v", ok)
	}
	if ReplyError(&transport.Delivery{Message: ok}, "/a/b") != nil {
		t.Error("a success read as an error")
	}
	e := ErrorReply(d, "fred", "caller", CodeBadRequest, "no")
	if e.Headers[HeaderPath] != "/a/b" || e.Headers[HeaderTo] != "caller" || e.Body != nil {
		t.Errorf("error reply: %+v", e)
	}
	rerr := ReplyError(&transport.Delivery{Message: e}, "/a/b")
	want := &RemoteError{Agent: "fred", Path: "/a/b", Code: CodeBadRequest, Message: "no"}
	if rerr == nil || *rerr != *want {
		t.Errorf("ReplyError = %+v, want %+v", rerr, want)
	}
}

// recorder records the options of every publish.
type recorder struct {
	transport.Transport
	opts []transport.PublishOptions
}

func (r *recorder) Publish(ctx context.Context, ex, key string, msg transport.Message, o transport.PublishOptions) error {
	r.opts = append(r.opts, o)
	return r.Transport.Publish(ctx, ex, key, msg, o)
}

func TestDeadLetter(t *testing.T) {
	if DeadLetterOptions != (transport.PublishOptions{Confirm: true, Mandatory: true}) {
		t.Fatalf("DeadLetterOptions = %+v: a dead letter must be confirmed and mandatory", DeadLetterOptions)
	}
	h := map[string]any{HeaderPath: "/a/b", "x-delivery-count": int64(2)}
	d := &transport.Delivery{Message: transport.Message{MessageID: "m", Expiration: time.Second, Headers: h, Body: []byte(`1`)},
		Exchange: RequestExchange, RoutingKey: "fred"}
	l := DeadLetter(d, CodeBadRequest, "why", "fred")
	for k, v := range map[string]any{HeaderReason: CodeBadRequest, HeaderError: "why", HeaderAgent: "fred",
		HeaderOriginalExchange: RequestExchange, HeaderOriginalRoutingKey: "fred", HeaderPath: "/a/b"} {
		if l.Headers[k] != v {
			t.Errorf("%s = %v, want %v", k, l.Headers[k], v)
		}
	}
	if _, there := l.Headers["x-delivery-count"]; there || l.Expiration != 0 || string(l.Body) != "1" {
		t.Errorf("dead letter %+v", l)
	}
	if len(h) != 2 {
		t.Errorf("the original's headers changed: %v", h)
	}
	if _, there := DeadLetter(d, "r", "t", "").Headers[HeaderAgent]; there {
		t.Error("warren-agent set without a sender")
	}

	// With no queue bound to the dead-letter exchange the publish fails
	// (mandatory): the caller must then not ack the original.
	b := mem.NewBroker()
	defer b.Close()
	rec := &recorder{Transport: b.Connect()}
	ctx := t.Context()
	if err := rec.DeclareExchange(ctx, transport.Exchange{Name: DeadLetterExchange, Kind: transport.Fanout}); err != nil {
		t.Fatal(err)
	}
	if err := PublishDeadLetter(ctx, rec, d, "r", "t", ""); !errors.Is(err, transport.ErrUnroutable) {
		t.Errorf("dead letter nobody takes: %v, want ErrUnroutable", err)
	}
	if len(rec.opts) != 1 || rec.opts[0] != DeadLetterOptions {
		t.Errorf("published with %+v", rec.opts)
	}
}

func TestHeartbeat(t *testing.T) {
	good := Heartbeat{Identity: "fred", Services: []string{"/a/b"}, Status: 0.5, PingInterval: 1000, Started: time.Now().UTC().Truncate(time.Second)}
	msg, err := NewHeartbeat(TypePing, good)
	if err != nil {
		t.Fatal(err)
	}
	hb, err := ReadHeartbeat(&transport.Delivery{Message: msg})
	if err != nil || hb.Identity != "fred" || hb.Queue != AgentQueue("fred") || !hb.Started.Equal(good.Started) || msg.AppID != "fred" {
		t.Fatalf("round trip: %+v %v", hb, err)
	}
	if _, err := NewHeartbeat(TypePing, Heartbeat{Identity: "x", Status: math.NaN()}); err == nil {
		t.Error("a status that is not JSON encoded")
	}
	body := func(f func(m map[string]any)) []byte {
		m := map[string]any{"identity": "fred", "queue": "warren.agent.fred", "services": []string{"/a/b"}, "status": 1, "ping_interval_ms": 1000}
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	for _, tc := range []struct {
		name, typ string
		body      []byte
		says      string
	}{
		{"type", "warren.pong", body(func(map[string]any) {}), `unknown type "warren.pong"`},
		{"json", TypePing, []byte(`{"identity":`), "body"},
		{"no identity", TypePing, body(func(m map[string]any) { delete(m, "identity") }), "identity"},
		{"identity space", TypePing, body(func(m map[string]any) { m["identity"] = "a b" }), "no spaces"},
		{"identity control", TypePing, body(func(m map[string]any) { m["identity"] = "a\x1b[2J" }), "control"},
		{"identity slash", TypePing, body(func(m map[string]any) { m["identity"] = "a/b" }), "slashes"},
		{"identity long", TypePing, body(func(m map[string]any) { m["identity"] = strings.Repeat("x", 300) }), "300 bytes"},
		{"queue", TypePing, body(func(m map[string]any) { m["queue"] = DeadLetterQueue }), `queue "warren.dead"`},
		{"service", TypePing, body(func(m map[string]any) { m["services"] = []string{"/a/b", "nope"} }), `service: warren: invalid service path "nope"`},
		{"service control", TypePing, body(func(m map[string]any) { m["services"] = []string{"/a/b\x07"} }), "control"},
		{"inactive", TypePing, body(func(m map[string]any) { m["inactive"] = []string{"/a"} }), "invalid service path"},
		{"tag", TypePing, body(func(m map[string]any) { m["tags"] = []string{"eu\x00"} }), "tag"},
		{"status huge", TypePing, []byte(`{"identity":"fred","services":[],"status":1e999,"ping_interval_ms":1000}`), "body"},
		{"no interval", TypePing, body(func(m map[string]any) { delete(m, "ping_interval_ms") }), "ping_interval_ms 0: want 10 to 3600000"},
		{"interval small", TypePing, body(func(m map[string]any) { m["ping_interval_ms"] = 1 }), "ping_interval_ms 1"},
		{"interval negative", TypePing, body(func(m map[string]any) { m["ping_interval_ms"] = -1000 }), "ping_interval_ms -1000"},
		{"interval large", TypePing, body(func(m map[string]any) { m["ping_interval_ms"] = int64(1e12) }), "ping_interval_ms 1000000000000"},
	} {
		_, err := ReadHeartbeat(&transport.Delivery{Message: transport.Message{Type: tc.typ, Body: tc.body}})
		if !errors.Is(err, ErrBadHeartbeat) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: %v, want ErrBadHeartbeat saying %q", tc.name, err, tc.says)
		}
	}
	// The queue type travels as queue_type; absent or unknown, it is not
	// classic, so requests keep their confirm.
	for _, qt := range []string{QueueClassic, QueueQuorum, "", "stream"} {
		good.QueueType = qt
		msg, err := NewHeartbeat(TypePing, good)
		if err != nil {
			t.Fatal(err)
		}
		if has := strings.Contains(string(msg.Body), `"queue_type"`); has != (qt != "") {
			t.Errorf("queue type %q: body %s", qt, msg.Body)
		}
		hb, err := ReadHeartbeat(&transport.Delivery{Message: msg})
		want := qt
		if qt == "stream" {
			want = "" // unknown: read as not reported
		}
		if err != nil || hb.QueueType != want || NoNack(hb.QueueType) != (qt == QueueClassic) {
			t.Errorf("queue type %q: read %q, %v", qt, hb.QueueType, err)
		}
	}
	if hb, err := ReadHeartbeat(&transport.Delivery{Message: transport.Message{Type: TypePing, Body: body(func(map[string]any) {})}}); err != nil || hb.QueueType != "" || NoNack(hb.QueueType) {
		t.Errorf("a heartbeat without queue_type (an older or outside agent): %+v %v, want no queue type", hb, err)
	}
	hb, err = ReadHeartbeat(&transport.Delivery{Message: transport.Message{Type: TypePing, Body: body(func(m map[string]any) { m["queue_type"] = "classic" })}})
	if err != nil || !NoNack(hb.QueueType) {
		t.Errorf("queue_type classic: %+v %v", hb, err)
	}
	// Any JSON status, and an unregister, are fine.
	for _, st := range []string{`"busy"`, `null`, `{"cpu":1}`, `-1000`} {
		b := []byte(`{"identity":"fred","services":["/a/b"],"status":` + st + `,"ping_interval_ms":10}`)
		if _, err := ReadHeartbeat(&transport.Delivery{Message: transport.Message{Type: TypeUnregister, Body: b}}); err != nil {
			t.Errorf("status %s: %v", st, err)
		}
	}
}

// TestOneBuilderPerShape keeps each message shape in this package: no
// other package publishes a dead letter itself (the three copies there were
// had drifted to three sets of publish options) or writes the dead-letter,
// attempts or deadline headers by hand.
func TestOneBuilderPerShape(t *testing.T) {
	forbidden := []*regexp.Regexp{
		regexp.MustCompile(`Publish\([^)]*DeadLetterExchange`),
		regexp.MustCompile(`"warren-(original-exchange|original-routing-key|attempts|deadline|status|error-code|dead-reason)"`),
		regexp.MustCompile(`Headers\[wire\.Header(Deadline|Reason|Status|Code|OriginalExchange|OriginalRoutingKey)\]\s*=`),
		regexp.MustCompile(`wire\.Header(Deadline|Reason|Status|Code):`),
	}
	root := ".."
	err := filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			switch e.Name() {
			case "wire", "testdata", "interop", ".git":
				// interop is an outside program: it must not use this
				// package.
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, re := range forbidden {
			if m := re.Find(b); m != nil {
				t.Errorf("%s: %s: build and read messages with package wire", p, m)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
