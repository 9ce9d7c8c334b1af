package amqp_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
)

// TestDisruptiveBlockedPublishWaits raises a memory alarm on the broker,
// which blocks every publishing connection: Publish waits, honouring ctx,
// and goes through once the alarm clears; consumers keep receiving.
func TestDisruptiveBlockedPublishWaits(t *testing.T) {
	testenv.RequireDisruptive(t)
	tr := dial(t, amqp.Config{})
	q := tempQueue(t, tr, transport.Queue{})
	if err := tr.Publish(t.Context(), "", q, transport.Message{Body: []byte("before")}, transport.PublishOptions{Confirm: true}); err != nil {
		t.Fatal(err)
	}
	ds, err := tr.Consume(t.Context(), q, transport.ConsumeOptions{Prefetch: 10})
	if err != nil {
		t.Fatal(err)
	}

	testenv.Rabbitmqctl(t, "set_vm_memory_high_watermark", "absolute", "1")
	restored := false
	restore := func() {
		if !restored {
			restored = true
			testenv.Rabbitmqctl(t, "set_vm_memory_high_watermark", "0.4")
		}
	}
	t.Cleanup(restore)

	// The broker blocks a connection when it publishes during the alarm:
	// publish until a confirmed publish times out waiting.
	testenv.WaitFor(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		err := tr.Publish(ctx, "", q, transport.Message{Body: []byte("probe")}, transport.PublishOptions{Confirm: true})
		if errors.Is(err, context.DeadlineExceeded) {
			return nil
		}
		return errors.New("publish not blocked yet")
	})
	// The consuming connection is not blocked.
	if d := receive(t, ds); string(d.Body) != "before" {
		t.Fatalf("got %q, want before", d.Body)
	} else {
		d.Ack()
	}

	done := make(chan error, 1)
	go func() {
		done <- tr.Publish(t.Context(), "", q, transport.Message{Body: []byte("after")}, transport.PublishOptions{Confirm: true})
	}()
	select {
	case err := <-done:
		t.Fatalf("publish returned %v while blocked", err)
	case <-time.After(200 * time.Millisecond):
	}
	restore()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("publish still blocked 20s after the alarm cleared")
	}
}
