package secure

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// TestRoundTrip: a request from mapper1 to fred is encrypted on the wire
// and arrives as it was sent; the reply comes back the same way; a
// broadcast is signed, not encrypted.
func TestRoundTrip(t *testing.T) {
	f := newFixture(t)
	tx := f.wrap(f.p.caConfig("mapper1"))
	rx := f.wrap(Config{Identity: f.p.ids["fred"], Authority: f.p.ca.Authority()}) // no Store: learns mapper1 from its request
	q := f.queue(wire.AgentQueue("fred"))
	spy := f.queue("spy")
	for _, name := range []string{q, spy} {
		if err := f.raw.Bind(ctx(t), transport.Binding{Exchange: wire.RequestExchange, Queue: name, Key: "fred"}); err != nil {
			t.Fatal(err)
		}
	}
	replies := f.queue("replies")
	in := f.consume(rx, q, false)
	spied := f.consume(f.raw, spy, true)
	back := f.consume(tx, replies, true)

	msg := request("fred", "/secret/launch")
	msg.ReplyTo = replies
	msg.CorrelationID = "c1"
	msg.AppID = "mapper1"
	if err := tx.Publish(ctx(t), wire.RequestExchange, "fred", msg, transport.PublishOptions{Mandatory: true}); err != nil {
		t.Fatal(err)
	}
	w := receive(t, spied)
	if w.ContentType != ContentType || bytes.Contains(w.Body, []byte("launch codes")) {
		t.Fatalf("on the wire: %s %s", w.ContentType, w.Body)
	}
	if wire.String(w.Headers, wire.HeaderPath) != "/secret/launch" {
		t.Fatalf("headers must stay readable: %v", w.Headers)
	}
	var e envelope
	if err := json.Unmarshal(w.Body, &e); err != nil || e.Enc != Suite || e.To != "fred" || e.Signer != "mapper1" {
		t.Fatalf("envelope %+v %v", e, err)
	}

	d := receive(t, in)
	if string(d.Body) != `{"secret":"launch codes"}` || d.ContentType != wire.ContentJSON || d.ReplyTo != replies ||
		d.AppID != "mapper1" || d.MessageID == "" {
		t.Fatalf("delivered %+v", d.Message)
	}
	if dl, ok := wire.Deadline(d.Headers); !ok || time.Until(dl) < 50*time.Second {
		t.Fatalf("deadline header lost: %v", d.Headers)
	}
	// The reply: to mapper1, whose certificate fred learned from the request.
	reply := transport.Message{Type: wire.TypeReply, CorrelationID: d.CorrelationID, ContentType: wire.ContentJSON,
		Body: []byte(`"ok"`), AppID: "fred", Headers: map[string]any{wire.HeaderTo: "mapper1"}}
	if err := rx.Publish(ctx(t), "", d.ReplyTo, reply, transport.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
	r := receive(t, back)
	if string(r.Body) != `"ok"` || r.CorrelationID != "c1" || r.AppID != "fred" {
		t.Fatalf("reply %+v", r.Message)
	}

	// A broadcast: signed only.
	hbq := f.queue("hb")
	if err := f.raw.Bind(ctx(t), transport.Binding{Exchange: wire.HeartbeatExchange, Queue: hbq}); err != nil {
		t.Fatal(err)
	}
	hbs := f.consume(tx, hbq, true)
	hb := transport.Message{Type: wire.TypePing, ContentType: wire.ContentJSON, Body: []byte(`{"identity":"fred"}`),
		Headers: map[string]any{wire.HeaderVersion: int64(1)}}
	if err := rx.Publish(ctx(t), wire.HeartbeatExchange, "", hb, transport.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, hbs); string(got.Body) != `{"identity":"fred"}` {
		t.Fatalf("heartbeat %q", got.Body)
	}
	if s := tx.Stats(); s.Sealed != 1 || s.Opened != 2 {
		t.Fatalf("mapper stats %+v", s)
	}
	if s := rx.Stats(); s.Sealed != 2 || s.Opened != 1 {
		t.Fatalf("agent stats %+v", s)
	}
}

// sealAs seals msg as identity name with the given options, without
// publishing it.
func (f *fixture) sealAs(name, exchange, key string, msg transport.Message, opts ...Option) transport.Message {
	f.t.Helper()
	cfg := f.p.caConfig(name)
	if name == "mallory" || name == "fake-mapper1" {
		cfg = Config{Identity: f.p.ids[name], Authority: NewAuthority(f.p.other.Certificate(), f.p.ca.Certificate()), Store: f.p.store()}
	}
	tr, err := Wrap(f.b.Connect(), cfg, opts...)
	if err != nil {
		f.t.Fatal(err)
	}
	defer tr.Close()
	sealed, err := tr.seal(f.t.Context(), exchange, key, msg)
	if err != nil {
		f.t.Fatal(err)
	}
	return sealed
}

// editEnvelope decodes a sealed body, lets edit change it, and re-encodes.
func editEnvelope(t *testing.T, m transport.Message, edit func(e *envelope)) transport.Message {
	t.Helper()
	var e envelope
	if err := json.Unmarshal(m.Body, &e); err != nil {
		t.Fatal(err)
	}
	edit(&e)
	b, err := json.Marshal(&e)
	if err != nil {
		t.Fatal(err)
	}
	m.Body = b
	return m
}

// resign signs an edited envelope again with id's key.
func resign(t *testing.T, m transport.Message, e *envelope, id *Identity) {
	t.Helper()
	sb, err := signedBytes(labelSig, e, &m, e.Body, true)
	if err != nil {
		t.Fatal(err)
	}
	if e.Sig, err = id.sign(nil, sb); err != nil {
		t.Fatal(err)
	}
}

// TestRejections: every way a message can fail verification ends as a
// dead letter with its reason, and is never handed on.
func TestRejections(t *testing.T) {
	p := testPKI(t)
	old, err := p.ca.Issue("mapper1", CertOptions{NotBefore: time.Now().Add(-50 * time.Minute), NotAfter: time.Now().Add(-10 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	past := func() time.Time { return time.Now().Add(-30 * time.Minute) }
	req := func() transport.Message {
		m := request("fred", "/secret/launch")
		m.AppID = "mapper1"
		return m
	}

	cases := []struct {
		name   string
		reason Reason
		rx     func(cfg *Config)
		msg    func(f *fixture) transport.Message
	}{
		{"unsigned", ReasonUnsigned, nil, func(f *fixture) transport.Message { return req() }},
		{"unsigned with a lying content type", ReasonMalformed, nil, func(f *fixture) transport.Message {
			m := req()
			m.ContentType = ContentType
			return m
		}},
		{"unknown identity (pinned store, no CA)", ReasonUntrusted,
			func(cfg *Config) {
				s, _ := NewStaticStore(p.ids["fred"].Certificate(), p.ids["bob"].Certificate())
				cfg.Authority, cfg.Store = nil, s
			},
			func(f *fixture) transport.Message { return f.sealAs("mapper1", "", "qfred", req()) }},
		{"untrusted CA", ReasonUntrusted, nil, func(f *fixture) transport.Message {
			m := req()
			m.AppID = "mallory"
			return f.sealAs("mallory", "", "qfred", m)
		}},
		{"impostor certificate from another CA", ReasonUntrusted, nil, func(f *fixture) transport.Message {
			return f.sealAs("fake-mapper1", "", "qfred", req())
		}},
		{"impostor with a pinned store", ReasonUntrusted, func(cfg *Config) { cfg.Authority = nil }, func(f *fixture) transport.Message {
			return f.sealAs("fake-mapper1", "", "qfred", req())
		}},
		{"expired certificate", ReasonExpired, nil, func(f *fixture) transport.Message {
			tr, err := Wrap(f.b.Connect(), Config{Identity: old, Authority: p.ca.Authority(), Store: p.store()}, WithClock(past))
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
		{"revoked by serial", ReasonUntrusted,
			func(cfg *Config) {
				cfg.Deny, _ = ParseDenyList("serial:" + p.ids["mapper1"].Certificate().SerialNumber.Text(16))
			},
			func(f *fixture) transport.Message { return f.sealAs("mapper1", "", "qfred", req()) }},
		{"revoked by fingerprint", ReasonUntrusted,
			func(cfg *Config) { cfg.Deny, _ = ParseDenyList(Fingerprint(p.ids["mapper1"].Certificate())) },
			func(f *fixture) transport.Message { return f.sealAs("mapper1", "", "qfred", req()) }},
		{"tampered ciphertext", ReasonBadSignature, nil, func(f *fixture) transport.Message {
			return editEnvelope(t, f.sealAs("mapper1", "", "qfred", req()), func(e *envelope) { e.Body[len(e.Body)-1] ^= 1 })
		}},
		{"tampered plaintext (sign only)", ReasonBadSignature, nil, func(f *fixture) transport.Message {
			m := req()
			delete(m.Headers, wire.HeaderTo)
			tr, _ := Wrap(f.b.Connect(), Config{Identity: p.ids["mapper1"], Store: p.store(), SignOnly: true})
			defer tr.Close()
			m, _ = tr.seal(f.t.Context(), "", "qfred", m)
			return editEnvelope(t, m, func(e *envelope) { e.Body = []byte(`{"secret":"forged"}`) })
		}},
		{"tampered header warren-path", ReasonBadSignature, nil, func(f *fixture) transport.Message {
			m := f.sealAs("mapper1", "", "qfred", req())
			m.Headers[wire.HeaderPath] = "/secret/self_destruct"
			return m
		}},
		{"tampered reply_to", ReasonBadSignature, nil, func(f *fixture) transport.Message {
			m := f.sealAs("mapper1", "", "qfred", req())
			m.ReplyTo = "attacker"
			return m
		}},
		{"tampered deadline", ReasonBadSignature, nil, func(f *fixture) transport.Message {
			m := f.sealAs("mapper1", "", "qfred", req())
			m.Headers[wire.HeaderDeadline] = int64(1)
			return m
		}},
		{"added warren header", ReasonBadSignature, nil, func(f *fixture) transport.Message {
			m := f.sealAs("mapper1", "", "qfred", req())
			m.Headers["warren-status"] = "error"
			return m
		}},
		{"headers nested 33 deep (issue 8 item 1)", ReasonMalformed, nil, func(f *fixture) transport.Message {
			// A genuine message with a header amqp091-go cannot read: the
			// transport removes it and sets transport.HeaderMalformed.
			m := f.sealAs("mapper1", "", "qfred", req())
			var deep any = "bottom"
			for range 33 {
				deep = map[string]any{"n": deep}
			}
			m.Headers["deep"] = deep
			return m
		}},
		{"tampered inner content type", ReasonBadSignature, nil, func(f *fixture) transport.Message {
			return editEnvelope(t, f.sealAs("mapper1", "", "qfred", req()), func(e *envelope) { e.CT = "text/plain" })
		}},
		{"stale", ReasonReplayed, nil, func(f *fixture) transport.Message {
			return f.sealAs("mapper1", "", "qfred", req(), WithClock(func() time.Time { return time.Now().Add(-10 * time.Minute) }))
		}},
		{"from the future", ReasonReplayed, nil, func(f *fixture) transport.Message {
			return f.sealAs("mapper1", "", "qfred", req(), WithClock(func() time.Time { return time.Now().Add(10 * time.Minute) }))
		}},
		{"encrypted to someone else", ReasonNotForMe, nil, func(f *fixture) transport.Message {
			m := req()
			m.Headers[wire.HeaderTo] = "bob"
			return f.sealAs("mapper1", "", "qfred", m)
		}},
		{"encrypted to my old certificate", ReasonNotForMe, nil, func(f *fixture) transport.Message {
			// The sender still has fred's previous certificate.
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
		{"re-signed by another trusted identity", ReasonBadSignature, nil, func(f *fixture) transport.Message {
			// eve takes mapper1's ciphertext and claims it: the ciphertext
			// is bound to its signer, so it does not decrypt.
			m := f.sealAs("mapper1", "", "qfred", req())
			m.AppID = "eve"
			return editEnvelope(t, m, func(e *envelope) {
				e.Signer, e.Cert, e.Alg = "eve", p.ids["eve"].Certificate().Raw, algES256
				resign(t, m, e, p.ids["eve"])
			})
		}},
		{"signer is not app_id", ReasonBadSignature, nil, func(f *fixture) transport.Message {
			// eve signs a message claiming to come from mapper1.
			return f.sealAs("eve", wire.DeadLetterExchange, "qfred", req())
		}},
		{"heartbeat for another agent", ReasonBadSignature, nil, func(f *fixture) transport.Message {
			return f.sealAs("eve", "", "qfred", transport.Message{Type: wire.TypePing, Body: []byte(`{"identity":"fred"}`)})
		}},
		{"no message id", ReasonMalformed, nil, func(f *fixture) transport.Message {
			// Signed so by its sender: the signature cannot stand in for
			// the replay key (ECDSA signatures are malleable).
			m := f.sealAs("mapper1", "", "qfred", req())
			m.MessageID = ""
			return editEnvelope(t, m, func(e *envelope) { resign(t, m, e, p.ids["mapper1"]) })
		}},
		{"malformed JSON", ReasonMalformed, nil, func(f *fixture) transport.Message {
			return transport.Message{ContentType: ContentType, Body: []byte(`{"v":1,"sig":`)}
		}},
		{"too deep", ReasonMalformed, nil, func(f *fixture) transport.Message {
			return transport.Message{ContentType: ContentType, Body: []byte(`{"v":1,"x":[[[[[[1]]]]]]}`)}
		}},
		{"too large", ReasonMalformed, func(cfg *Config) { cfg.MaxMessageSize = 1000 }, func(f *fixture) transport.Message {
			m := req()
			m.Body = []byte(`"` + strings.Repeat("x", 2000) + `"`)
			return f.sealAs("mapper1", "", "qfred", m)
		}},
		{"unknown version", ReasonMalformed, nil, func(f *fixture) transport.Message {
			return editEnvelope(t, f.sealAs("mapper1", "", "qfred", req()), func(e *envelope) { e.V = 1 })
		}},
		{"unknown cipher suite", ReasonMalformed, nil, func(f *fixture) transport.Message {
			return editEnvelope(t, f.sealAs("mapper1", "", "qfred", req()), func(e *envelope) { e.Enc = "rot13" })
		}},
		{"garbage certificate", ReasonMalformed, nil, func(f *fixture) transport.Message {
			return editEnvelope(t, f.sealAs("mapper1", "", "qfred", req()), func(e *envelope) { e.Cert = []byte{0x30, 1, 2} })
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			cfg := p.caConfig("fred")
			if c.rx != nil {
				c.rx(&cfg)
			}
			rx := f.wrap(cfg)
			q := f.queue("qfred")
			in := f.consume(rx, q, false)
			f.publishRaw(q, c.msg(f))
			d := f.expectDead(c.reason)
			if wire.String(d.Headers, wire.HeaderPath) == "" && c.reason != ReasonMalformed && !strings.Contains(c.name, "heartbeat") {
				t.Errorf("dead letter lost its headers: %v", d.Headers)
			}
			expectNothing(t, in)
			waitRejected(t, rx, c.reason, 1)
			if rx.Stats().Opened != 0 {
				t.Error("opened a rejected message")
			}
		})
	}
}

// TestReplay: the same message twice is handed on once; the copy is
// dead-lettered and counted, and its sender gets no error reply (which
// could reach the caller before the genuine reply).
func TestReplay(t *testing.T) {
	f := newFixture(t)
	tx := f.wrap(f.p.caConfig("mapper1"))
	rx := f.wrap(f.p.caConfig("fred"))
	q := f.queue("qfred")
	replies := f.queue("replies")
	in := f.consume(rx, q, false)
	back := f.consume(tx, replies, true)
	m := request("fred", "/secret/launch")
	m.ReplyTo, m.CorrelationID = replies, "c7"
	sealed, err := tx.seal(ctx(t), "", q, m)
	if err != nil {
		t.Fatal(err)
	}
	f.publishRaw(q, sealed)
	d := receive(t, in)
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
	f.publishRaw(q, sealed) // the attacker replays it
	f.expectDead(ReasonReplayed)
	expectNothing(t, in)
	expectNone(t, back)
	waitRejected(t, rx, ReasonReplayed, 1)
}

// waitRejected waits until tr counted want rejections for reason: a
// rejection is counted once settled, after its dead letter went out.
func waitRejected(t *testing.T, tr *Transport, reason Reason, want int64) {
	t.Helper()
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := tr.Stats().Rejected[reason]; n != want {
			return fmt.Errorf("rejected[%s] = %d, want %d", reason, n, want)
		}
		return nil
	})
}

// TestNoReplyToUntrusted: a forged request gets no reply, whatever its
// reply_to says.
func TestNoReplyToUntrusted(t *testing.T) {
	f := newFixture(t)
	rx := f.wrap(f.p.caConfig("fred"))
	q := f.queue("qfred")
	replies := f.queue("replies")
	f.consume(rx, q, false)
	m := request("fred", "/secret/launch")
	m.ReplyTo = replies
	m.AppID = "mallory"
	f.publishRaw(q, f.sealAs("mallory", "", "qfred", m))
	f.expectDead(ReasonUntrusted)
	spy := f.consume(f.raw, replies, true)
	expectNothing(t, spy)
}

// TestRequeueIsNotReplay: a message requeued by its consumer (or lost with
// its connection) comes back and is handed on again.
func TestRequeueIsNotReplay(t *testing.T) {
	f := newFixture(t)
	tx := f.wrap(f.p.caConfig("mapper1"))
	rx := f.wrap(f.p.caConfig("fred"))
	q := f.queue("qfred")
	in := f.consume(rx, q, false)
	if err := tx.Publish(ctx(t), "", q, request("fred", "/a/b"), transport.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	d := receive(t, in)
	if err := d.Nack(true); err != nil {
		t.Fatal(err)
	}
	d = receive(t, in)
	if !d.Redelivered {
		t.Fatal("not redelivered")
	}
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
	if s := rx.Stats(); s.Opened != 2 || s.Rejected[ReasonReplayed] != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestPublishErrors(t *testing.T) {
	f := newFixture(t)
	p := f.p
	tx := f.wrap(Config{Identity: p.ids["mapper1"], Authority: p.ca.Authority()})
	err := tx.Publish(ctx(t), "", "q", request("nobody", "/a/b"), transport.PublishOptions{})
	if !errors.Is(err, ErrUnknownIdentity) {
		t.Fatalf("unknown recipient: %v", err)
	}
	m := request("fred", "/a/b")
	m.AppID = "fred"
	if err := tx.Publish(ctx(t), "", "q", m, transport.PublishOptions{}); !errors.Is(err, ErrSenderMismatch) {
		t.Fatalf("sender mismatch: %v", err)
	}
	tx2 := f.wrap(p.caConfig("mapper1"))
	if err := tx2.Publish(ctx(t), "", "q", request("ed", "/a/b"), transport.PublishOptions{}); !errors.Is(err, ErrCannotEncrypt) {
		t.Fatalf("encrypt to Ed25519: %v", err)
	}
	deny, _ := ParseDenyList(Fingerprint(p.ids["fred"].Certificate()))
	tx3 := f.wrap(Config{Identity: p.ids["mapper1"], Store: p.store(), Authority: p.ca.Authority(), Deny: deny})
	if err := tx3.Publish(ctx(t), "", "q", request("fred", "/a/b"), transport.PublishOptions{}); !errors.Is(err, ErrUntrustedRecipient) {
		t.Fatalf("revoked recipient: %v", err)
	}
	if _, err := Wrap(f.b.Connect(), Config{Identity: p.ids["mapper1"]}); err == nil {
		t.Fatal("Wrap without Store or Authority")
	}
	if _, err := Wrap(f.b.Connect(), Config{Identity: p.ids["mallory"], Authority: p.ca.Authority()}); err == nil {
		t.Fatal("Wrap with an identity the Authority does not trust")
	}
}

// TestEd25519SignOnly: Ed25519 identities sign; messages to them go signed
// only when SignOnly is set.
func TestEd25519SignOnly(t *testing.T) {
	f := newFixture(t)
	p := f.p
	tx := f.wrap(Config{Identity: p.ids["mapper1"], Store: p.store(), SignOnly: true})
	rx := f.wrap(Config{Identity: p.ids["ed"], Store: p.store(), SignOnly: true})
	q := f.queue("qed")
	in := f.consume(rx, q, false)
	if err := tx.Publish(ctx(t), "", q, request("ed", "/a/b"), transport.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	d := receive(t, in)
	if string(d.Body) != `{"secret":"launch codes"}` {
		t.Fatalf("%q", d.Body)
	}
	d.Ack()
	// ed signs its reply with Ed25519; mapper1 verifies it.
	rq := f.queue("rq")
	back := f.consume(tx, rq, true)
	if err := rx.Publish(ctx(t), "", rq, transport.Message{Type: wire.TypeReply, Body: []byte(`1`), Headers: map[string]any{wire.HeaderTo: "mapper1"}}, transport.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	if r := receive(t, back); string(r.Body) != "1" {
		t.Fatalf("%q", r.Body)
	}
}

// TestConsumerGoneRequeues: a verified delivery that its consumer did not
// take is requeued, and accepted again by the next consumer.
func TestConsumerGoneRequeues(t *testing.T) {
	f := newFixture(t)
	tx := f.wrap(f.p.caConfig("mapper1"))
	rx := f.wrap(f.p.caConfig("fred"))
	q := f.queue("qfred")
	cctx, cancel := context.WithCancel(t.Context())
	in, err := rx.Consume(cctx, q, transport.ConsumeOptions{Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Publish(ctx(t), "", q, request("fred", "/a/b"), transport.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if rx.Stats().Opened != 1 {
			return errors.New("not verified yet")
		}
		return nil
	})
	cancel() // the consumer goes away without reading
	for range in {
	}
	d := receive(t, f.consume(rx, q, false))
	if !d.Redelivered || string(d.Body) != `{"secret":"launch codes"}` {
		t.Fatalf("redelivery %+v", d)
	}
	if s := rx.Stats(); s.Rejected[ReasonReplayed] != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestRejectionLogged: a rejection is logged with its reason, without the
// payload.
func TestRejectionLogged(t *testing.T) {
	f := newFixture(t)
	var buf testenv.Buffer
	rx := f.wrap(f.p.caConfig("fred"), WithLogger(slog.New(slog.NewTextHandler(&buf, nil))))
	q := f.queue("qfred")
	f.consume(rx, q, false)
	m := request("fred", "/secret/launch")
	f.publishRaw(q, m)
	f.expectDead(ReasonUnsigned)
	out := buf.String()
	if !strings.Contains(out, "reason=security_unsigned") || strings.Contains(out, "launch codes") {
		t.Fatalf("log:\n%s", out)
	}
}
