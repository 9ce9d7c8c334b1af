package interop_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenrpc/warren/events"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport/amqp"
)

// TestInteropEvents: a subscriber and a publisher written from
// docs/protocol.md with amqp091-go alone join a durable Warren group:
// the raw side declares the group's queue with the arguments the page
// gives (RabbitMQ accepts them as equivalent to Warren's), publishes
// events, and the group's two members, Warren's and the raw one, share
// them, each event once.
func TestInteropEvents(t *testing.T) {
	url := testenv.AMQPURL(t)
	key := fabrictest.Actor() + ".interop"
	group := fabrictest.Actor()
	queue := "warren.events.one." + group
	fabrictest.DeleteQueues(t, url, queue)

	tr, err := amqp.Dial(t.Context(), url, amqp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	bus, err := events.New(tr, events.Config{}, events.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]string{}
	var dups []string
	note := func(who, id string) {
		mu.Lock()
		defer mu.Unlock()
		if seen[id] != "" {
			dups = append(dups, id)
		}
		seen[id] = who
	}
	sub, err := bus.Subscribe(t.Context(), key, func(_ context.Context, ev *events.Event) error {
		note("warren", ev.ID)
		return nil
	}, events.One(group), events.Durable())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	// The raw side: nothing from Warren below.
	conn, err := amqp091.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare("warren.events", "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, amqp091.Table{
		"x-queue-type": "quorum", "x-delivery-limit": 10, "x-dead-letter-exchange": "warren.dlx",
	}); err != nil {
		t.Fatalf("declare the group's queue as docs/protocol.md says: %v", err)
	}
	if err := ch.QueueBind(queue, key, "warren.events", false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Qos(1, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for d := range deliveries {
			note("raw", d.MessageId)
			_ = d.Ack(false)
		}
	}()
	pub, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Confirm(false); err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := range n {
		dc, err := pub.PublishWithDeferredConfirmWithContext(t.Context(), "warren.events", key, false, false, amqp091.Publishing{
			Type: "warren.event", ContentType: "application/json", MessageId: fmt.Sprintf("e%d", i),
			AppId: "raw-1", DeliveryMode: amqp091.Persistent, Body: fmt.Appendf(nil, `{"n":%d}`, i),
		})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := dc.WaitContext(t.Context()); !ok || err != nil {
			t.Fatalf("confirm: %v %v", ok, err)
		}
	}
	testenv.WaitFor(t, 20*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) != n {
			return fmt.Errorf("%d of %d events handled", len(seen), n)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if len(dups) > 0 {
		t.Errorf("events handled twice: %v", dups)
	}
	by := map[string]int{}
	for _, who := range seen {
		by[who]++
	}
	t.Logf("shared: %v", by)
}

// TestInteropStreamedEvent: a streamed event published as
// docs/protocol.md (Streamed events) says, with amqp091-go alone, chunk by
// chunk, confirmed, reaches a Warren group of two subscribers whole, once.
func TestInteropStreamedEvent(t *testing.T) {
	url := testenv.AMQPURL(t)
	key := fabrictest.Actor() + ".interop"
	group := fabrictest.Actor()
	fabrictest.DeleteQueues(t, url, "warren.events.one."+group)
	got := make(chan string, 4)
	for range 2 {
		tr, err := amqp.Dial(t.Context(), url, amqp.Config{})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		bus, err := events.New(tr, events.Config{}, events.WithLogger(testenv.Logger(t)))
		if err != nil {
			t.Fatal(err)
		}
		sub, err := bus.Subscribe(t.Context(), key, func(_ context.Context, ev *events.Event) error {
			h := sha256.New()
			n, err := io.Copy(h, ev.Stream)
			got <- fmt.Sprintf("%s %s %d %x", ev.From, ev.Payload, n, h.Sum(nil))
			return err
		}, events.One(group))
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
	}

	// The raw side: nothing from Warren below.
	conn, err := amqp091.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	publish := func(body []byte, contentType, id string, headers amqp091.Table) {
		t.Helper()
		dc, err := ch.PublishWithDeferredConfirmWithContext(t.Context(), "warren.events", key, false, false, amqp091.Publishing{
			Type: "warren.chunk", ContentType: contentType, CorrelationId: "s1", MessageId: id,
			AppId: "raw-1", DeliveryMode: amqp091.Persistent, Headers: headers, Body: body,
		})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := dc.WaitContext(t.Context()); !ok || err != nil {
			t.Fatalf("confirm: %v %v", ok, err)
		}
	}
	data := bytes.Repeat([]byte("0123456789"), 100_000) // 1 MB in chunks of 64 KiB
	const size = 64 << 10
	publish([]byte(`"f.dat"`), "application/json", "s1.0", amqp091.Table{"warren-stream": "s1", "warren-chunk": int64(0)})
	h := sha256.New()
	for seq, off := int64(1), 0; off < len(data); seq, off = seq+1, off+size {
		part := data[off:min(off+size, len(data))]
		h.Write(part)
		headers := amqp091.Table{"warren-stream": "s1", "warren-chunk": seq, "warren-stream-offset": int64(off)}
		if off+size >= len(data) {
			headers["warren-stream-chunks"] = seq + 1
			headers["warren-stream-size"] = int64(len(data))
			headers["warren-stream-sha256"] = hex.EncodeToString(h.Sum(nil))
		}
		publish(part, "application/octet-stream", fmt.Sprintf("s1.%d", seq), headers)
	}
	want := fmt.Sprintf(`raw-1 "f.dat" %d %x`, len(data), sha256.Sum256(data))
	select {
	case g := <-got:
		if g != want {
			t.Fatalf("handler got %q, want %q", g, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the streamed event was not handled")
	}
}
