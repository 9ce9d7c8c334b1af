package secure

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// secureAgent runs an agent on a secure transport. It serves
// /<actor>/echo and counts the calls.
type secureAgent struct {
	a    *agent.Agent
	tr   *Transport
	hits atomic.Int64
}

func startSecureAgent(t *testing.T, connect fabrictest.Connect, cfg Config, actor string) *secureAgent {
	t.Helper()
	tr, err := Wrap(connect(t), cfg, WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	n := &secureAgent{tr: tr}
	a, err := agent.New(tr, agent.Config{Identity: cfg.Identity.Name(), PingInterval: 100 * time.Millisecond, DrainTimeout: 5 * time.Second},
		agent.WithLogger(testenv.Logger(t)), agent.WithStatus(func() any { return 0 }))
	if err != nil {
		t.Fatal(err)
	}
	n.a = a
	if err := a.Handle("/"+actor+"/echo", agent.HandlerFunc(func(_ context.Context, r *agent.Request) (any, error) {
		n.hits.Add(1)
		return r.Payload, nil
	})); err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-a.Ready():
	case err := <-done:
		t.Fatalf("agent %s: %v", a.Identity(), err)
	case <-time.After(10 * time.Second):
		t.Fatalf("agent %s not ready", a.Identity())
	}
	return n
}

func startSecureMapper(t *testing.T, connect fabrictest.Connect, cfg Config) (*mapper.Mapper, *Transport) {
	t.Helper()
	tr, err := Wrap(connect(t), cfg, WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	m, err := mapper.New(tr, mapper.Config{Identity: cfg.Identity.Name()}, mapper.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("mapper Run: %v", err)
		}
	})
	<-m.Ready()
	return m, tr
}

func waitAgents(t *testing.T, m *mapper.Mapper, want ...string) {
	t.Helper()
	slices.Sort(want)
	testenv.WaitFor(t, 10*time.Second, func() error {
		var got []string
		for _, a := range m.Agents() {
			if slices.Contains(want, a.Identity) {
				got = append(got, a.Identity)
			}
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("live %v, want %v", got, want)
		}
		return nil
	})
}

func timeout(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return c
}

// spyOn binds a queue of the attacker's to warren.request with key, so it
// sees a copy of every request to that agent as the broker carries it.
func spyOn(t *testing.T, raw transport.Transport, key string) <-chan *transport.Delivery {
	t.Helper()
	q, err := raw.DeclareQueue(t.Context(), transport.Queue{Exclusive: true, AutoDelete: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Bind(t.Context(), transport.Binding{Exchange: wire.RequestExchange, Queue: q, Key: key}); err != nil {
		t.Fatal(err)
	}
	ch, err := raw.Consume(t.Context(), q, transport.ConsumeOptions{AutoAck: true})
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// TestFabricSecure runs agents and a mapper in secure mode, trusting a CA
// only: no certificate is distributed beforehand. Requests, fan-out and
// pushes work; what the broker carries is signed and encrypted. It runs on
// the embedded broker and on RabbitMQ.
func TestFabricSecure(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		ca, issue := testCA(t, actor)
		fredID, bobID, mapID := actor+"-fred", actor+"-bob", actor+"-mapper"
		auth := ca.Authority()
		fred := startSecureAgent(t, connect, Config{Identity: issue(fredID), Authority: auth}, actor)
		bob := startSecureAgent(t, connect, Config{Identity: issue(bobID), Authority: auth}, actor)
		raw := connect(t)
		spy := spyOn(t, raw, fredID)
		m, mtr := startSecureMapper(t, connect, Config{Identity: issue(mapID), Authority: auth})
		waitAgents(t, m, fredID, bobID)

		echo := "/" + actor + "/echo"
		r, err := m.Request(timeout(t, 5*time.Second), echo, "top secret", mapper.To(fredID))
		if err != nil {
			t.Fatal(err)
		}
		var s string
		if err := r.Decode(&s); err != nil || s != "top secret" || r.Agent != fredID {
			t.Fatalf("reply %q from %s: %v", s, r.Agent, err)
		}
		w := receive(t, spy)
		if w.ContentType != ContentType || bytes.Contains(w.Body, []byte("top secret")) {
			t.Fatalf("request on the wire: %s %s", w.ContentType, w.Body)
		}

		rs, err := m.FanOut(timeout(t, 5*time.Second), echo, map[string]int{"n": 7})
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{fredID, bobID} {
			if rs[id] == nil || rs[id].Err != nil || string(rs[id].Body) != `{"n":7}` {
				t.Fatalf("fan-out %s: %+v", id, rs[id])
			}
		}
		if err := m.Push(timeout(t, 5*time.Second), echo, "pushed", mapper.To(bobID)); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, 5*time.Second, func() error {
			if bob.hits.Load() != 2 {
				return fmt.Errorf("bob served %d", bob.hits.Load())
			}
			return nil
		})
		if fred.hits.Load() != 2 {
			t.Fatalf("fred served %d", fred.hits.Load())
		}
		// On a shared RabbitMQ, other tests' agents and mappers broadcast
		// heartbeats and announces: unsigned from plain ones, untrusted
		// from secure ones with a CA of their own (other packages' tests
		// run at the same time). The embedded broker carries only this
		// fabric's messages: none may be rejected there.
		shared := strings.HasSuffix(t.Name(), "/rabbitmq")
		for _, tr := range []*Transport{fred.tr, bob.tr, mtr} {
			for reason, n := range tr.Stats().Rejected {
				if n != 0 && !(shared && (reason == ReasonUnsigned || reason == ReasonUntrusted)) {
					t.Errorf("%s rejected %d messages: %s", tr.Identity(), n, reason)
				}
			}
		}
	})
}

// TestFabricRejections attacks a secure fabric on the embedded broker from
// a plain connection and with certificates it does not trust; no handler
// runs for what it sends.
func TestFabricRejections(t *testing.T) {
	p := testPKI(t)
	b := newFixture(t)
	connect := func(t *testing.T) transport.Transport {
		c := b.b.Connect()
		t.Cleanup(func() { c.Close() })
		return c
	}
	actor := "vault"
	auth := p.ca.Authority()
	fred := startSecureAgent(t, connect, Config{Identity: p.ids["fred"], Authority: auth}, actor)
	bob := startSecureAgent(t, connect, Config{Identity: p.ids["bob"], Authority: auth}, actor)
	spy := spyOn(t, b.raw, "fred")
	m, mtr := startSecureMapper(t, connect, Config{Identity: p.ids["mapper1"], Authority: auth})
	waitAgents(t, m, "bob", "fred")
	echo := "/vault/echo"
	if _, err := m.Request(timeout(t, 5*time.Second), echo, "real", mapper.To("fred")); err != nil {
		t.Fatal(err)
	}
	captured := receive(t, spy)
	if fred.hits.Load() != 1 {
		t.Fatal("fred did not serve")
	}
	publish := func(key string, msg transport.Message) {
		t.Helper()
		if err := b.raw.Publish(t.Context(), wire.RequestExchange, key, msg, transport.PublishOptions{Mandatory: true}); err != nil {
			t.Fatal(err)
		}
	}
	replyQ, err := b.raw.DeclareQueue(t.Context(), transport.Queue{Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	replies, err := b.raw.Consume(t.Context(), replyQ, transport.ConsumeOptions{AutoAck: true})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("unsigned request", func(t *testing.T) {
		publish("fred", transport.Message{Type: wire.TypeRequest, ContentType: wire.ContentJSON, Body: []byte(`"x"`), ReplyTo: replyQ,
			CorrelationID: "evil", AppID: "mapper1", Headers: map[string]any{wire.HeaderPath: echo, wire.HeaderTo: "fred"}})
		b.awaitDead(ReasonUnsigned)
		expectNothing(t, replies)
	})
	t.Run("replayed request", func(t *testing.T) {
		publish("fred", captured.Message)
		b.awaitDead(ReasonReplayed)
	})
	t.Run("tampered header", func(t *testing.T) {
		msg := captured.Message
		msg.Headers = map[string]any{}
		for k, v := range captured.Headers {
			msg.Headers[k] = v
		}
		msg.Headers[wire.HeaderDeadline] = time.Now().Add(time.Hour).UnixMilli()
		publish("fred", msg)
		b.awaitDead(ReasonBadSignature)
	})
	t.Run("redirected to another agent", func(t *testing.T) {
		publish("bob", captured.Message)
		b.awaitDead(ReasonNotForMe)
	})
	t.Run("tampered ciphertext", func(t *testing.T) {
		msg := captured.Message
		msg.Body = bytes.Replace(msg.Body, []byte(`"body":"`), []byte(`"body":"AAAA`), 1)
		publish("fred", msg)
		b.awaitDead(ReasonBadSignature)
	})
	t.Run("malformed envelope", func(t *testing.T) {
		msg := captured.Message
		msg.Body = []byte(`{"v":1,"alg":"ES256","signer":"mapper1","sig":`)
		publish("fred", msg)
		b.awaitDead(ReasonMalformed)
	})
	t.Run("mapper from an untrusted CA", func(t *testing.T) {
		// mallory trusts fred (so it can encrypt to it), fred does not
		// trust mallory: the request is rejected, mallory gets no reply.
		mm, _ := startSecureMapper(t, connect, Config{Identity: p.ids["mallory"], Authority: NewAuthority(p.ca.Certificate(), p.other.Certificate())})
		waitAgents(t, mm, "bob", "fred")
		_, err := mm.Request(timeout(t, 500*time.Millisecond), echo, "let me in", mapper.To("fred"))
		if !errors.Is(err, mapper.ErrTimeout) {
			t.Fatalf("untrusted mapper: %v", err)
		}
		b.awaitDead(ReasonUntrusted)
	})
	t.Run("fake agent heartbeat", func(t *testing.T) {
		hb, _ := json.Marshal(wire.Heartbeat{Identity: "fake", Queue: wire.AgentQueue("fake"), Services: []string{echo}, PingInterval: 100})
		if err := b.raw.Publish(t.Context(), wire.HeartbeatExchange, "", transport.Message{Type: wire.TypeRegister, ContentType: wire.ContentJSON, Body: hb,
			AppID: "fake"}, transport.PublishOptions{}); err != nil {
			t.Fatal(err)
		}
		b.awaitDead(ReasonUnsigned)
		if slices.ContainsFunc(m.Agents(), func(a mapper.AgentInfo) bool { return a.Identity == "fake" }) {
			t.Fatal("mapper registered an unsigned heartbeat")
		}
	})
	t.Run("agent from an untrusted CA", func(t *testing.T) {
		startSecureAgent(t, connect, Config{Identity: p.ids["mallory"], Authority: NewAuthority(p.ca.Certificate(), p.other.Certificate())}, actor)
		b.awaitDead(ReasonUntrusted) // its register, at the mapper
		if slices.ContainsFunc(m.Agents(), func(a mapper.AgentInfo) bool { return a.Identity == "mallory" }) {
			t.Fatal("mapper registered an untrusted agent")
		}
	})
	t.Run("agent with an expired certificate", func(t *testing.T) {
		old, err := p.ca.Issue("oldtimer", CertOptions{NotBefore: time.Now().Add(-50 * time.Minute), NotAfter: time.Now().Add(-10 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		// Its clock is behind, or it could not even start.
		tr, err := Wrap(connect(t), Config{Identity: old, Authority: auth}, WithClock(func() time.Time { return time.Now().Add(-30 * time.Minute) }))
		if err != nil {
			t.Fatal(err)
		}
		a, err := agent.New(tr, agent.Config{Identity: "oldtimer", PingInterval: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		a.Handle(echo, agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) { return nil, nil }))
		runCtx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- a.Run(runCtx) }()
		defer func() { cancel(); <-done }()
		b.awaitDead(ReasonExpired) // its register, at the mapper
		if slices.ContainsFunc(m.Agents(), func(a mapper.AgentInfo) bool { return a.Identity == "oldtimer" }) {
			t.Fatal("mapper registered an agent with an expired certificate")
		}
	})
	t.Run("mapper with a pinned store that lacks an agent", func(t *testing.T) {
		s, err := NewStaticStore(p.ids["fred"].Certificate())
		if err != nil {
			t.Fatal(err)
		}
		pm, ptr := startSecureMapper(t, connect, Config{Identity: p.ids["eve"], Store: s})
		waitAgents(t, pm, "fred")
		testenv.WaitFor(t, 5*time.Second, func() error {
			if ptr.Stats().Rejected[ReasonUntrusted] == 0 {
				return errors.New("bob's heartbeats not rejected")
			}
			return nil
		})
		if slices.ContainsFunc(pm.Agents(), func(a mapper.AgentInfo) bool { return a.Identity == "bob" }) {
			t.Fatal("mapper registered an agent it has no certificate for")
		}
		// fred trusts eve through the CA, and the pinned mapper trusts
		// fred's reply through its store.
		r, err := pm.Request(timeout(t, 5*time.Second), echo, "pinned", mapper.To("fred"))
		if err != nil || string(r.Body) != `"pinned"` {
			t.Fatalf("pinned mapper: %v %v", r, err)
		}
	})
	if fred.hits.Load() != 2 || bob.hits.Load() != 0 {
		t.Fatalf("handlers ran for rejected messages: fred %d, bob %d", fred.hits.Load(), bob.hits.Load())
	}
	if n := mtr.Stats().Rejected[ReasonUntrusted]; n == 0 {
		t.Fatal("mapper counted no untrusted heartbeat")
	}
}

// TestFabricRevokedAgent: a mapper with the agent's certificate on its deny
// list does not see the agent at all.
func TestFabricRevokedAgent(t *testing.T) {
	p := testPKI(t)
	b := newFixture(t)
	connect := func(t *testing.T) transport.Transport {
		c := b.b.Connect()
		t.Cleanup(func() { c.Close() })
		return c
	}
	deny, err := ParseDenyList("serial:" + p.ids["fred"].Certificate().SerialNumber.Text(16))
	if err != nil {
		t.Fatal(err)
	}
	startSecureAgent(t, connect, Config{Identity: p.ids["fred"], Authority: p.ca.Authority()}, "vault")
	m, _ := startSecureMapper(t, connect, Config{Identity: p.ids["mapper1"], Authority: p.ca.Authority(), Deny: deny})
	b.awaitDead(ReasonUntrusted)
	_, err = m.Request(timeout(t, 2*time.Second), "/vault/echo", 1)
	if !errors.Is(err, mapper.ErrNoAgent) {
		t.Fatalf("request to a revoked agent: %v", err)
	}
}

// TestFabricDeclinedPush: an agent cannot pass a declined push on in
// secure mode (it would have to speak for the mapper); the push is
// dead-lettered with reason declined instead, and nothing else breaks.
func TestFabricDeclinedPush(t *testing.T) {
	p := testPKI(t)
	b := newFixture(t)
	connect := func(t *testing.T) transport.Transport {
		c := b.b.Connect()
		t.Cleanup(func() { c.Close() })
		return c
	}
	tr, err := Wrap(connect(t), Config{Identity: p.ids["fred"], Authority: p.ca.Authority()})
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(tr, agent.Config{Identity: "fred", PingInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Handle("/vault/busy", agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) { return nil, agent.ErrDecline })); err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	defer func() { cancel(); <-done }()
	<-a.Ready()
	m, _ := startSecureMapper(t, connect, Config{Identity: p.ids["mapper1"], Authority: p.ca.Authority()})
	waitAgents(t, m, "fred")
	if err := m.Push(timeout(t, 5*time.Second), "/vault/busy", 1); err != nil {
		t.Fatal(err)
	}
	d := b.awaitDead(Reason(wire.CodeDeclined))
	if d.ContentType != ContentType {
		t.Fatalf("dead letter not sealed: %s", d.ContentType)
	}
	if r, err := m.Request(timeout(t, 5*time.Second), "/vault/busy", 1); !errors.Is(err, &wire.RemoteError{Code: wire.CodeDeclined}) {
		t.Fatalf("declined request: %v %v", r, err)
	}
}

// testCA returns a new CA named for actor and a function that issues an
// identity from it, failing the test on error.
func testCA(t *testing.T, actor string) (*CA, func(name string) *Identity) {
	t.Helper()
	ca, err := NewCA("test CA "+actor, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ca, func(name string) *Identity {
		t.Helper()
		id, err := ca.Issue(name, CertOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
}
