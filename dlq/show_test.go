package dlq_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/dlq"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// inspectSignal is a transport that closes first at its first InspectQueue
// call: Show has walked the queue and waits for other consumers to go.
type inspectSignal struct {
	transport.Transport
	once  sync.Once
	first chan struct{}
}

func (s *inspectSignal) InspectQueue(ctx context.Context, name string) (transport.QueueInfo, error) {
	s.once.Do(func() { close(s.first) })
	return s.Transport.InspectQueue(ctx, name)
}

// TestShowWhileAnotherConsumerHoldsIt: a letter held by another consumer
// of the queue (another List or Show: a Tower page refreshing) while Show
// walks it is found once that consumer has gone, not reported missing.
func TestShowWhileAnotherConsumerHoldsIt(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		tr, holder := connect(t), connect(t)
		ctx := t.Context()
		q := fabrictest.Actor() + ".dead"
		_, err := tr.DeclareQueue(ctx, transport.Queue{Name: q})
		must(t, err)
		defer tr.DeleteQueue(context.Background(), q)
		letter := transport.Message{Type: wire.TypePush, MessageID: q + "-letter", Body: []byte(`1`)}
		must(t, tr.Publish(ctx, transport.DefaultExchange, q, letter, transport.PublishOptions{Confirm: true}))

		hctx, release := context.WithCancel(ctx)
		defer release()
		held, err := holder.Consume(hctx, q, transport.ConsumeOptions{Prefetch: 1})
		must(t, err)
		select {
		case <-held: // held, unacknowledged, until release
		case <-time.After(10 * time.Second):
			t.Fatal("the holder got nothing")
		}
		s := &inspectSignal{Transport: tr, first: make(chan struct{})}
		go func() {
			<-s.first // Show's walk saw nothing: the holder goes now
			release()
		}()
		l, err := dlq.Show(ctx, s, letter.MessageID, dlq.Queue(q))
		if err != nil {
			t.Fatalf("show while another consumer held the letter: %v", err)
		}
		if l.MessageID != letter.MessageID {
			t.Fatalf("show: %+v", l)
		}
	})
}
