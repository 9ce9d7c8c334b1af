package setup_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenrpc/warren/events"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/setup"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// keys records the keys of the events a subscription got.
type keys struct {
	mu sync.Mutex
	ks []string
}

func (k *keys) handle(_ context.Context, ev *events.Event) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ks = append(k.ks, ev.Key)
	return nil
}

func (k *keys) get() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.ks)
}

// TestEventsLeastPrivilege: the agent and mapper users that setup makes
// publish events and subscribe to them in every mode, durable and
// transient, and dead-letter what their handlers fail (issue 12); they
// cannot consume, purge, declare or delete the subscriber queues outside
// their scope (--event-group, --agent-identity), nor another subscriber's
// transient queue; a user set up with --no-events can do nothing with
// events.
func TestEventsLeastPrivilege(t *testing.T) {
	f := newFixture(t)
	fredU, mapperU := f.user(t, "fred"), f.user(t, "mapper")
	f.apply(t, setup.Plan{Agent: fredU, AgentIdentities: []string{"fred"}, Mapper: mapperU, EventGroups: []string{"enc", "audit"}})
	fredURL, mapperURL := f.url(t, fredU, f.vhost), f.url(t, mapperU, f.vhost)
	admin := dialRaw(t, f.adminURL(t))

	for _, role := range []struct{ name, url, identity string }{
		{"agent", fredURL, "fred"},
		{"mapper", mapperURL, "web-1"},
	} {
		t.Run(role.name, func(t *testing.T) {
			bus, err := events.New(dial(t, role.url), events.Config{Identity: role.identity, Host: "h1"},
				events.WithLogger(testenv.Logger(t)))
			if err != nil {
				t.Fatal(err)
			}
			modes := []struct {
				name string
				opts []events.SubscribeOption
			}{
				{"one durable", []events.SubscribeOption{events.One("enc"), events.Durable()}},
				{"one transient", []events.SubscribeOption{events.One("audit")}},
				{"host durable", []events.SubscribeOption{events.PerHost("audit"), events.Durable()}},
				{"host transient", []events.SubscribeOption{events.PerHost("enc")}},
				{"all durable", []events.SubscribeOption{events.All(), events.Durable()}},
				{"all transient", []events.SubscribeOption{events.All()}},
			}
			got := make([]*keys, len(modes))
			for i, m := range modes {
				got[i] = &keys{}
				s, err := bus.Subscribe(ctxT(t, 10*time.Second), "probe.#", got[i].handle, m.opts...)
				if err != nil {
					t.Fatalf("%s user subscribes %s: %v", role.name, m.name, err)
				}
				t.Cleanup(func() { s.Close() })
				t.Logf("%s: queue %s", m.name, s.Queue())
			}
			key := "probe." + role.name
			if err := bus.Publish(ctxT(t, 10*time.Second), key, map[string]string{"by": role.name}, events.Persistent(), events.Mandatory()); err != nil {
				t.Fatalf("%s user publishes: %v", role.name, err)
			}
			testenv.WaitFor(t, 10*time.Second, func() error {
				for i, m := range modes {
					if ks := got[i].get(); !slices.Equal(ks, []string{key}) {
						return fmt.Errorf("%s got %q, want [%s]", m.name, ks, key)
					}
				}
				return nil
			})

			// A failed handler's event is dead-lettered with its reason:
			// the user may publish to warren.dlx (had it been refused, the
			// event would reach warren.dead rejected, without the reason).
			fail, err := bus.Subscribe(ctxT(t, 10*time.Second), "fail."+role.name, func(context.Context, *events.Event) error {
				return errors.New("no thanks")
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { fail.Close() })
			if err := bus.Publish(ctxT(t, 10*time.Second), "fail."+role.name, nil); err != nil {
				t.Fatal(err)
			}
			testenv.WaitFor(t, 10*time.Second, func() error {
				ch, err := admin.Channel()
				if err != nil {
					return err
				}
				defer ch.Close()
				d, ok, err := ch.Get(wire.DeadLetterQueue, true)
				if err != nil || !ok {
					return fmt.Errorf("no dead letter yet (%v)", err)
				}
				if r := d.Headers[wire.HeaderReason]; d.RoutingKey != "fail."+role.name || r != wire.CodeHandler {
					return fmt.Errorf("dead letter %s with reason %v, want fail.%s, %s", d.RoutingKey, r, role.name, wire.CodeHandler)
				}
				return nil
			})
		})
	}

	// Queues of other groups and identities, with an event in each.
	ach, err := admin.Channel()
	if err != nil {
		t.Fatal(err)
	}
	others := []string{"warren.events.one.billing", "warren.events.host.billing.h1", "warren.events.all.bob"}
	for _, q := range others {
		if _, err := ach.QueueDeclare(q, true, false, false, false, amqp091.Table{"x-dead-letter-exchange": "warren.dlx"}); err != nil {
			t.Fatal(err)
		}
		if err := ach.PublishWithContext(t.Context(), "", q, false, false, amqp091.Publishing{Body: []byte(`"event"`)}); err != nil {
			t.Fatal(err)
		}
	}
	fred, mapperConn := dialRaw(t, fredURL), dialRaw(t, mapperURL)
	for _, q := range others {
		for _, u := range []struct {
			name string
			c    *amqp091.Connection
		}{{"agent", fred}, {"mapper", mapperConn}} {
			if u.name == "mapper" && q == "warren.events.all.bob" {
				continue // no identity scope: the documented gap below
			}
			refused(t, u.c, u.name+" consumes "+q, consume(q))
			refused(t, u.c, u.name+" purges "+q, purge(q))
			refused(t, u.c, u.name+" deletes "+q, deleteQueue(q))
			refused(t, u.c, u.name+" binds "+q, func(ch *amqp091.Channel) error {
				return ch.QueueBind(q, "#", wire.EventExchange, false, nil)
			})
		}
	}
	refused(t, fred, "agent declares another group's queue", func(ch *amqp091.Channel) error {
		_, err := ch.QueueDeclare("warren.events.one.payroll", false, false, false, false, amqp091.Table{"x-dead-letter-exchange": "warren.dlx"})
		return err
	})
	for _, q := range others {
		if q, err := ach.QueueDeclarePassive(q, true, false, false, false, amqp091.Table{"x-dead-letter-exchange": "warren.dlx"}); err != nil || q.Messages != 1 {
			t.Fatalf("queue %s: %+v, %v", q.Name, q, err)
		}
	}

	// A transient All subscription's queue is exclusive: no other
	// connection may consume, purge or delete it, whatever its user.
	bus, err := events.New(dial(t, mapperURL), events.Config{Identity: "web-2"}, events.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	s, err := bus.Subscribe(ctxT(t, 10*time.Second), "probe.#", (&keys{}).handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for _, o := range []struct {
		what string
		o    op
	}{{"consumes", consume(s.Queue())}, {"purges", purge(s.Queue())}, {"deletes", deleteQueue(s.Queue())}} {
		for _, c := range []*amqp091.Connection{fred, mapperConn} {
			err := outcome(t, c, o.o)
			var ae *amqp091.Error
			if !errors.As(err, &ae) || ae.Code != amqp091.ResourceLocked {
				t.Errorf("another connection %s a transient subscriber's queue: %v, want RESOURCE_LOCKED", o.what, err)
			}
		}
	}

	// What stays possible (docs/operations.md, "What RabbitMQ permissions
	// cannot express"), pinned so that whoever closes it updates the docs:
	// any user that may subscribe may bind a queue of its own to every key,
	// publish any key, and the mapper user may consume any durable All
	// subscription's queue.
	allowed(t, fred, "agent binds its own queue to every event (known gap)", func(ch *amqp091.Channel) error {
		q, err := ch.QueueDeclare("", false, true, true, false, nil)
		if err != nil {
			return err
		}
		return ch.QueueBind(q.Name, "#", wire.EventExchange, false, nil)
	})
	allowed(t, fred, "agent publishes any key (known gap)", publish(wire.EventExchange, "billing.paid"))
	allowed(t, mapperConn, "mapper consumes a durable All queue of an agent (known gap)", consume("warren.events.all.bob"))
}

// TestNoEvents: a user set up with --no-events may neither publish nor
// subscribe.
func TestNoEvents(t *testing.T) {
	f := newFixture(t)
	agentU, mapperU := f.user(t, "agent"), f.user(t, "mapper")
	f.apply(t, setup.Plan{Agent: agentU, Mapper: mapperU, NoEvents: true})
	for _, u := range []setup.User{agentU, mapperU} {
		bus, err := events.New(dial(t, f.url(t, u, f.vhost)), events.Config{}, events.WithLogger(testenv.Logger(t)))
		if err != nil {
			t.Fatal(err)
		}
		if err := bus.Publish(ctxT(t, 10*time.Second), "probe.x", nil); !errors.Is(err, transport.ErrAccessRefused) {
			t.Errorf("%s publishes: %v, want ErrAccessRefused", u.Name, err)
		}
		if _, err := bus.Subscribe(ctxT(t, 10*time.Second), "probe.#", (&keys{}).handle); !errors.Is(err, transport.ErrAccessRefused) {
			t.Errorf("%s subscribes: %v, want ErrAccessRefused", u.Name, err)
		}
		c := dialRaw(t, f.url(t, u, f.vhost))
		refused(t, c, u.Name+" publishes to warren.events", publish(wire.EventExchange, "probe.x"))
		refused(t, c, u.Name+" binds to warren.events", bindOwn(wire.EventExchange))
	}
}

// TestPublishRefusedIsAccessError: a publish the broker refuses for want
// of a permission (write on the exchange, or a topic permission on
// warren.events, as docs/operations.md suggests) fails with
// transport.ErrAccessRefused, not as a lost connection that a caller
// would retry; the transport publishes again afterwards.
func TestPublishRefusedIsAccessError(t *testing.T) {
	f := newFixture(t)
	agentU, mapperU := f.user(t, "agent"), f.user(t, "mapper")
	f.apply(t, setup.Plan{Agent: agentU, Mapper: mapperU})
	// The agent user may publish only file.* events.
	body := strings.NewReader(`{"exchange":"warren.events","write":"^file\\.","read":".*"}`)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut,
		strings.TrimSuffix(os.Getenv("WARREN_ADMIN_URL"), "/")+"/api/topic-permissions/"+url.PathEscape(f.vhost)+"/"+url.PathEscape(agentU.Name), body)
	if err != nil {
		t.Fatal(err)
	}
	user, pw := os.Getenv("WARREN_ADMIN_USER"), os.Getenv("WARREN_ADMIN_PASSWORD")
	if user == "" {
		user, pw = "guest", "guest"
	}
	req.SetBasicAuth(user, pw)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("topic permissions: %s", resp.Status)
	}

	tr := dial(t, f.url(t, agentU, f.vhost))
	err = tr.Publish(ctxT(t, 10*time.Second), wire.RequestExchange, "bob", transport.Message{Body: []byte(`1`)}, transport.PublishOptions{Confirm: true})
	if !errors.Is(err, transport.ErrAccessRefused) || errors.Is(err, transport.ErrConnectionLost) {
		t.Errorf("agent user publishes to warren.request: %v, want ErrAccessRefused", err)
	}
	bus, err := events.New(tr, events.Config{Identity: "fred"}, events.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(ctxT(t, 10*time.Second), "billing.paid", 1); !errors.Is(err, transport.ErrAccessRefused) || errors.Is(err, transport.ErrConnectionLost) {
		t.Errorf("publish of a key outside the topic permission: %v, want ErrAccessRefused", err)
	}
	if err := bus.Publish(ctxT(t, 10*time.Second), "file.ok", 1); err != nil {
		t.Errorf("publish of a permitted key after a refusal: %v", err)
	}
}

// TestEventPrefixes: --event-prefix limits both users, through RabbitMQ
// topic permissions, to the event keys under the prefixes, word by word,
// in what they publish and the patterns they subscribe with; setup sets
// them idempotently and, run without prefixes, leaves them alone.
func TestEventPrefixes(t *testing.T) {
	f := newFixture(t)
	agentU, mapperU := f.user(t, "agent"), f.user(t, "mapper")
	plan := setup.Plan{Agent: agentU, Mapper: mapperU, EventPrefixes: []string{"file", "audit.eu"}}
	r := f.apply(t, plan)
	want := `warren.events: write '^(file|audit\.eu)(\.|$)' read '^(file|audit\.eu)(\.|$)'`
	if !strings.Contains(r.String(), "topic permissions of "+agentU.Name+" on "+f.vhost+": created ("+want+")") {
		t.Errorf("setup did not report the topic permissions:\n%s", r)
	}
	if again := f.apply(t, plan); again.Changed() {
		t.Errorf("second run changed something:\n%s", again)
	}
	without := plan
	without.EventPrefixes = nil
	if r := f.apply(t, without); r.Changed() || !strings.Contains(r.String(), "left as they are") {
		t.Errorf("a run without prefixes:\n%s", r)
	}

	for _, u := range []setup.User{agentU, mapperU} {
		bus, err := events.New(dial(t, f.url(t, u, f.vhost)), events.Config{}, events.WithLogger(testenv.Logger(t)))
		if err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{"file", "file.encrypt", "audit.eu.login"} {
			if err := bus.Publish(ctxT(t, 10*time.Second), key, 1); err != nil {
				t.Errorf("%s publishes %s: %v", u.Name, key, err)
			}
		}
		for _, key := range []string{"filex", "log.file", "audit.us", "audit"} {
			if err := bus.Publish(ctxT(t, 10*time.Second), key, 1); !errors.Is(err, transport.ErrAccessRefused) {
				t.Errorf("%s publishes %s: %v, want ErrAccessRefused", u.Name, key, err)
			}
		}
		for _, pattern := range []string{"file.#", "file.*", "file", "audit.eu.#"} {
			s, err := bus.Subscribe(ctxT(t, 10*time.Second), pattern, (&keys{}).handle)
			if err != nil {
				t.Errorf("%s subscribes %s: %v", u.Name, pattern, err)
				continue
			}
			s.Close()
		}
		for _, pattern := range []string{"#", "*.encrypt", "audit.#", "filex.#"} {
			if _, err := bus.Subscribe(ctxT(t, 10*time.Second), pattern, (&keys{}).handle); !errors.Is(err, transport.ErrAccessRefused) {
				t.Errorf("%s subscribes %s: %v, want ErrAccessRefused", u.Name, pattern, err)
			}
		}
	}
}
