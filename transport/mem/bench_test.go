package mem_test

import (
	"context"
	"testing"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
)

// BenchmarkPublishConsumeAck measures a message's trip through the broker:
// publish to the default exchange, deliver to a consumer, ack. The consumer
// runs in its own goroutine, so publishing and consuming overlap.
func BenchmarkPublishConsumeAck(b *testing.B) {
	for _, bc := range []struct {
		name     string
		prefetch int
		headers  map[string]any
	}{
		{name: "prefetch1", prefetch: 1},
		{name: "prefetch100", prefetch: 100},
		{name: "prefetch100-headers", prefetch: 100, headers: map[string]any{"warren-to": "agent-1", "warren-deadline": int64(1700000000000)}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			tr := mem.New()
			defer tr.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			q, err := tr.DeclareQueue(ctx, transport.Queue{Exclusive: true})
			if err != nil {
				b.Fatal(err)
			}
			ds, err := tr.Consume(ctx, q, transport.ConsumeOptions{Prefetch: bc.prefetch})
			if err != nil {
				b.Fatal(err)
			}
			msg := transport.Message{Body: make([]byte, 256), ContentType: "application/json", CorrelationID: "c1", Headers: bc.headers}
			// At most window messages are in flight, so the queue does not
			// grow without bound and the loop measures the whole trip.
			window := make(chan struct{}, 2*bc.prefetch)
			done := make(chan struct{})
			go func() {
				defer close(done)
				for d := range ds {
					d.Ack()
					<-window
				}
			}()
			b.ReportAllocs()
			for b.Loop() {
				window <- struct{}{}
				if err := tr.Publish(ctx, transport.DefaultExchange, q, msg, transport.PublishOptions{}); err != nil {
					b.Fatal(err)
				}
			}
			cancel()
			<-done
		})
	}
}

// BenchmarkRoundTrip measures a request and its reply, one at a time, the
// way a Warren request goes: publish to a service queue, a worker consumes
// and acks it and publishes a reply to the caller's exclusive queue, the
// caller receives it.
func BenchmarkRoundTrip(b *testing.B) {
	tr := mem.New()
	defer tr.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc, err := tr.DeclareQueue(ctx, transport.Queue{Exclusive: true})
	if err != nil {
		b.Fatal(err)
	}
	reply, err := tr.DeclareQueue(ctx, transport.Queue{Exclusive: true})
	if err != nil {
		b.Fatal(err)
	}
	reqs, err := tr.Consume(ctx, svc, transport.ConsumeOptions{Prefetch: 1})
	if err != nil {
		b.Fatal(err)
	}
	replies, err := tr.Consume(ctx, reply, transport.ConsumeOptions{AutoAck: true})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range reqs {
			tr.Publish(ctx, transport.DefaultExchange, d.ReplyTo, transport.Message{Body: d.Body, CorrelationID: d.CorrelationID}, transport.PublishOptions{})
			d.Ack()
		}
	}()
	msg := transport.Message{Body: []byte(`{"args":[1,2]}`), ReplyTo: reply, CorrelationID: "c1"}
	b.ReportAllocs()
	for b.Loop() {
		if err := tr.Publish(ctx, transport.DefaultExchange, svc, msg, transport.PublishOptions{Confirm: true}); err != nil {
			b.Fatal(err)
		}
		<-replies
	}
	cancel()
	<-done
}

// BenchmarkRoundTripChannels is the baseline for BenchmarkRoundTrip: the
// same two goroutine hand-offs over bare channels, without a broker.
func BenchmarkRoundTripChannels(b *testing.B) {
	reqs := make(chan *transport.Delivery, 1)
	replies := make(chan *transport.Delivery, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range reqs {
			replies <- d
		}
	}()
	d := &transport.Delivery{}
	for b.Loop() {
		reqs <- d
		<-replies
	}
	close(reqs)
	<-done
}
