package secure

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"maps"
	"math/big"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

// TestDestinationBound: a request for a service's shared queue (no
// warren-to) is accepted there only. Copied into agents' own queues, by
// publishing or by binding them to the service's key, it is refused as
// not for them, and nobody is told (the copy is the attacker's doing).
func TestDestinationBound(t *testing.T) {
	f := newFixture(t)
	tx := f.wrap(f.p.caConfig("mapper1"))
	fred := f.wrap(f.p.caConfig("fred"))
	bob := f.wrap(f.p.caConfig("bob"))
	const path = "/vault/open"
	shared := f.queue(wire.ServiceQueue(path))
	fredQ, bobQ := f.queue(wire.AgentQueue("fred")), f.queue(wire.AgentQueue("bob"))
	for _, b := range []transport.Binding{
		{Exchange: wire.ServiceExchange, Queue: shared, Key: path},
		{Exchange: wire.RequestExchange, Queue: fredQ, Key: "fred"},
		{Exchange: wire.RequestExchange, Queue: bobQ, Key: "bob"},
	} {
		if err := f.raw.Bind(ctx(t), b); err != nil {
			t.Fatal(err)
		}
	}
	replies := f.queue("replies")
	back := f.consume(f.raw, replies, true)
	fredIn := f.consume(fred, fredQ, false)
	bobIn := f.consume(bob, bobQ, false)
	bobShared := f.consume(bob, shared, false)

	m := request("", path)
	delete(m.Headers, wire.HeaderTo) // parked work: for whichever agent takes it
	m.ReplyTo, m.CorrelationID = replies, "c1"
	sealed, err := tx.seal(ctx(t), wire.ServiceExchange, path, m)
	if err != nil {
		t.Fatal(err)
	}
	publish := func(exchange, key string) {
		t.Helper()
		if err := f.raw.Publish(ctx(t), exchange, key, sealed, transport.PublishOptions{Mandatory: true}); err != nil {
			t.Fatal(err)
		}
	}
	publish(wire.ServiceExchange, path)
	d := receive(t, bobShared)
	if string(d.Body) != `{"secret":"launch codes"}` {
		t.Fatalf("shared queue: %q", d.Body)
	}
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}

	// The attacker copies it into each agent's own queue.
	publish(wire.RequestExchange, "fred")
	f.expectDead(ReasonNotForMe)
	publish(wire.RequestExchange, "bob")
	f.expectDead(ReasonNotForMe)
	// It binds fred's queue to the service's key: the copy arrives with
	// the signed exchange and key, but in the wrong queue.
	if err := f.raw.Bind(ctx(t), transport.Binding{Exchange: wire.ServiceExchange, Queue: fredQ, Key: path}); err != nil {
		t.Fatal(err)
	}
	publish(wire.ServiceExchange, path)
	var got []string
	for range 2 {
		got = append(got, wire.String(receive(t, f.dead).Headers, wire.HeaderReason))
	}
	slices.Sort(got)
	// fred: not for its queue; bob: the shared queue's copy is a replay.
	if want := []string{string(ReasonNotForMe), string(ReasonReplayed)}; !slices.Equal(got, want) {
		t.Fatalf("dead letters %v, want %v", got, want)
	}
	expectNothing(t, fredIn)
	expectNothing(t, bobIn)
	expectNothing(t, bobShared)
	expectNone(t, back)
	if s := fred.Stats(); s.Opened != 0 || s.Rejected[ReasonNotForMe] != 2 {
		t.Fatalf("fred: %+v", s)
	}
}

// TestCheckDestination covers each exchange kind.
func TestCheckDestination(t *testing.T) {
	cases := []struct {
		ex, rk      string // signed
		dex, drk, q string // delivered
		ok          bool
	}{
		{"", "replies", "", "replies", "replies", true},
		{"", "replies", "", "replies", "other", false},
		{"", "replies", "", "other", "other", false},
		{wire.RequestExchange, "fred", wire.RequestExchange, "fred", wire.AgentQueue("fred"), true},
		{wire.RequestExchange, "fred", wire.RequestExchange, "fred", wire.AgentQueue("bob"), false},
		{wire.RequestExchange, "fred", wire.RequestExchange, "bob", wire.AgentQueue("bob"), false},
		{wire.ServiceExchange, "/a/b", wire.ServiceExchange, "/a/b", wire.ServiceQueue("/a/b"), true},
		{wire.ServiceExchange, "/a/b", wire.ServiceExchange, "/a/b", wire.AgentQueue("fred"), false},
		{wire.ServiceExchange, "/a/b", wire.RequestExchange, "/a/b", wire.ServiceQueue("/a/b"), false},
		{wire.HeartbeatExchange, "", wire.HeartbeatExchange, "", "amq.gen-1", true},
		{wire.HeartbeatExchange, "", wire.ControlExchange, "", "amq.gen-1", false},
	}
	for _, c := range cases {
		env := &envelope{Ex: c.ex, RK: c.rk}
		err := checkDestination(env, deliveryAt(transport.Message{}, c.dex, c.drk), c.q)
		if (err == nil) != c.ok {
			t.Errorf("signed %q/%q, delivered %q/%q from %q: %v", c.ex, c.rk, c.dex, c.drk, c.q, err)
		}
	}
}

// TestErrorReplies: an authenticated sender is told when its message
// itself is refused, and not when a copy of it is.
func TestErrorReplies(t *testing.T) {
	p := testPKI(t)
	req := func() transport.Message {
		m := request("fred", "/secret/launch")
		m.ReplyTo, m.CorrelationID = "replies", "c9"
		return m
	}
	cases := []struct {
		name   string
		reason Reason
		answer bool
		msg    func(f *fixture) transport.Message
	}{
		{"encrypted to the previous certificate", ReasonNotForMe, true, func(f *fixture) transport.Message {
			prev, err := p.ca.Issue("fred", CertOptions{})
			if err != nil {
				f.t.Fatal(err)
			}
			s, _ := NewStaticStore(prev.Certificate())
			tr, err := Wrap(f.b.Connect(), Config{Identity: p.ids["mapper1"], Store: s})
			if err != nil {
				f.t.Fatal(err)
			}
			defer tr.Close()
			m, err := tr.seal(f.t.Context(), "", "qfred", req())
			if err != nil {
				f.t.Fatal(err)
			}
			return m
		}},
		{"signed ciphertext that does not decrypt", ReasonBadSignature, true, func(f *fixture) transport.Message {
			m := f.sealAs("mapper1", "", "qfred", req())
			return editEnvelope(t, m, func(e *envelope) {
				e.Body[len(e.Body)-1] ^= 1
				resign(t, m, e, p.ids["mapper1"])
			})
		}},
		{"sender's clock ahead", ReasonReplayed, true, func(f *fixture) transport.Message {
			return f.sealAs("mapper1", "", "qfred", req(), WithClock(func() time.Time { return time.Now().Add(10 * time.Minute) }))
		}},
		{"stale", ReasonReplayed, false, func(f *fixture) transport.Message {
			return f.sealAs("mapper1", "", "qfred", req(), WithClock(func() time.Time { return time.Now().Add(-10 * time.Minute) }))
		}},
		{"for another agent", ReasonNotForMe, false, func(f *fixture) transport.Message {
			m := req()
			m.Headers[wire.HeaderTo] = "bob"
			return f.sealAs("mapper1", "", "qfred", m)
		}},
		{"for another queue", ReasonNotForMe, false, func(f *fixture) transport.Message {
			return f.sealAs("mapper1", "", "qbob", req())
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			rx := f.wrap(f.p.caConfig("fred"))
			q := f.queue("qfred")
			back := f.consume(f.raw, f.queue("replies"), true)
			f.consume(rx, q, false)
			f.publishRaw(q, c.msg(f))
			f.expectDead(c.reason)
			if !c.answer {
				expectNone(t, back)
				return
			}
			r := receive(t, back)
			if wire.String(r.Headers, wire.HeaderCode) != string(c.reason) || r.CorrelationID != "c9" ||
				wire.String(r.Headers, wire.HeaderTo) != "mapper1" || r.ContentType != ContentType {
				t.Fatalf("error reply %+v", r.Message)
			}
		})
	}
}

// issueCNOnly issues a certificate from the test CA that names its
// identity only in its Common Name, with the given key usage.
func issueCNOnly(t *testing.T, ca *CA, cn string, usage x509.KeyUsage, withSAN bool) *Identity {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     usage,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, // a TLS server's, say
	}
	if withSAN {
		tmpl.URIs = []*url.URL{{Scheme: IdentityScheme, Opaque: cn}}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	id, err := NewIdentity(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestIdentityFromURISAN: a certificate the CA signed speaks for a Warren
// identity only through a warren: URI SAN and a key usage allowing
// signatures; a Common Name counts only for a certificate pinned in a
// Store.
func TestIdentityFromURISAN(t *testing.T) {
	p := testPKI(t)
	carol := issueCNOnly(t, p.ca, "carol", x509.KeyUsageDigitalSignature|x509.KeyUsageKeyAgreement, false)
	dave := issueCNOnly(t, p.ca, "dave", 0, true) // no key usage extension
	if _, err := Wrap(mem.NewBroker().Connect(), Config{Identity: carol, Authority: p.ca.Authority()}); err == nil {
		t.Fatal("Wrap with a CN-only certificate and an Authority")
	}
	for _, c := range []struct {
		id     *Identity
		pinned bool // the receiver has it in its Store and no Authority
		reason Reason
	}{
		{carol, false, ReasonUntrusted},
		{dave, false, ReasonUntrusted},
		{carol, true, ""},
		{dave, true, ""},
	} {
		f := newFixture(t)
		store, err := NewStaticStore(c.id.Certificate())
		if err != nil {
			t.Fatal(err)
		}
		tx := f.wrap(Config{Identity: c.id, Store: p.store()}) // pinned own certificate: Wrap accepts it
		cfg := Config{Identity: p.ids["fred"], Authority: p.ca.Authority()}
		if c.pinned {
			cfg = Config{Identity: p.ids["fred"], Store: store}
		}
		rx := f.wrap(cfg)
		q := f.queue("qfred")
		in := f.consume(rx, q, false)
		m := request("fred", "/a/b")
		if err := tx.Publish(ctx(t), "", q, m, transport.PublishOptions{}); err != nil {
			t.Fatal(err)
		}
		if c.reason != "" {
			d := f.expectDead(c.reason)
			t.Logf("%s: %s", c.id.Name(), wire.String(d.Headers, wire.HeaderError))
			expectNothing(t, in)
			continue
		}
		if d := receive(t, in); d.AppID != c.id.Name() {
			t.Fatalf("pinned %s: %v", c.id.Name(), d.Headers)
		}
	}
}

// TestEd25519NeedsSignOnly: an Ed25519 identity could receive neither
// encrypted requests nor encrypted replies, so Wrap refuses it unless
// SignOnly.
func TestEd25519NeedsSignOnly(t *testing.T) {
	p := testPKI(t)
	b := mem.NewBroker()
	defer b.Close()
	_, err := Wrap(b.Connect(), Config{Identity: p.ids["ed"], Store: p.store()})
	if !errors.Is(err, ErrCannotEncrypt) {
		t.Fatalf("Wrap(Ed25519 without SignOnly) = %v", err)
	}
	tr, err := Wrap(b.Connect(), Config{Identity: p.ids["ed"], Store: p.store(), SignOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	tr.Close()
}

// TestDeadLetterReplay: a message the secure transport dead-lettered keeps
// its sender's signature, for the exchange and key it was published to,
// so a replay as `warren dlq replay` does it (package dlq, on a plain
// transport) puts it back where it is accepted. The dead-letter queue itself is not read through a
// secure transport.
func TestDeadLetterReplay(t *testing.T) {
	p := testPKI(t)
	b := mem.NewBroker()
	defer b.Close()
	raw := b.Connect()
	if err := wire.Topology(ctx(t), raw); err != nil {
		t.Fatal(err)
	}
	q := wire.AgentQueue("fred")
	if _, err := raw.DeclareQueue(ctx(t), transport.Queue{Name: q}); err != nil {
		t.Fatal(err)
	}
	if err := raw.Bind(ctx(t), transport.Binding{Exchange: wire.RequestExchange, Queue: q, Key: "fred"}); err != nil {
		t.Fatal(err)
	}
	tx, err := Wrap(b.Connect(), p.caConfig("mapper1"))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	// fred first runs with mapper1 on its deny list by mistake.
	deny, _ := ParseDenyList(Fingerprint(p.ids["mapper1"].Certificate()))
	cfg := p.caConfig("fred")
	cfg.Deny = deny
	rx1, err := Wrap(b.Connect(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rx1.Consume(ctx(t), wire.DeadLetterQueue, transport.ConsumeOptions{}); !errors.Is(err, ErrDeadLetterQueue) {
		t.Fatalf("secure consumer of %s: %v", wire.DeadLetterQueue, err)
	}
	// A spy on warren.dlx (fanout) sees the letter once it is in
	// warren.dead too.
	spyQ, err := raw.DeclareQueue(ctx(t), transport.Queue{Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Bind(ctx(t), transport.Binding{Exchange: wire.DeadLetterExchange, Queue: spyQ}); err != nil {
		t.Fatal(err)
	}
	spy, err := raw.Consume(ctx(t), spyQ, transport.ConsumeOptions{AutoAck: true})
	if err != nil {
		t.Fatal(err)
	}
	// AutoAck: nothing left to settle when rx1 goes.
	if _, err := rx1.Consume(ctx(t), q, transport.ConsumeOptions{AutoAck: true}); err != nil {
		t.Fatal(err)
	}
	// With an expiration, as every request with a deadline has: the
	// dead letter loses it, and the replay must still verify.
	req := request("fred", "/a/b")
	req.Expiration = time.Minute
	if err := tx.Publish(ctx(t), wire.RequestExchange, "fred", req, transport.PublishOptions{Mandatory: true}); err != nil {
		t.Fatal(err)
	}
	if l := receive(t, spy); wire.String(l.Headers, wire.HeaderReason) != string(ReasonUntrusted) {
		t.Fatalf("dead letter %v", l.Headers)
	}
	rx1.Close()

	// Fixed and restarted, fred gets the replayed letter.
	rx2, err := Wrap(b.Connect(), p.caConfig("fred"))
	if err != nil {
		t.Fatal(err)
	}
	defer rx2.Close()
	in, err := rx2.Consume(ctx(t), q, transport.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// What dlq.Replay does: the letter as received, without the
	// dead-letter headers, to its original exchange and key.
	dead, err := raw.Consume(ctx(t), wire.DeadLetterQueue, transport.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l := receive(t, dead)
	msg := l.Message
	msg.Expiration = 0
	msg.Headers = maps.Clone(l.Headers)
	for _, k := range []string{wire.HeaderReason, wire.HeaderError, wire.HeaderAgent, "warren-original-exchange", "warren-original-routing-key"} {
		delete(msg.Headers, k)
	}
	if err := raw.Publish(ctx(t), wire.String(l.Headers, "warren-original-exchange"), wire.String(l.Headers, "warren-original-routing-key"), msg, transport.PublishOptions{Mandatory: true}); err != nil {
		t.Fatal(err)
	}
	l.Ack()
	d := receive(t, in)
	if string(d.Body) != `{"secret":"launch codes"}` || d.AppID != "mapper1" {
		t.Fatalf("replayed letter %+v", d.Message)
	}
	d.Ack()
}
