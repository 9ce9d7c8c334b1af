package events_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenrpc/warren/events"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/wire"
)

// BenchmarkPublish measures confirmed event publishes on RabbitMQ, one at
// a time (serial) and from 8 goroutines (parallel), through events.Bus
// (warren) and through amqp091-go by hand (raw: a channel in confirm
// mode, the same exchange, key and JSON-encoded payload, waiting for each
// confirm), in
// the same run. One queue bound to the key is drained by an auto-ack
// consumer. events/s is the figure; the ratio warren/raw is the cost of
// the fabric.
//
// Three more variants split that cost (docs/benchmarks.md): rawprops is
// raw with what events.Bus adds to the message (a 32-character random
// message id and a timestamp); rawhop is raw waiting as transport/amqp
// does for mandatory publishes (and did for all before eea7323), for a
// dispatcher goroutine fed by NotifyPublish rather than on the deferred
// confirmation; tr is the raw message published through
// the transport (transport/amqp, its frame filter included) without
// events.Bus.
func BenchmarkPublish(b *testing.B) {
	url := testenv.AMQPURL(b)
	ctx := context.Background()
	key := fabrictest.Actor() + ".bench"
	tr, err := amqp.Dial(ctx, url, amqp.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	bus, err := events.New(tr, events.Config{Identity: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	// The sink: declared through a Bus, drained without handlers.
	sinkTr, err := amqp.Dial(ctx, url, amqp.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer sinkTr.Close()
	if err := bus.Publish(ctx, key, nil); err != nil { // declares the exchange
		b.Fatal(err)
	}
	q, err := sinkTr.DeclareQueue(ctx, transport.Queue{Exclusive: true})
	if err != nil {
		b.Fatal(err)
	}
	if err := sinkTr.Bind(ctx, transport.Binding{Exchange: wire.EventExchange, Queue: q, Key: key}); err != nil {
		b.Fatal(err)
	}
	sink, err := sinkTr.Consume(ctx, q, transport.ConsumeOptions{AutoAck: true})
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for range sink {
		}
	}()

	conn, err := amqp091.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	payload := map[string]any{"file": "/gfs1/file.dat", "key_id": 1234, "enc": "blowfish"}
	raw := func() error {
		body, err := json.Marshal(payload) // as any publisher of a Go value must
		if err != nil {
			return err
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, wire.EventExchange, key, false, false, amqp091.Publishing{
			ContentType: wire.ContentJSON, Type: wire.TypeEvent, AppId: "bench", MessageId: "m", Body: body,
		})
		if err != nil {
			return err
		}
		if _, err := dc.WaitContext(ctx); err != nil {
			return err
		}
		return nil
	}
	rawProps := func() error {
		body, err := json.Marshal(payload)
		if err != nil {
			return err
		}
		var idb [16]byte
		_, _ = rand.Read(idb[:])
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, wire.EventExchange, key, false, false, amqp091.Publishing{
			ContentType: wire.ContentJSON, Type: wire.TypeEvent, AppId: "bench", MessageId: hex.EncodeToString(idb[:]), Timestamp: time.Now(), Body: body,
		})
		if err != nil {
			return err
		}
		if _, err := dc.WaitContext(ctx); err != nil {
			return err
		}
		return nil
	}
	ch2, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := ch2.Confirm(false); err != nil {
		b.Fatal(err)
	}
	confs := ch2.NotifyPublish(make(chan amqp091.Confirmation, 1024))
	var hopMu sync.Mutex
	hopPending := map[uint64]chan error{}
	go func() {
		for c := range confs {
			hopMu.Lock()
			d := hopPending[c.DeliveryTag]
			delete(hopPending, c.DeliveryTag)
			hopMu.Unlock()
			if d != nil {
				d <- nil
			}
		}
	}()
	rawHop := func() error {
		body, err := json.Marshal(payload)
		if err != nil {
			return err
		}
		done := make(chan error, 1)
		// Held over the publish, as transport/amqp holds its slot's
		// lock, so that the tag is the publish's.
		hopMu.Lock()
		tag := ch2.GetNextPublishSeqNo()
		hopPending[tag] = done
		err = ch2.PublishWithContext(ctx, wire.EventExchange, key, false, false, amqp091.Publishing{
			ContentType: wire.ContentJSON, Type: wire.TypeEvent, AppId: "bench", MessageId: "m", Body: body,
		})
		if err != nil {
			delete(hopPending, tag)
		}
		hopMu.Unlock()
		if err != nil {
			return err
		}
		return <-done
	}
	warren := func() error { return bus.Publish(ctx, key, payload) }
	trPub := func() error {
		body, err := json.Marshal(payload)
		if err != nil {
			return err
		}
		return tr.Publish(ctx, wire.EventExchange, key, transport.Message{ContentType: wire.ContentJSON, Type: wire.TypeEvent, AppID: "bench", MessageID: "m", Body: body}, transport.PublishOptions{Confirm: true})
	}
	for _, c := range []struct {
		name string
		f    func() error
	}{{"warren", warren}, {"raw", raw}, {"rawprops", rawProps}, {"rawhop", rawHop}, {"tr", trPub}} {
		b.Run("serial/"+c.name, func(b *testing.B) {
			for b.Loop() {
				if err := c.f(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
		b.Run("parallel/"+c.name, func(b *testing.B) {
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := c.f(); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
