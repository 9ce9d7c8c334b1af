package interop_test

import (
	"context"
	"fmt"
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
