package amqp_test

import (
	"runtime"
	"testing"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
)

// BenchmarkPublishConsumeAck measures the round trip through the broker:
// unconfirmed publishes, one consumer with prefetch 100 acking each
// delivery.
func BenchmarkPublishConsumeAck(b *testing.B) {
	tr := dial(b, amqp.Config{})
	q := tempQueue(b, tr, transport.Queue{})
	ds, err := tr.Consume(b.Context(), q, transport.ConsumeOptions{Prefetch: 100})
	if err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 256)
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	sent := 0
	pubErr := make(chan error, 1)
	go func() {
		for range b.N {
			if err := tr.Publish(b.Context(), "", q, transport.Message{Body: body}, transport.PublishOptions{}); err != nil {
				pubErr <- err
				return
			}
		}
		pubErr <- nil
	}()
	for sent < b.N {
		select {
		case d := <-ds:
			if err := d.Ack(); err != nil {
				b.Fatal(err)
			}
			sent++
		case err := <-pubErr:
			if err != nil {
				b.Fatal(err)
			}
			pubErr = nil
		}
	}
}

// BenchmarkConfirmedPublish measures confirmed publishes to a queue, with
// one publisher and with 64 concurrent publishers.
func BenchmarkConfirmedPublish(b *testing.B) {
	for _, publishers := range []int{1, 64} {
		b.Run(map[int]string{1: "publishers=1", 64: "publishers=64"}[publishers], func(b *testing.B) {
			tr := dial(b, amqp.Config{})
			q := tempQueue(b, tr, transport.Queue{MaxLength: 10000})
			body := make([]byte, 256)
			b.SetBytes(int64(len(body)))
			opts := transport.PublishOptions{Confirm: true}
			if publishers == 1 {
				for b.Loop() {
					if err := tr.Publish(b.Context(), "", q, transport.Message{Body: body}, opts); err != nil {
						b.Fatal(err)
					}
				}
				return
			}
			b.SetParallelism(max(1, publishers/runtime.GOMAXPROCS(0)))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := tr.Publish(b.Context(), "", q, transport.Message{Body: body}, opts); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
