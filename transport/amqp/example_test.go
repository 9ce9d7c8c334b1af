package amqp_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
)

// This example needs a RabbitMQ broker (scripts/rabbitmq-up), so it is
// compiled but not run.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	url := os.Getenv("WARREN_AMQP_URL") // amqp://guest:guest@127.0.0.1:5672/
	tr, err := amqp.Dial(ctx, url, amqp.Config{ConnectionName: "example"})
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()

	q, err := tr.DeclareQueue(ctx, transport.Queue{Exclusive: true})
	if err != nil {
		log.Fatal(err)
	}
	deliveries, err := tr.Consume(ctx, q, transport.ConsumeOptions{Prefetch: 10})
	if err != nil {
		log.Fatal(err)
	}
	err = tr.Publish(ctx, transport.DefaultExchange, q,
		transport.Message{Body: []byte("hello"), ContentType: "text/plain"},
		transport.PublishOptions{Mandatory: true})
	if err != nil {
		log.Fatal(err)
	}
	d := <-deliveries
	fmt.Println(string(d.Body))
	if err := d.Ack(); err != nil {
		log.Fatal(err)
	}
}

// Publishes wait for the broker's confirm when asked; a mandatory message
// that no queue takes is transport.ErrUnroutable.
func ExampleTransport_Publish() {
	ctx := context.Background()
	tr, err := amqp.Dial(ctx, os.Getenv("WARREN_AMQP_URL"), amqp.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()

	err = tr.Publish(ctx, transport.DefaultExchange, "no-such-queue",
		transport.Message{Body: []byte("lost?")},
		transport.PublishOptions{Mandatory: true})
	fmt.Println(err)
}

// A Transport reconnects by itself after a connection loss; Stats counts
// what happened. Operations started during an outage wait for the
// reconnection, within their ctx.
func ExampleTransport_Stats() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr, err := amqp.Dial(ctx, os.Getenv("WARREN_AMQP_URL"), amqp.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()

	// ... rabbitmqctl close_all_connections "maintenance" ...

	if err := tr.Publish(ctx, "amq.fanout", "", transport.Message{}, transport.PublishOptions{Confirm: true}); err != nil {
		log.Fatal(err) // wraps transport.ErrConnectionLost and ctx.Err() if the broker stayed away
	}
	s := tr.Stats()
	fmt.Printf("%d losses, %d reconnection attempts, %d reconnections\n", s.Losses, s.Attempts, s.Reconnects)
}
