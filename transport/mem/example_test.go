package mem_test

import (
	"context"
	"fmt"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
)

// A worker queue on an embedded broker: publish, consume, acknowledge.
func ExampleNew() {
	ctx := context.Background()
	tr := mem.New()
	defer tr.Close()

	q, err := tr.DeclareQueue(ctx, transport.Queue{Name: "jobs"})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, job := range []string{"resize", "upload"} {
		tr.Publish(ctx, transport.DefaultExchange, q, transport.Message{Body: []byte(job)}, transport.PublishOptions{Confirm: true})
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	deliveries, err := tr.Consume(cctx, q, transport.ConsumeOptions{Prefetch: 1})
	if err != nil {
		fmt.Println(err)
		return
	}
	for range 2 {
		d := <-deliveries
		fmt.Printf("%s (redelivered %v)\n", d.Body, d.Redelivered)
		d.Ack()
	}
	// Output:
	// resize (redelivered false)
	// upload (redelivered false)
}

// Two connections to one broker: a message that a connection's consumer
// had not acknowledged when the connection closed goes to the next
// consumer, marked redelivered.
func ExampleBroker_Connect() {
	ctx := context.Background()
	b := mem.NewBroker()
	defer b.Close()
	worker1, worker2 := b.Connect(), b.Connect()

	q, _ := worker1.DeclareQueue(ctx, transport.Queue{Name: "work", Durable: true})
	worker1.Publish(ctx, transport.DefaultExchange, q, transport.Message{Body: []byte("job 1")}, transport.PublishOptions{})

	d1, _ := worker1.Consume(ctx, q, transport.ConsumeOptions{})
	d := <-d1
	fmt.Printf("worker 1 got %s\n", d.Body)
	worker1.Close() // crashes before acknowledging

	d2, _ := worker2.Consume(ctx, q, transport.ConsumeOptions{})
	d = <-d2
	fmt.Printf("worker 2 got %s (redelivered %v)\n", d.Body, d.Redelivered)
	d.Ack()
	// Output:
	// worker 1 got job 1
	// worker 2 got job 1 (redelivered true)
}

// A queue with a dead-letter exchange: a rejected message arrives there
// with the reason in its x-death header.
func ExampleConn_Publish_deadLetter() {
	ctx := context.Background()
	tr := mem.New()
	defer tr.Close()

	tr.DeclareExchange(ctx, transport.Exchange{Name: "dead", Kind: transport.Fanout})
	tr.DeclareQueue(ctx, transport.Queue{Name: "dead-letters"})
	tr.Bind(ctx, transport.Binding{Exchange: "dead", Queue: "dead-letters"})
	tr.DeclareQueue(ctx, transport.Queue{Name: "orders", DeadLetterExchange: "dead"})

	tr.Publish(ctx, transport.DefaultExchange, "orders", transport.Message{Body: []byte("malformed")}, transport.PublishOptions{})
	orders, _ := tr.Consume(ctx, "orders", transport.ConsumeOptions{})
	(<-orders).Nack(false)

	dead, _ := tr.Consume(ctx, "dead-letters", transport.ConsumeOptions{})
	select {
	case d := <-dead:
		death := d.Headers["x-death"].([]any)[0].(map[string]any)
		fmt.Println(string(d.Body), death["reason"], death["queue"], death["count"])
		d.Ack()
	case <-time.After(time.Second):
		fmt.Println("no dead letter")
	}
	// Output:
	// malformed rejected orders 1
}
