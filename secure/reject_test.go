package secure

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// publishSpy records the options of what is published to the dead-letter
// exchange.
type publishSpy struct {
	transport.Transport
	mu   sync.Mutex
	opts []transport.PublishOptions
}

func (s *publishSpy) Publish(ctx context.Context, ex, key string, msg transport.Message, o transport.PublishOptions) error {
	if ex == wire.DeadLetterExchange {
		s.mu.Lock()
		s.opts = append(s.opts, o)
		s.mu.Unlock()
	}
	return s.Transport.Publish(ctx, ex, key, msg, o)
}

// TestRejectionLetterMandatory: a rejection's dead letter is published
// like every other dead letter (wire.DeadLetterOptions: confirmed and
// mandatory). With no queue bound to warren.dlx it is not lost while the
// original is acked: the failure is counted and the original rejected.
// (Secure's copy was published {Confirm} only, and vanished.)
func TestRejectionLetterMandatory(t *testing.T) {
	f := newFixture(t)
	spy := &publishSpy{Transport: f.b.Connect()}
	rx, err := Wrap(spy, f.p.caConfig("fred"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rx.Close() })
	q := f.queue("qfred")
	f.consume(rx, q, false)

	f.publishRaw(q, request("fred", "/secret/launch")) // unsigned
	f.expectDead(ReasonUnsigned)

	if err := f.raw.Unbind(t.Context(), transport.Binding{Exchange: wire.DeadLetterExchange, Queue: wire.DeadLetterQueue}); err != nil {
		t.Fatal(err)
	}
	f.publishRaw(q, request("fred", "/secret/launch"))
	deadline := time.Now().Add(5 * time.Second)
	for rx.Stats().DeadLetterFailures == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("a rejection letter no queue takes was not counted as failed: %+v", rx.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	spy.mu.Lock()
	defer spy.mu.Unlock()
	if len(spy.opts) != 2 {
		t.Fatalf("%d dead-letter publishes, want 2", len(spy.opts))
	}
	for _, o := range spy.opts {
		if o != wire.DeadLetterOptions {
			t.Errorf("dead letter published with %+v, want %+v", o, wire.DeadLetterOptions)
		}
	}
}
