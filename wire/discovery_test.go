package wire

import (
	"errors"
	"testing"

	"github.com/warrenrpc/warren/transport"
)

func TestDiscoverRoundTrip(t *testing.T) {
	key, msg, err := NewDiscover(DiscoverQuestion{Verb: VerbStats, Name: "simple.v2", ID: "fred"}, "me", "q", "c1")
	if err != nil || key != "$SRV.STATS" || msg.Type != TypeDiscover || msg.ReplyTo != "q" || msg.CorrelationID != "c1" || msg.AppID != "me" {
		t.Fatalf("NewDiscover: %q %+v %v", key, msg, err)
	}
	d := &transport.Delivery{Message: msg, Exchange: ControlExchange, RoutingKey: key}
	q, err := ReadDiscover(d)
	if err != nil || q != (DiscoverQuestion{Verb: VerbStats, Name: "simple.v2", ID: "fred"}) {
		t.Fatalf("ReadDiscover: %+v %v", q, err)
	}
	if !q.Matches("simple.v2", "fred") || q.Matches("simple", "fred") || q.Matches("simple.v2", "bob") {
		t.Error("Matches")
	}
	reply, err := DiscoverReply(d, "fred", ServicePing{ServiceIdentity{Name: "simple.v2", ID: "fred", Version: "0.0.0", Metadata: map[string]string{}}, PingResponseType})
	if err != nil {
		t.Fatal(err)
	}
	body, typ, err := ReadDiscoverReply(&transport.Delivery{Message: reply}, "c1")
	if err != nil || typ != PingResponseType || string(body) != `{"name":"simple.v2","id":"fred","version":"0.0.0","metadata":{},"type":"io.nats.micro.v1.ping_response"}` {
		t.Fatalf("ReadDiscoverReply: %s %q %v", body, typ, err)
	}
}

func TestDiscoverBadInput(t *testing.T) {
	if _, _, err := NewDiscover(DiscoverQuestion{Verb: "HELLO"}, "me", "q", "c"); !errors.Is(err, ErrBadDiscover) {
		t.Errorf("bad verb: %v", err)
	}
	if _, _, err := NewDiscover(DiscoverQuestion{Verb: VerbPing}, "me", "", "c"); !errors.Is(err, ErrBadDiscover) {
		t.Errorf("no reply_to: %v", err)
	}
	for name, d := range map[string]*transport.Delivery{
		"other type":     {Message: transport.Message{Type: TypeAnnounce, ReplyTo: "q", CorrelationID: "c"}, RoutingKey: "$SRV.PING"},
		"bad verb":       {Message: transport.Message{Type: TypeDiscover, ReplyTo: "q", CorrelationID: "c"}, RoutingKey: "$SRV.KILL"},
		"no prefix":      {Message: transport.Message{Type: TypeDiscover, ReplyTo: "q", CorrelationID: "c"}, RoutingKey: "PING"},
		"no reply_to":    {Message: transport.Message{Type: TypeDiscover, CorrelationID: "c"}, RoutingKey: "$SRV.PING"},
		"no correlation": {Message: transport.Message{Type: TypeDiscover, ReplyTo: "q"}, RoutingKey: "$SRV.PING"},
	} {
		if _, err := ReadDiscover(d); !errors.Is(err, ErrBadDiscover) {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name, body := range map[string]string{
		"not json":   `{`,
		"other type": `{"name":"a","id":"b","type":"io.nats.micro.v1.schema_response"}`,
		"no name":    `{"id":"b","type":"io.nats.micro.v1.ping_response"}`,
	} {
		d := &transport.Delivery{Message: transport.Message{Type: TypeDiscoverReply, CorrelationID: "c", Body: []byte(body)}}
		if _, _, err := ReadDiscoverReply(d, "c"); !errors.Is(err, ErrBadDiscover) {
			t.Errorf("%s: %v", name, err)
		}
	}
	d := &transport.Delivery{Message: transport.Message{Type: TypeDiscoverReply, CorrelationID: "old", Body: []byte(`{"name":"a","id":"b","type":"io.nats.micro.v1.ping_response"}`)}}
	if _, _, err := ReadDiscoverReply(d, "c"); !errors.Is(err, ErrBadDiscover) {
		t.Errorf("another question's answer: %v", err)
	}
}
