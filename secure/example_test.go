package secure_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/warrenrpc/warren/secure"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

// A mapper and an agent that trust one CA exchange a message: it is
// encrypted to the agent and signed by the mapper on the broker, and
// arrives as it was sent.
func Example() {
	ctx := context.Background()
	ca, err := secure.NewCA("Example CA", 0)
	if err != nil {
		panic(err)
	}
	mapperID, _ := ca.Issue("mapper1", secure.CertOptions{})
	fredID, _ := ca.Issue("fred", secure.CertOptions{})

	broker := mem.NewBroker()
	defer broker.Close()
	// fred knows mapper1's certificate from the message itself: trusting
	// the CA is enough. mapper1 must find fred's certificate to encrypt to
	// it: here from a Store (in a fabric, from fred's heartbeats).
	store, _ := secure.NewStaticStore(fredID.Certificate())
	m, err := secure.Wrap(broker.Connect(), secure.Config{Identity: mapperID, Authority: ca.Authority(), Store: store})
	if err != nil {
		panic(err)
	}
	defer m.Close()
	fred, err := secure.Wrap(broker.Connect(), secure.Config{Identity: fredID, Authority: ca.Authority()})
	if err != nil {
		panic(err)
	}
	defer fred.Close()

	q, _ := fred.DeclareQueue(ctx, transport.Queue{Name: "fred-inbox"})
	in, _ := fred.Consume(ctx, q, transport.ConsumeOptions{})
	err = m.Publish(ctx, "", q, transport.Message{
		Type: wire.TypeRequest, ContentType: wire.ContentJSON, Body: []byte(`"hello fred"`),
		Headers: map[string]any{wire.HeaderPath: "/greet/hello", wire.HeaderTo: "fred"},
	}, transport.PublishOptions{})
	if err != nil {
		panic(err)
	}
	d := <-in
	fmt.Println(string(d.Body), "from", d.AppID)
	_ = d.Ack()
	fmt.Println("opened:", fred.Stats().Opened)
	// Output:
	// "hello fred" from mapper1
	// opened: 1
}

// Keys never reach logs: an Identity logs as its name and fingerprint.
func ExampleIdentity_LogValue() {
	ca, _ := secure.NewCA("Example CA", 0)
	id, _ := ca.Issue("fred", secure.CertOptions{})
	log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == "time" || a.Key == "fingerprint" {
				return slog.Attr{}
			}
			return a
		},
	}))
	log.Info("loaded", "identity", id, "key", id.Key())
	fmt.Printf("%v\n", id.Key())
	// Output:
	// level=INFO msg=loaded identity.name=fred identity.key=[redacted] key=[redacted]
	// [redacted]
}

// ConfigFromFiles is what a command line calls: certificate, key and CA
// files in, a Config for Wrap out.
func ExampleConfigFromFiles() {
	dir, _ := os.MkdirTemp("", "warren-secure")
	defer os.RemoveAll(dir)
	ca, _ := secure.NewCA("Example CA", 0)
	_ = ca.WriteFiles(dir+"/ca.crt", dir+"/ca.key")
	id, _ := ca.Issue("fred", secure.CertOptions{})
	_ = secure.WriteIdentity(id, dir+"/fred.crt", dir+"/fred.key")

	cfg, err := secure.ConfigFromFiles(dir+"/fred.crt", dir+"/fred.key", dir+"/ca.crt")
	if err != nil {
		panic(err)
	}
	tr, err := secure.Wrap(mem.New(), cfg)
	if err != nil {
		panic(err)
	}
	defer tr.Close()
	fmt.Println("agent identity:", cfg.Identity.Name())
	// Output:
	// agent identity: fred
}
