package wire

import (
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/transport"
)

func TestProgressRoundTrip(t *testing.T) {
	req := &transport.Delivery{Message: NewRequest(TypeRequest, "/a/b", "m", "id1", []byte("1"), time.Time{})}
	if WantsProgress(req) {
		t.Fatal("a request without reply_to or header wants progress")
	}
	req.ReplyTo = "q"
	AskProgress(&req.Message)
	if !WantsProgress(req) {
		t.Fatal("AskProgress not seen")
	}
	req.Headers[HeaderProgress] = "true" // only the boolean counts
	if WantsProgress(req) {
		t.Fatal("a string warren-progress accepted")
	}
	msg := NewProgress(req, "fred", "", 3, "files", []byte("0.5"))
	if msg.Type != TypeProgress || msg.CorrelationID != "id1" || msg.AppID != "fred" {
		t.Fatalf("progress %+v", msg)
	}
	p, err := ReadProgress(&transport.Delivery{Message: msg})
	if err != nil || p.Seq != 3 || p.Key != "files" {
		t.Fatalf("ReadProgress = %+v, %v", p, err)
	}
	for _, bad := range []transport.Message{
		{Type: TypeReply, Body: []byte("1"), Headers: map[string]any{HeaderProgressSeq: int64(1)}},
		{Type: TypeProgress, Body: []byte("1")},
		{Type: TypeProgress, Body: []byte("1"), Headers: map[string]any{HeaderProgressSeq: int64(0)}},
		{Type: TypeProgress, Headers: map[string]any{HeaderProgressSeq: int64(1)}},
		{Type: TypeProgress, Body: []byte("1"), Headers: map[string]any{HeaderProgressSeq: int64(1), HeaderProgressKey: strings.Repeat("k", 256)}},
		{Type: TypeProgress, Body: []byte("1"), Headers: map[string]any{HeaderProgressSeq: int64(1), transport.HeaderMalformed: "x"}},
	} {
		if _, err := ReadProgress(&transport.Delivery{Message: bad}); err == nil {
			t.Errorf("ReadProgress(%+v) accepted", bad)
		}
	}
}
