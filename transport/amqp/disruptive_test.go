package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	waitBlocked := func(tr transport.Transport) {
		testenv.WaitFor(t, 20*time.Second, func() error {
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			err := tr.Publish(ctx, "", q, transport.Message{Body: []byte("probe")}, transport.PublishOptions{Confirm: true})
			if errors.Is(err, context.DeadlineExceeded) {
				return nil
			}
			return errors.New("publish not blocked yet")
		})
	}
	waitBlocked(tr)
	// The consuming connection is not blocked.
	if d := receive(t, ds); string(d.Body) != "before" {
		t.Fatalf("got %q, want before", d.Body)
	} else {
		d.Ack()
	}

	// Close does not hang on a blocked connection: the broker stopped
	// reading from it, so a channel.close would never be answered.
	tr2 := dial(t, amqp.Config{})
	waitBlocked(tr2)
	blocked := make(chan error, 1)
	go func() {
		blocked <- tr2.Publish(t.Context(), "", q, transport.Message{Body: []byte("blocked")}, transport.PublishOptions{Confirm: true})
	}()
	start := time.Now()
	tr2.Close()
	if err := <-blocked; !errors.Is(err, transport.ErrClosed) {
		t.Errorf("publish blocked during Close: err = %v", err)
	}
	t.Logf("Close of a blocked transport took %v", time.Since(start))

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

// TestDisruptiveBlockedAcrossReconnect: flow control keeps working on the
// connections a transport dials after a loss. During a memory alarm the
// broker closes the (blocked) publishing connection; the transport
// reconnects, the new connection is blocked in turn, publishes wait, and go
// through once the alarm clears.
func TestDisruptiveBlockedAcrossReconnect(t *testing.T) {
	testenv.RequireDisruptive(t)
	connName := name(t, "conn")
	tr := dial(t, amqp.Config{ConnectionName: connName})
	q := tempQueue(t, dial(t, amqp.Config{}), transport.Queue{})

	testenv.Rabbitmqctl(t, "set_vm_memory_high_watermark", "absolute", "1")
	restored := false
	restore := func() {
		if !restored {
			restored = true
			testenv.Rabbitmqctl(t, "set_vm_memory_high_watermark", "0.4")
		}
	}
	t.Cleanup(restore)
	waitBlocked := func() {
		testenv.WaitFor(t, 20*time.Second, func() error {
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			err := tr.Publish(ctx, "", q, transport.Message{Body: []byte("probe")}, transport.PublishOptions{Confirm: true})
			if errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, transport.ErrConnectionLost) {
				return nil
			}
			return fmt.Errorf("publish not blocked yet: %v", err)
		})
	}
	waitBlocked()
	closeConnection(t, connName+" (publish)")
	testenv.WaitFor(t, 20*time.Second, func() error {
		if tr.Reconnects() < 1 {
			return fmt.Errorf("stats %+v", tr.Stats())
		}
		return nil
	})
	waitBlocked()

	done := make(chan error, 1)
	go func() {
		done <- tr.Publish(t.Context(), "", q, transport.Message{Body: []byte("after")}, transport.PublishOptions{Confirm: true})
	}()
	restore()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("publish still blocked 20s after the alarm cleared")
	}
	t.Logf("stats %+v", tr.Stats())
}

// TestDisruptiveBlockedReported: while a memory alarm blocks publishing, a
// publish whose ctx ends says that the broker blocks publishes and why
// (RabbitMQ's connection.blocked reason), Transport.Blocked says so too, and
// Close of the blocked transport does not wait for a connection.close the
// broker will not read (it took 5s).
func TestDisruptiveBlockedReported(t *testing.T) {
	testenv.RequireDisruptive(t)
	tr := dial(t, amqp.Config{})
	q := tempQueue(t, dial(t, amqp.Config{}), transport.Queue{})
	if err := tr.Blocked(); err != nil {
		t.Fatalf("Blocked() = %v before the alarm", err)
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

	var perr error
	testenv.WaitFor(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		perr = tr.Publish(ctx, "", q, transport.Message{Body: []byte("probe")}, transport.PublishOptions{Confirm: true})
		var be *amqp.BlockedError
		if errors.As(perr, &be) {
			return nil
		}
		return fmt.Errorf("publish not reported blocked yet: %v", perr)
	})
	t.Logf("publish: %v", perr)
	if !errors.Is(perr, context.DeadlineExceeded) {
		t.Errorf("publish err = %v, want one wrapping context.DeadlineExceeded", perr)
	}
	if msg := perr.Error(); !strings.Contains(msg, "the broker is blocking publishes (low on memory): a memory alarm is raised") {
		t.Errorf("publish err = %q, want the reason", msg)
	}
	if err := tr.Blocked(); err == nil || !strings.Contains(err.Error(), "memory alarm") {
		t.Errorf("Blocked() = %v, want the memory alarm", err)
	}

	start := time.Now()
	tr.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close of a blocked transport took %v", d)
	} else {
		t.Logf("Close of a blocked transport took %v", d)
	}
	restore()
}
