package events_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/events"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// newBus returns a bus on a connection of its own: one process.
func newBus(t *testing.T, connect fabrictest.Connect, cfg events.Config) *events.Bus {
	t.Helper()
	b, err := events.New(connect(t), cfg, events.WithLogger(testenv.Logger(t)))
	must(t, err)
	return b
}

func subscribe(t *testing.T, b *events.Bus, pattern string, h events.Handler, opts ...events.SubscribeOption) *events.Subscription {
	t.Helper()
	s, err := b.Subscribe(t.Context(), pattern, h, opts...)
	must(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// collector records the events a handler got.
type collector struct {
	mu  sync.Mutex
	evs []*events.Event
}

func (c *collector) handle(_ context.Context, ev *events.Event) error {
	c.mu.Lock()
	c.evs = append(c.evs, ev)
	c.mu.Unlock()
	return nil
}

func (c *collector) keys() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ks []string
	for _, e := range c.evs {
		ks = append(ks, e.Key)
	}
	return ks
}

func (c *collector) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.evs)
}

func waitLen(t *testing.T, what string, want int, got func() int) {
	t.Helper()
	testenv.WaitFor(t, 20*time.Second, func() error {
		if n := got(); n != want {
			return fmt.Errorf("%s: %d events, want %d", what, n, want)
		}
		return nil
	})
}

// tapDead binds a queue of the test's own to the dead-letter exchange.
func tapDead(t *testing.T, connect fabrictest.Connect) <-chan *transport.Delivery {
	t.Helper()
	c := connect(t)
	must(t, c.DeclareExchange(t.Context(), transport.Exchange{Name: wire.DeadLetterExchange, Kind: transport.Fanout, Durable: true}))
	q, err := c.DeclareQueue(t.Context(), transport.Queue{Exclusive: true})
	must(t, err)
	must(t, c.Bind(t.Context(), transport.Binding{Exchange: wire.DeadLetterExchange, Queue: q}))
	ch, err := c.Consume(t.Context(), q, transport.ConsumeOptions{AutoAck: true})
	must(t, err)
	return ch
}

// deadLetter waits for Warren's dead letter of an event with key.
func deadLetter(t *testing.T, dead <-chan *transport.Delivery, key string) *transport.Delivery {
	t.Helper()
	return deadLetterBy(t, dead, func(d *transport.Delivery) bool {
		return wire.String(d.Headers, wire.HeaderOriginalRoutingKey) == key
	})
}

func deadLetterBy(t *testing.T, dead <-chan *transport.Delivery, match func(*transport.Delivery) bool) *transport.Delivery {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case d := <-dead:
			if match(d) {
				return d
			}
		case <-timeout:
			t.Fatal("no such dead letter")
		}
	}
}

func TestWildcards(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		b := newBus(t, connect, events.Config{})
		p := fabrictest.Actor() // a unique first word: tests share the broker
		patterns := []string{"*", "#", p + ".*", p + ".#", p + ".*.c", p + ".#.c", "*." + p, "#." + p + ".#", p + ".a.b.c"}
		got := map[string]*collector{}
		for _, pat := range patterns {
			got[pat] = &collector{}
			subscribe(t, b, pat, got[pat].handle)
		}
		keys := []string{p, p + ".a", p + ".a.c", p + ".a.b.c", p + ".c", "x." + p}
		for _, k := range keys {
			must(t, b.Publish(t.Context(), k, k))
		}
		want := map[string][]string{
			p + ".*":        {p + ".a", p + ".c"},
			p + ".#":        {p, p + ".a", p + ".a.c", p + ".a.b.c", p + ".c"},
			p + ".*.c":      {p + ".a.c"},
			p + ".#.c":      {p + ".a.c", p + ".a.b.c", p + ".c"},
			"*." + p:        {"x." + p},
			"#." + p + ".#": keys,
			p + ".a.b.c":    {p + ".a.b.c"},
		}
		// One publisher and one queue per pattern: each queue gets its
		// events in order.
		for pat, w := range want {
			testenv.WaitFor(t, 20*time.Second, func() error {
				if ks := got[pat].keys(); !slices.Equal(ks, w) {
					return fmt.Errorf("pattern %q got %q, want %q", pat, ks, w)
				}
				return nil
			})
		}
		testenv.WaitFor(t, 20*time.Second, func() error {
			if !slices.Contains(got["#"].keys(), "x."+p) {
				return fmt.Errorf("pattern # did not get x.%s", p)
			}
			return nil
		})
		if !slices.Contains(got["*"].keys(), p) {
			t.Errorf("pattern * did not get %q: %q", p, got["*"].keys())
		}
	})
}

func TestBadKeysAndPatterns(t *testing.T) {
	b, err := events.New(nopTransport{}, events.Config{})
	must(t, err)
	for _, k := range []string{"", "a..b", ".a", "a.", "a b", "a.*", "#", "a.b#", "a\x00b", string(make([]byte, 256))} {
		if err := b.Publish(t.Context(), k, nil); !errors.Is(err, wire.ErrInvalidEventKey) {
			t.Errorf("publish %q: %v, want ErrInvalidEventKey", k, err)
		}
	}
	for _, p := range []string{"", "a..b", "a*", "a.b*.c", "#a", "a b", "a.\n"} {
		if _, err := b.Subscribe(t.Context(), p, func(context.Context, *events.Event) error { return nil }); !errors.Is(err, wire.ErrInvalidEventPattern) {
			t.Errorf("subscribe %q: %v, want ErrInvalidEventPattern", p, err)
		}
	}
	if _, err := b.Subscribe(t.Context(), "a", func(context.Context, *events.Event) error { return nil }, events.One("a/b")); !errors.Is(err, wire.ErrInvalidIdentity) {
		t.Errorf("group a/b: %v", err)
	}
	if _, err := b.Subscribe(t.Context(), "a", func(context.Context, *events.Event) error { return nil }, events.Durable()); err == nil {
		t.Errorf("durable All without an identity accepted")
	}
	if err := b.Publish(t.Context(), "a", json.RawMessage("{")); err == nil {
		t.Errorf("invalid JSON payload accepted")
	}
}

// nopTransport fails every call: the checks come first.
type nopTransport struct{ transport.Transport }

// TestModes runs two processes (buses on their own connections) per group
// and host, in each mode.
func TestModes(t *testing.T) {
	const n = 20
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		key := fabrictest.Actor() + ".job"
		pub := newBus(t, connect, events.Config{})
		type sub struct {
			c    *collector
			host string
		}
		start := func(mode func(string) events.SubscribeOption, group string, hosts ...string) []sub {
			var subs []sub
			for _, h := range hosts {
				c := &collector{}
				subscribe(t, newBus(t, connect, events.Config{Host: h}), key, c.handle, mode(group))
				subs = append(subs, sub{c, h})
			}
			return subs
		}
		one := start(events.One, fabrictest.Actor(), "h1", "h1")
		host := start(events.PerHost, fabrictest.Actor(), "h1", "h1", "h2", "h2")
		all := start(func(string) events.SubscribeOption { return events.All() }, "", "h1", "h1")
		for i := range n {
			must(t, pub.Publish(t.Context(), key, i))
		}
		total := func(subs []sub, host string) func() int {
			return func() int {
				sum := 0
				for _, s := range subs {
					if host == "" || s.host == host {
						sum += s.c.len()
					}
				}
				return sum
			}
		}
		waitLen(t, "one", n, total(one, ""))
		waitLen(t, "host h1", n, total(host, "h1"))
		waitLen(t, "host h2", n, total(host, "h2"))
		for i, s := range all {
			waitLen(t, fmt.Sprintf("all[%d]", i), n, s.c.len)
		}
		// Nothing more arrives: each event went once per group and host.
		must(t, pub.Publish(t.Context(), key, "end"))
		waitLen(t, "one", n+1, total(one, ""))
		waitLen(t, "host h1", n+1, total(host, "h1"))
		waitLen(t, "host h2", n+1, total(host, "h2"))
		for _, subs := range [][]sub{one, host} {
			seen := map[string]bool{}
			for _, s := range subs {
				for _, e := range s.c.evs {
					k := s.host + string(e.Payload)
					if seen[k] {
						t.Errorf("event %s delivered twice on host %s", e.Payload, s.host)
					}
					seen[k] = true
				}
			}
		}
	})
}

// TestDurableSubscription: events published while the only subscriber of
// a durable group is down wait for it: 0 lost.
func TestDurableSubscription(t *testing.T) {
	const n = 50
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		key := fabrictest.Actor() + ".stored"
		group := fabrictest.Actor()
		pub := newBus(t, connect, events.Config{})
		first := &collector{}
		s, err := newBus(t, connect, events.Config{}).Subscribe(t.Context(), key, first.handle, events.One(group), events.Durable())
		must(t, err)
		must(t, pub.Publish(t.Context(), key, -1))
		waitLen(t, "before the restart", 1, first.len)
		must(t, s.Close())
		for i := range n {
			must(t, pub.Publish(t.Context(), key, i, events.Persistent()))
		}
		again := &collector{}
		subscribe(t, newBus(t, connect, events.Config{}), key, again.handle, events.One(group), events.Durable())
		waitLen(t, "after the restart", n, again.len)
		for i, e := range again.evs {
			var v int
			must(t, e.Decode(&v))
			if v != i {
				t.Fatalf("event %d is %d: out of order", i, v)
			}
		}
		if first.len() != 1 {
			t.Errorf("the closed subscription handled %d events", first.len())
		}

		// Durable All: named after the bus identity.
		id := fabrictest.Actor()
		allKey := fabrictest.Actor() + ".all"
		c1 := &collector{}
		s, err = newBus(t, connect, events.Config{Identity: id}).Subscribe(t.Context(), allKey, c1.handle, events.Durable())
		must(t, err)
		if s.Queue() != "warren.events.all."+id {
			t.Errorf("durable All queue %q", s.Queue())
		}
		must(t, s.Close())
		must(t, pub.Publish(t.Context(), allKey, "while down"))
		c2 := &collector{}
		subscribe(t, newBus(t, connect, events.Config{Identity: id}), allKey, c2.handle, events.Durable())
		waitLen(t, "durable all", 1, c2.len)
	})
}

// TestTransientSubscriptionLosesEventsWhileDown: the other side of it.
func TestTransientSubscriptionLosesEventsWhileDown(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		key := fabrictest.Actor() + ".gone"
		group := fabrictest.Actor()
		pub := newBus(t, connect, events.Config{})
		s, err := newBus(t, connect, events.Config{}).Subscribe(t.Context(), key, func(context.Context, *events.Event) error { return nil }, events.One(group))
		must(t, err)
		must(t, s.Close())
		// RabbitMQ deletes an auto-delete queue once the consumer's cancel
		// went through, after Close returned.
		testenv.WaitFor(t, 20*time.Second, func() error {
			if err := pub.Publish(t.Context(), key, 1, events.Mandatory()); !errors.Is(err, events.ErrNoSubscriber) {
				return fmt.Errorf("publish with no subscriber left: %v, want ErrNoSubscriber", err)
			}
			return nil
		})
	})
}

// TestCrashRedelivery: a subscriber whose process dies mid-handler has its
// event redelivered to the other subscriber of the group.
func TestCrashRedelivery(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		key := fabrictest.Actor() + ".crash"
		group := fabrictest.Actor()
		pub := newBus(t, connect, events.Config{})

		started := make(chan struct{})
		release := make(chan struct{})
		defer close(release)
		crashTr := connect(t)
		crashBus, err := events.New(crashTr, events.Config{}, events.WithLogger(testenv.Logger(t)))
		must(t, err)
		var once sync.Once
		subscribe(t, crashBus, key, func(ctx context.Context, ev *events.Event) error {
			once.Do(func() { close(started) })
			<-release
			return nil
		}, events.One(group))

		must(t, pub.Publish(t.Context(), key, "work"))
		select {
		case <-started:
		case <-time.After(20 * time.Second):
			t.Fatal("the event never reached the subscriber")
		}
		// Only now the second subscriber: the event was the first's.
		survivor := &collector{}
		subscribe(t, newBus(t, connect, events.Config{}), key, survivor.handle, events.One(group))
		must(t, crashTr.Close()) // the process dies: its connection goes
		waitLen(t, "survivor", 1, survivor.len)
		if ev := survivor.evs[0]; !ev.Redelivered || string(ev.Payload) != `"work"` {
			t.Fatalf("survivor got %s, redelivered %v", ev.Payload, ev.Redelivered)
		}
	})
}

// TestDeadLetters: handler errors, panics and malformed events are
// dead-lettered with the reason; ErrRetry redelivers.
func TestDeadLetters(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		dead := tapDead(t, connect)
		p := fabrictest.Actor()
		b := newBus(t, connect, events.Config{Identity: "sub-" + p})
		var tries sync.Map
		s := subscribe(t, b, p+".#", func(ctx context.Context, ev *events.Event) error {
			switch ev.Key {
			case p + ".fail":
				return errors.New("disk full")
			case p + ".panic":
				panic("boom")
			case p + ".retry":
				n, _ := tries.LoadOrStore(ev.ID, new(int))
				if *n.(*int)++; *n.(*int) < 3 {
					return fmt.Errorf("not yet: %w", events.ErrRetry)
				}
			}
			return nil
		}, events.One(p), events.Durable())
		must(t, b.Publish(t.Context(), p+".fail", 1))
		d := deadLetter(t, dead, p+".fail")
		if wire.String(d.Headers, wire.HeaderReason) != wire.CodeHandler || wire.String(d.Headers, wire.HeaderError) != "disk full" || wire.String(d.Headers, wire.HeaderAgent) != "sub-"+p {
			t.Errorf("dead letter headers %v", d.Headers)
		}
		if wire.String(d.Headers, wire.HeaderOriginalExchange) != wire.EventExchange {
			t.Errorf("original exchange %v", d.Headers)
		}
		must(t, b.Publish(t.Context(), p+".panic", 1))
		if d := deadLetter(t, dead, p+".panic"); wire.String(d.Headers, wire.HeaderReason) != wire.CodePanic {
			t.Errorf("panic dead letter headers %v", d.Headers)
		}
		// Not JSON, published by another client.
		raw := connect(t)
		must(t, raw.Publish(t.Context(), wire.EventExchange, p+".bad", transport.Message{Body: []byte("{nope"), Type: wire.TypeEvent}, transport.PublishOptions{Confirm: true}))
		if d := deadLetter(t, dead, p+".bad"); wire.String(d.Headers, wire.HeaderReason) != wire.CodeBadRequest {
			t.Errorf("bad dead letter headers %v", d.Headers)
		}
		must(t, b.Publish(t.Context(), p+".retry", 1))
		waitLen(t, "handled", 1, func() int { return int(s.Stats().Handled) })
		if st := s.Stats(); st.Retried != 2 || st.DeadLettered != 3 {
			t.Errorf("stats %+v, want 2 retried, 3 dead-lettered", st)
		}
	})
}

// TestTTL: an event that waited past its TTL is not handled but
// dead-lettered, by the subscriber when it had it already (prefetched
// behind a slow one), by the queue otherwise.
func TestTTL(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		dead := tapDead(t, connect)
		p := fabrictest.Actor()
		pub := newBus(t, connect, events.Config{})
		started := make(chan struct{}, 1)
		release := make(chan struct{})
		handled := &collector{}
		subscribe(t, newBus(t, connect, events.Config{}), p+".#", func(ctx context.Context, ev *events.Event) error {
			_ = handled.handle(ctx, ev)
			if ev.Key == p+".slow" {
				started <- struct{}{}
				<-release
			}
			return nil
		})
		must(t, pub.Publish(t.Context(), p+".slow", 1))
		<-started
		must(t, pub.Publish(t.Context(), p+".short", 1, events.TTL(50*time.Millisecond)))
		must(t, pub.Publish(t.Context(), p+".long", 1, events.TTL(time.Hour)))
		time.Sleep(100 * time.Millisecond) // the TTL passes while the handler is busy
		close(release)
		d := deadLetter(t, dead, p+".short")
		if wire.String(d.Headers, wire.HeaderReason) != wire.CodeExpired {
			t.Errorf("dead letter headers %v", d.Headers)
		}
		if _, ok := wire.Deadline(d.Headers); !ok {
			t.Errorf("dead letter without its deadline: %v", d.Headers)
		}

		// In a queue nobody consumes, the broker expires it.
		group := fabrictest.Actor()
		s, err := newBus(t, connect, events.Config{}).Subscribe(t.Context(), "q."+p, func(context.Context, *events.Event) error { return nil }, events.One(group), events.Durable())
		must(t, err)
		must(t, s.Close())
		must(t, pub.Publish(t.Context(), "q."+p, 1, events.TTL(20*time.Millisecond)))
		if d := deadLetterBy(t, dead, func(d *transport.Delivery) bool { return d.RoutingKey == "q."+p }); d.Headers["x-death"] == nil {
			t.Errorf("broker dead letter without x-death: %v", d.Headers)
		}
		if ks := handled.keys(); !slices.Equal(ks, []string{p + ".slow", p + ".long"}) {
			t.Errorf("handled %q", ks)
		}
	})
}

// TestHandlerPublishesAndCalls: Vincent's b.cast and b.call from inside a
// handler.
func TestHandlerPublishesAndCalls(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		a, err := agent.New(connect(t), agent.Config{Identity: "files-" + actor}, agent.WithLogger(testenv.Logger(t)))
		must(t, err)
		must(t, a.Handle("/"+actor+"/get", agent.Func(func(ctx context.Context, name string) (string, error) {
			return "bytes of " + name, nil
		})))
		fabrictest.RunAgent(t, a)
		tr := connect(t)
		m := fabrictest.RunMapper(t, tr, mapper.Config{})
		b, err := events.New(tr, events.Config{}, events.WithLogger(testenv.Logger(t)))
		must(t, err)
		subscribe(t, b, actor+".encrypt", func(ctx context.Context, ev *events.Event) error {
			var file string
			if err := ev.Decode(&file); err != nil {
				return err
			}
			r, err := m.Request(ctx, "/"+actor+"/get", file)
			if err != nil {
				return err
			}
			return b.Publish(ctx, actor+".encrypted", r.Body)
		}, events.One(actor))
		done := &collector{}
		subscribe(t, newBus(t, connect, events.Config{}), actor+".encrypted", done.handle)
		must(t, newBus(t, connect, events.Config{}).Publish(t.Context(), actor+".encrypt", "f.dat"))
		waitLen(t, "encrypted", 1, done.len)
		if got := string(done.evs[0].Payload); got != `"bytes of f.dat"` {
			t.Errorf("encrypted event %s", got)
		}
	})
}

// TestNoSubscriber: dropped by default, an error when mandatory.
func TestNoSubscriber(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		b := newBus(t, connect, events.Config{})
		key := fabrictest.Actor() + ".nobody"
		must(t, b.Publish(t.Context(), key, 1))
		if err := b.Publish(t.Context(), key, 1, events.Mandatory()); !errors.Is(err, events.ErrNoSubscriber) || !errors.Is(err, transport.ErrUnroutable) {
			t.Fatalf("mandatory publish with no subscriber: %v", err)
		}
	})
}

// TestPlainAMQPPublisher: an event published as docs/protocol.md says,
// without Warren (no type, no content type, a header of its own), reaches
// a Warren subscriber.
func TestPlainAMQPPublisher(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		key := fabrictest.Actor() + ".plain"
		got := &collector{}
		subscribe(t, newBus(t, connect, events.Config{}), key, got.handle)
		raw := connect(t)
		msg := transport.Message{Body: []byte(`{"file":"f.dat"}`), AppID: "py-1", MessageID: "m1", Headers: map[string]any{"x-mine": "1"}}
		must(t, raw.Publish(t.Context(), wire.EventExchange, key, msg, transport.PublishOptions{Confirm: true}))
		waitLen(t, "plain", 1, got.len)
		if ev := got.evs[0]; ev.From != "py-1" || ev.ID != "m1" || string(ev.Payload) != `{"file":"f.dat"}` || ev.Headers["x-mine"] != "1" {
			t.Fatalf("event %+v", ev)
		}
	})
}
