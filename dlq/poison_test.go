package dlq_test

import (
	"context"
	"strings"
	"testing"

	"github.com/warrenrpc/warren/dlq"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/wire"
)

// TestPoisonLetter: any agent user may publish to warren.dlx. A letter
// with headers nested 33 deep (more than amqp091-go reads) used to break
// the dlq tool's connection: list showed nothing and failed. It is listed
// with reason malformed, not replayed (with an error saying why), and
// purged; so is the head of a streamed event, whose data is gone; the
// other letters are handled as usual.
func TestPoisonLetter(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		tr := connect(t)
		ctx := t.Context()
		actor := fabrictest.Actor()
		dead, target := actor+".dead", actor+".target"
		for _, q := range []string{dead, target} {
			_, err := tr.DeclareQueue(ctx, transport.Queue{Name: q})
			must(t, err)
			defer tr.DeleteQueue(context.Background(), q)
		}
		var deep any = "bottom"
		for range 33 {
			deep = map[string]any{"n": deep}
		}
		letters := []transport.Message{
			{MessageID: actor + "-poison", Body: []byte(`1`), Headers: map[string]any{"deep": deep,
				"warren-original-exchange": "", "warren-original-routing-key": target}},
			{MessageID: actor + "-fine", Body: []byte(`2`), Headers: map[string]any{wire.HeaderReason: wire.CodeHandler,
				"warren-original-exchange": "", "warren-original-routing-key": target}},
			{MessageID: actor + "-head", Type: wire.TypeChunk, Body: []byte(`3`), Headers: map[string]any{wire.HeaderReason: wire.CodeStreamBroken,
				"warren-original-exchange": "", "warren-original-routing-key": target}},
		}
		for _, l := range letters {
			must(t, tr.Publish(ctx, transport.DefaultExchange, dead, l, transport.PublishOptions{Confirm: true}))
		}

		ls, err := dlq.List(ctx, tr, 0, nil, dlq.Queue(dead))
		must(t, err)
		if len(ls) != 3 {
			t.Fatalf("listed %d letters, want 3: %+v", len(ls), ls)
		}
		if l := ls[0]; l.MessageID != actor+"-poison" || l.Reason != dlq.ReasonMalformed ||
			!strings.Contains(l.Malformed, `"deep" (nested deeper than 32 levels)`) || !strings.Contains(l.Error, "malformed message") {
			t.Errorf("poison letter %+v", l)
		}
		if l := ls[1]; l.MessageID != actor+"-fine" || l.Reason != wire.CodeHandler || l.Malformed != "" {
			t.Errorf("fine letter %+v", l)
		}

		n, err := dlq.Replay(ctx, tr, nil, dlq.Queue(dead))
		if n != 1 || err == nil || !strings.Contains(err.Error(), actor+"-poison: not replayed: malformed") ||
			!strings.Contains(err.Error(), actor+"-head: not replayed: a chunk of a stream whose data is gone") {
			t.Fatalf("replay: %d, %v; want 1, the poison and the stream's head refused", n, err)
		}
		n, err = dlq.Purge(ctx, tr, nil, dlq.Queue(dead))
		if n != 2 || err != nil {
			t.Fatalf("purge: %d, %v", n, err)
		}
		if ls, err := dlq.List(ctx, tr, 0, nil, dlq.Queue(dead)); err != nil || len(ls) != 0 {
			t.Fatalf("after purge: %v, %v", ls, err)
		}
		if a, ok := fabrictest.Unwrap(tr).(*amqp.Transport); ok {
			if s := a.Stats(); s.Losses != 0 || s.Malformed == 0 {
				t.Errorf("%+v: want no connection loss, and the poison counted", s)
			}
		}
	})
}
