package secure

import (
	"context"
	"crypto/x509"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

// pki is a CA and identities issued by it, shared by the tests of the
// package (key generation is the slow part).
type pki struct {
	ca    *CA
	other *CA // a CA nobody trusts
	ids   map[string]*Identity
}

var (
	pkiOnce sync.Once
	pkiVal  *pki
	pkiErr  error
)

func testPKI(t testing.TB) *pki {
	t.Helper()
	pkiOnce.Do(func() {
		p := &pki{ids: map[string]*Identity{}}
		if p.ca, pkiErr = NewCA("Warren test CA", 0); pkiErr != nil {
			return
		}
		if p.other, pkiErr = NewCA("Evil CA", 0); pkiErr != nil {
			return
		}
		for _, n := range []string{"mapper1", "fred", "bob", "eve"} {
			if p.ids[n], pkiErr = p.ca.Issue(n, CertOptions{}); pkiErr != nil {
				return
			}
		}
		if p.ids["mallory"], pkiErr = p.other.Issue("mallory", CertOptions{}); pkiErr != nil {
			return
		}
		// An impostor: a certificate for "mapper1" from the untrusted CA.
		if p.ids["fake-mapper1"], pkiErr = p.other.Issue("mapper1", CertOptions{}); pkiErr != nil {
			return
		}
		p.ids["ed"], pkiErr = p.ca.Issue("ed", CertOptions{Ed25519: true})
		pkiVal = p
	})
	if pkiErr != nil {
		t.Fatal(pkiErr)
	}
	return pkiVal
}

// caConfig trusts the test CA, and knows the certificates it issued.
func (p *pki) caConfig(name string) Config {
	return Config{Identity: p.ids[name], Authority: p.ca.Authority(), Store: p.store()}
}

// store holds the certificates of the trusted identities.
func (p *pki) store() *StaticStore {
	var certs []*x509.Certificate
	for _, n := range []string{"mapper1", "fred", "bob", "eve", "ed"} {
		certs = append(certs, p.ids[n].Certificate())
	}
	s, err := NewStaticStore(certs...)
	if err != nil {
		panic(err)
	}
	return s
}

// fixture is a mem broker with the Warren topology and a spy on the
// dead-letter queue.
type fixture struct {
	t      *testing.T
	b      *mem.Broker
	raw    transport.Transport // the attacker: plain access to the broker
	p      *pki
	dead   <-chan *transport.Delivery
	queueN int
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, b: mem.NewBroker(), p: testPKI(t)}
	t.Cleanup(func() { f.b.Close() })
	f.raw = f.b.Connect()
	ctx := t.Context()
	if err := wire.Topology(ctx, f.raw); err != nil {
		t.Fatal(err)
	}
	dead, err := f.raw.Consume(ctx, wire.DeadLetterQueue, transport.ConsumeOptions{AutoAck: true})
	if err != nil {
		t.Fatal(err)
	}
	f.dead = dead
	return f
}

// wrap returns a secure transport on a new connection.
func (f *fixture) wrap(cfg Config, opts ...Option) *Transport {
	f.t.Helper()
	tr, err := Wrap(f.b.Connect(), cfg, opts...)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { tr.Close() })
	return tr
}

// queue declares a queue and returns its name.
func (f *fixture) queue(name string) string {
	f.t.Helper()
	q, err := f.raw.DeclareQueue(f.t.Context(), transport.Queue{Name: name, DeadLetterExchange: wire.DeadLetterExchange})
	if err != nil {
		f.t.Fatal(err)
	}
	return q
}

// consume starts a consumer on q through tr.
func (f *fixture) consume(tr transport.Transport, q string, autoAck bool) <-chan *transport.Delivery {
	f.t.Helper()
	ch, err := tr.Consume(f.t.Context(), q, transport.ConsumeOptions{AutoAck: autoAck, Prefetch: 10})
	if err != nil {
		f.t.Fatal(err)
	}
	return ch
}

// publishRaw publishes msg as the attacker, to the default exchange.
func (f *fixture) publishRaw(q string, msg transport.Message) {
	f.t.Helper()
	if err := f.raw.Publish(f.t.Context(), "", q, msg, transport.PublishOptions{Mandatory: true}); err != nil {
		f.t.Fatal(err)
	}
}

// expectDead waits for a dead letter with reason.
func (f *fixture) expectDead(reason Reason) *transport.Delivery {
	f.t.Helper()
	select {
	case d := <-f.dead:
		if got := wire.String(d.Headers, wire.HeaderReason); got != string(reason) {
			f.t.Fatalf("dead letter reason %q (%s), want %q", got, wire.String(d.Headers, wire.HeaderError), reason)
		}
		if wire.String(d.Headers, wire.HeaderError) == "" {
			f.t.Fatal("dead letter without warren-error")
		}
		return d
	case <-time.After(5 * time.Second):
		f.t.Fatalf("no dead letter with reason %s", reason)
	}
	return nil
}

// awaitDead waits for a dead letter with reason, passing over others (in
// fabric tests, where several participants reject the same intruder).
func (f *fixture) awaitDead(reason Reason) *transport.Delivery {
	f.t.Helper()
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	for {
		select {
		case d := <-f.dead:
			if wire.String(d.Headers, wire.HeaderReason) == string(reason) {
				return d
			}
		case <-timer.C:
			f.t.Fatalf("no dead letter with reason %s", reason)
			return nil
		}
	}
}

// expectNothing checks that ch delivers nothing more (after the dead letter
// proved the message was processed).
func expectNothing(t *testing.T, ch <-chan *transport.Delivery) {
	t.Helper()
	select {
	case d := <-ch:
		t.Fatalf("rejected message handed on: type %q id %q body %q", d.Type, d.MessageID, d.Body)
	default:
	}
}

func receive(t *testing.T, ch <-chan *transport.Delivery) *transport.Delivery {
	t.Helper()
	select {
	case d, ok := <-ch:
		if !ok {
			t.Fatal("consumer closed")
		}
		return d
	case <-time.After(5 * time.Second):
		t.Fatal("nothing received")
	}
	return nil
}

func request(to, path string) transport.Message {
	return transport.Message{
		Type:        wire.TypeRequest,
		ContentType: wire.ContentJSON,
		Body:        []byte(`{"secret":"launch codes"}`),
		Headers:     map[string]any{wire.HeaderPath: path, wire.HeaderTo: to, wire.HeaderDeadline: time.Now().Add(time.Minute).UnixMilli()},
	}
}

func ctx(t *testing.T) context.Context { return t.Context() }

// deliveryAt is msg as delivered after being published to exchange with
// key.
func deliveryAt(msg transport.Message, exchange, key string) *transport.Delivery {
	d := transport.NewDelivery(msg, nil)
	d.Exchange, d.RoutingKey = exchange, key
	return d
}

// expectNone checks that ch delivers nothing within a short while.
func expectNone(t *testing.T, ch <-chan *transport.Delivery) {
	t.Helper()
	select {
	case d := <-ch:
		t.Fatalf("unexpected delivery: type %q id %q headers %v", d.Type, d.MessageID, d.Headers)
	case <-time.After(300 * time.Millisecond):
	}
}
