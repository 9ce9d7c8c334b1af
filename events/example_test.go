package events_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/warrenrpc/warren/events"
	"github.com/warrenrpc/warren/transport/mem"
)

// Example is Vincent's file server on the embedded broker: encrypters
// share the file.encrypt events (one of them gets each), and announce
// file.encrypted events, which an auditor gets all of.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	broker := mem.NewBroker()
	defer broker.Close()

	// Two encrypter processes in the group "encrypters".
	for _, name := range []string{"enc-1", "enc-2"} {
		bus, _ := events.New(broker.Connect(), events.Config{Identity: name})
		sub, err := bus.Subscribe(ctx, "file.encrypt", func(ctx context.Context, ev *events.Event) error {
			var job struct{ File string }
			if err := ev.Decode(&job); err != nil {
				return err // dead-lettered with the reason
			}
			// b.cast from inside the handler.
			return bus.Publish(ctx, "file.encrypted", map[string]string{"file": job.File})
		}, events.One("encrypters"), events.Durable())
		if err != nil {
			fmt.Println(err)
			return
		}
		defer sub.Close()
	}

	// An auditor that gets every file.* event.
	auditor, _ := events.New(broker.Connect(), events.Config{})
	seen := make(chan string, 10)
	sub, _ := auditor.Subscribe(ctx, "file.*", func(ctx context.Context, ev *events.Event) error {
		seen <- ev.Key + " " + string(ev.Payload)
		return nil
	})
	defer sub.Close()

	web, _ := events.New(broker.Connect(), events.Config{Identity: "web-1"})
	if err := web.Publish(ctx, "file.encrypt", map[string]string{"file": "/gfs1/file.dat"}); err != nil {
		fmt.Println(err)
		return
	}
	// Two queues, two routes: the order in which the auditor gets them is
	// not fixed.
	got := []string{<-seen, <-seen}
	slices.Sort(got)
	fmt.Println(got[0])
	fmt.Println(got[1])

	// Nobody listens to server.up: dropped, unless the publisher insists.
	fmt.Println(web.Publish(ctx, "server.up", nil))
	fmt.Println(web.Publish(ctx, "server.up", nil, events.Mandatory()))
	// Output:
	// file.encrypt {"file":"/gfs1/file.dat"}
	// file.encrypted {"file":"/gfs1/file.dat"}
	// <nil>
	// events: publish server.up: no subscriber took the event: transport: message unroutable
}

// ExampleBus_PublishStream publishes data too big for one message as a
// streamed event: the backup group's two subscribers share its chunks,
// and one of them runs the handler once, on the whole, checked data.
func ExampleBus_PublishStream() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	broker := mem.NewBroker()
	defer broker.Close()

	stored := make(chan string, 2)
	for _, name := range []string{"backup-1", "backup-2"} {
		bus, _ := events.New(broker.Connect(), events.Config{Identity: name})
		sub, err := bus.Subscribe(ctx, "file.uploaded", func(ctx context.Context, ev *events.Event) error {
			var file string
			if err := ev.Decode(&file); err != nil {
				return err
			}
			// A handler that stores would copy ev.Stream to a file.
			h := sha256.New()
			n, err := io.Copy(h, ev.Stream)
			if err != nil {
				return err
			}
			stored <- fmt.Sprintf("%s: %d bytes, sha256 %x", file, n, h.Sum(nil)[:4])
			return nil
		}, events.One("backup"))
		if err != nil {
			fmt.Println(err)
			return
		}
		defer sub.Close()
	}

	web, _ := events.New(broker.Connect(), events.Config{Identity: "web-1"})
	data := bytes.Repeat([]byte("warren "), 300_000) // 2.1 MB
	if err := web.PublishStream(ctx, "file.uploaded", "f.dat", bytes.NewReader(data), events.ChunkSize(64<<10)); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(<-stored)
	// Output:
	// f.dat: 2100000 bytes, sha256 37e946b2
}
