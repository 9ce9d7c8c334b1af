package amqp_test

import (
	"context"
	"errors"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
)

// TestNackedPublish publishes, confirmed, to a queue that rejects every
// publish (x-max-length 0, x-overflow reject-publish), which RabbitMQ
// nacks: each publish fails with ErrNacked, mandatory (settled by the
// dispatcher) or not (settled by its publisher from its deferred
// confirmation), and gives back its place in the confirm window, so that
// the next publishes, nacked or not, go through.
func TestNackedPublish(t *testing.T) {
	conn, err := amqp091.Dial(testenv.AMQPURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	full := name(t, "full")
	if _, err := ch.QueueDeclare(full, false, false, false, false, amqp091.Table{"x-max-length": int32(0), "x-overflow": "reject-publish"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = ch.QueueDelete(full, false, false, false) })
	tr := dial(t, amqp.Config{ConfirmWindow: 1})
	ok := tempQueue(t, tr, transport.Queue{})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for i := range 3 {
		for _, mandatory := range []bool{false, true} {
			err := tr.Publish(ctx, "", full, transport.Message{Body: []byte("x")}, transport.PublishOptions{Confirm: true, Mandatory: mandatory})
			if !errors.Is(err, transport.ErrNacked) {
				t.Fatalf("publish %d (mandatory %v) to a full queue: err = %v, want ErrNacked", i, mandatory, err)
			}
			if err := tr.Publish(ctx, "", ok, transport.Message{Body: []byte("y")}, transport.PublishOptions{Confirm: true, Mandatory: mandatory}); err != nil {
				t.Fatalf("publish %d (mandatory %v) after a nack: %v", i, mandatory, err)
			}
		}
	}
}
