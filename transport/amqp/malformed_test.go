package amqp_test

import (
	"strings"
	"testing"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
)

// nested returns a value of n tables, one inside the other.
func nested(n int) any {
	var v any = "bottom"
	for range n {
		v = map[string]any{"n": v}
	}
	return v
}

// TestMalformedHeadersDelivered: a message whose headers hold a table nested
// 33 deep (amqp091-go refuses more than 32 and used to shut the whole
// connection down, the message requeued to kill every reconnection) is
// delivered with that header removed and transport.HeaderMalformed set, on
// every kind of queue; the consumer goes on with the next message and the
// connection stays up. 32 levels pass unchanged.
func TestMalformedHeadersDelivered(t *testing.T) {
	kinds := []struct {
		name string
		q    transport.Queue
		opts transport.ConsumeOptions
	}{
		{"classic", transport.Queue{}, transport.ConsumeOptions{Prefetch: 10}},
		{"exclusive", transport.Queue{Exclusive: true}, transport.ConsumeOptions{AutoAck: true}},
		{"quorum", transport.Queue{Type: transport.Quorum, DeliveryLimit: 5}, transport.ConsumeOptions{Prefetch: 10}},
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			tr := dial(t, amqp.Config{})
			q := tempQueue(t, tr, k.q)
			ds, err := tr.Consume(t.Context(), q, k.opts)
			if err != nil {
				t.Fatal(err)
			}
			send := func(body string, h map[string]any) {
				t.Helper()
				msg := transport.Message{Body: []byte(body), MessageID: body, Headers: h, ReplyTo: "reply-here"}
				if err := tr.Publish(t.Context(), "", q, msg, transport.PublishOptions{Confirm: true}); err != nil {
					t.Fatal(err)
				}
			}
			send("poison", map[string]any{"keep": "me", "deep": nested(33), "warren-path": "/a/b"})
			send("fine", map[string]any{"deep": nested(32)})
			d := receive(t, ds)
			if string(d.Body) != "poison" || d.MessageID != "poison" || d.ReplyTo != "reply-here" {
				t.Fatalf("got %q id %q reply_to %q, want the poison with its properties", d.Body, d.MessageID, d.ReplyTo)
			}
			why, _ := d.Headers[transport.HeaderMalformed].(string)
			if !strings.Contains(why, `"deep" (nested deeper than 32 levels)`) {
				t.Errorf("%s = %q", transport.HeaderMalformed, why)
			}
			if d.Headers["keep"] != "me" || d.Headers["warren-path"] != "/a/b" || d.Headers["deep"] != nil {
				t.Errorf("headers %v: want keep and warren-path, without deep", d.Headers)
			}
			_ = d.Ack()
			d = receive(t, ds)
			if string(d.Body) != "fine" || d.Headers[transport.HeaderMalformed] != nil || d.Headers["deep"] == nil {
				t.Fatalf("got %q with headers %v, want fine with its 32-deep header", d.Body, d.Headers)
			}
			_ = d.Ack()
			if s := tr.Stats(); s.Losses != 0 || s.Malformed != 1 {
				t.Errorf("stats %+v: want no loss and one malformed", s)
			}
		})
	}
}
