// Package transporttest is the conformance suite that every
// [transport.Transport] must pass. It describes RabbitMQ 3.10's behaviour
// through the transport interface: transport/amqp runs it against a real
// broker and transport/mem against the embedded one, and a scenario that
// holds on only one of them is a bug in the suite. secure runs it through
// its Transport, a decorator, on both; the few scenarios it changes on
// purpose (it fills app_id, accepts a message once, refuses dead-lettered
// copies) it names in [Harness.Skip] with the reason.
//
// A transport's test calls [Run] with a [Factory] of connections to one
// broker:
//
//	func TestConformance(t *testing.T) {
//		b := mem.NewBroker()
//		t.Cleanup(func() { b.Close() })
//		transporttest.Run(t, func(t *testing.T) transport.Transport { return b.Connect() }, transporttest.Harness{})
//	}
//
// Each scenario is a subtest named by the behaviour it pins down, so one can
// be run alone (go test -run 'TestConformance/NackRequeue'). Scenarios use
// their own queue and exchange names (see [Name]), run in parallel, and
// delete what they declare.
//
// # Scenarios
//
// Routing and properties: PropertiesRoundTrip (every Message field and
// header type; Timestamp to the second), EmptyMessageRoundTrip,
// LargeBodyRoundTrip, CancelledContextFails,
// DefaultExchangeRoutesByQueueName, DirectRouting, FanoutToAllBoundQueues,
// PublishedHeadersKept (Publish leaves its headers alone, and each delivery's
// headers are its consumer's own), TopicWildcards, ServerNamedQueue,
// MandatoryUnroutable, UnconfirmedReturned and UnconfirmedChannelBreak
// (PublishOptions.Unconfirmed: every transport is a transport.Returner),
// ConfirmedPublish,
// PublishToMissingExchange, UnreadableHeadersDelivered (headers amqp091-go
// cannot read: removed, with transport.HeaderMalformed).
//
// Consumers: CompetingConsumersRoundRobin, PrefetchBoundsUnacked,
// UnackedRedeliveredOnConsumerCancel, UnackedRedeliveredOnClose,
// NackRequeue, RequeueOrder, AutoAckNotRedelivered,
// AckTwiceErrAlreadySettled, ExclusiveConsumer,
// ConsumeCtxCancelClosesChannel, DeleteQueueEndsConsumer,
// ConcurrentPublishConsume.
//
// Dead letters (x-death and x-first-death-* as RabbitMQ writes them):
// NackWithoutRequeueDeadLetters, NackWithoutDLXDrops, QueueTTLExpiresToDLX,
// PerMessageExpirationToDLX, MaxLengthDropsOrDeadLettersOldest,
// DeadLetterRoutingKey, DeadLetterCountIncrements, QuorumDeliveryLimit.
//
// Lifecycle: ExclusiveQueueDeletedOnClose, ExclusiveQueueOtherConnection,
// AutoDeleteQueueGoesWithLastConsumer,
// AutoDeleteExchangeGoesWithLastBinding, QueueExpiresWhenUnused,
// InspectQueue,
// DeclareIdempotent, DeclareConflictIsPrecondition, ReservedNamesRefused,
// ConsumeMissingQueueNotFound, DeleteQueueDropsMessages, ConcurrentClose,
// OperationsAfterCloseErrClosed, and PersistenceAcrossRestart (needs
// [Harness.Restart]; it runs first, alone, before the parallel scenarios).
//
// Timing: an expected event may take up to 5s; the suite watches 200ms for
// something that must not happen, and uses TTLs of 100-300ms. Against a
// local RabbitMQ the whole suite takes a few seconds.
//
// # Error mapping
//
// Transports report broker refusals with the sentinels of package
// transport, wrapped, so the suite tests them with errors.Is:
//
//   - 404 NOT_FOUND (missing queue or exchange): [transport.ErrNotFound].
//   - 406 PRECONDITION_FAILED (a declaration that conflicts with the
//     existing entity, or invalid arguments), 403 ACCESS_REFUSED (the
//     default exchange, the reserved amq. prefix, a queue in exclusive use
//     by a consumer) and 405 RESOURCE_LOCKED (an exclusive queue of another
//     connection): [transport.ErrPrecondition].
//   - basic.return of a mandatory publish: [transport.ErrUnroutable].
//   - 403 ACCESS_REFUSED for a permission the user lacks:
//     [transport.ErrAccessRefused] (the suite runs as a user allowed
//     everything; setup's TestParkAsMapperUser checks it on RabbitMQ).
//
// After such a refusal, which closes the AMQP channel, the transport stays
// usable: the suite's next operation on it must work.
//
// # Publishing to a missing exchange
//
// RabbitMQ reports it by closing the channel, asynchronously. The suite
// requires ErrNotFound only from a confirmed (or mandatory) Publish; an
// unconfirmed one may return nil or ErrNotFound, and the transport must
// work again within a few seconds.
package transporttest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/transport"
)

// Factory returns a fresh Transport (a new connection) on the same broker
// each time it is called. The suite closes what it opens (t.Cleanup).
type Factory func(t *testing.T) transport.Transport

// Harness holds what only the test environment can do. A nil field skips
// the scenarios needing it, with a message naming the field.
type Harness struct {
	// Restart stops and starts the broker (RabbitMQ: rabbitmqctl
	// stop_app/start_app). Transports from the Factory made before it may
	// be dead afterwards.
	Restart func(t *testing.T)
	// Skip names scenarios that a transport decorating another (such as
	// secure.Transport) changes on purpose, each with the reason: the
	// scenario is skipped with it. A naming mistake fails the suite. A
	// transport of a broker skips none.
	Skip map[string]string
}

// Timeouts of the suite: wait is how long an expected event may take (long:
// a loaded CI machine once took over 5 s to expire a 100ms message); quiet
// is how long the suite watches for something that must not happen.
const (
	wait  = 15 * time.Second
	quiet = 200 * time.Millisecond
)

type scenario struct {
	name string
	fn   func(e *env)
	// serial scenarios run before the parallel ones, alone (Restart).
	serial bool
}

// Run runs every scenario against the transports newT makes.
func Run(t *testing.T, newT Factory, h Harness) {
	t.Helper()
	for name := range h.Skip {
		if !slices.ContainsFunc(scenarios, func(s scenario) bool { return s.name == name }) {
			t.Errorf("Harness.Skip names %q, which is no scenario", name)
		}
	}
	for _, s := range scenarios {
		if !s.serial {
			continue
		}
		t.Run(s.name, func(t *testing.T) {
			h.skip(t, s.name)
			s.fn(newEnv(t, newT, h))
		})
	}
	for _, s := range scenarios {
		if s.serial {
			continue
		}
		t.Run(s.name, func(t *testing.T) {
			h.skip(t, s.name)
			t.Parallel()
			s.fn(newEnv(t, newT, h))
		})
	}
}

func (h Harness) skip(t *testing.T, name string) {
	if why, ok := h.Skip[name]; ok {
		t.Skip(why)
	}
}

// Name returns a unique name for this test's queues and exchanges: "wt.",
// the sanitised test name, what, and a random suffix.
func Name(t *testing.T, what string) string {
	var r [4]byte
	rand.Read(r[:])
	n := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '_'
	}, t.Name())
	if len(n) > 160 {
		n = n[len(n)-160:]
	}
	return "wt." + n + "." + what + "." + hex.EncodeToString(r[:])
}

// env is one scenario's view: its transports, its names and cleanup.
type env struct {
	t    *testing.T
	newT Factory
	h    Harness

	mu        sync.Mutex
	queues    []string
	exchanges []string
}

func newEnv(t *testing.T, newT Factory, h Harness) *env {
	e := &env{t: t, newT: newT, h: h}
	t.Cleanup(e.cleanup)
	return e
}

// cleanup deletes the scenario's queues on a fresh connection, which works
// even after the scenario closed its own or restarted the broker. Its
// exchanges are auto-delete, but only go when a binding is removed: each
// is bound to a scratch queue that is then deleted.
func (e *env) cleanup() {
	e.mu.Lock()
	qs, xs := e.queues, e.exchanges
	e.mu.Unlock()
	if len(qs) == 0 && len(xs) == 0 {
		return
	}
	tr := e.newT(e.t)
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if len(xs) > 0 {
		scratch, err := tr.DeclareQueue(ctx, transport.Queue{Exclusive: true})
		if err != nil {
			e.t.Errorf("cleanup: declare scratch queue: %v", err)
		} else {
			for _, x := range xs {
				// An exchange already gone is ErrNotFound: fine.
				_ = tr.Bind(ctx, transport.Binding{Exchange: x, Queue: scratch})
			}
			qs = append(qs, scratch)
		}
	}
	for _, q := range qs {
		if err := tr.DeleteQueue(ctx, q); err != nil && !errors.Is(err, transport.ErrPrecondition) {
			e.t.Errorf("cleanup: delete queue %q: %v", q, err)
		}
	}
}

// open returns a new transport that is closed when the scenario ends.
func (e *env) open() transport.Transport {
	tr := e.newT(e.t)
	e.t.Cleanup(func() {
		err := tr.Close()
		if err != nil && !errors.Is(err, transport.ErrClosed) && !errors.Is(err, transport.ErrConnectionLost) {
			e.t.Errorf("close transport: %v", err)
		}
	})
	return tr
}

func (e *env) ctx() context.Context { return e.t.Context() }

func (e *env) name(what string) string { return Name(e.t, what) }

// queue declares q on tr (naming it when q.Name is "") and deletes it when
// the scenario ends.
func (e *env) queue(tr transport.Transport, q transport.Queue) string {
	e.t.Helper()
	if q.Name == "" {
		q.Name = e.name("q")
	}
	name, err := tr.DeclareQueue(e.ctx(), q)
	if err != nil {
		e.t.Fatalf("declare queue %q: %v", q.Name, err)
	}
	e.track(name)
	return name
}

// trackExchange has cleanup delete exchange if it exists.
func (e *env) trackExchange(name string) {
	e.mu.Lock()
	e.exchanges = append(e.exchanges, name)
	e.mu.Unlock()
}

func (e *env) track(name string) {
	e.mu.Lock()
	e.queues = append(e.queues, name)
	e.mu.Unlock()
}

// exchange declares an auto-delete exchange of kind, gone with its last
// binding, and returns its name.
func (e *env) exchange(tr transport.Transport, kind transport.Kind) string {
	e.t.Helper()
	name := e.name("x")
	if err := tr.DeclareExchange(e.ctx(), transport.Exchange{Name: name, Kind: kind, AutoDelete: true}); err != nil {
		e.t.Fatalf("declare exchange %q: %v", name, err)
	}
	e.trackExchange(name)
	return name
}

func (e *env) bind(tr transport.Transport, exchange, queue, key string) {
	e.t.Helper()
	if err := tr.Bind(e.ctx(), transport.Binding{Exchange: exchange, Queue: queue, Key: key}); err != nil {
		e.t.Fatalf("bind %q to %q with %q: %v", queue, exchange, key, err)
	}
}

// publish publishes a confirmed message with body to exchange and key.
func (e *env) publish(tr transport.Transport, exchange, key, body string) {
	e.t.Helper()
	e.publishMsg(tr, exchange, key, transport.Message{Body: []byte(body)})
}

func (e *env) publishMsg(tr transport.Transport, exchange, key string, msg transport.Message) {
	e.t.Helper()
	if err := tr.Publish(e.ctx(), exchange, key, msg, transport.PublishOptions{Confirm: true}); err != nil {
		e.t.Fatalf("publish to %q with key %q: %v", exchange, key, err)
	}
}

// consumer is a running consumer that the scenario can stop.
type consumer struct {
	ch     <-chan *transport.Delivery
	cancel context.CancelFunc
}

// consume starts a consumer on queue; it is cancelled when the scenario
// ends.
func (e *env) consume(tr transport.Transport, queue string, opts transport.ConsumeOptions) consumer {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.ctx())
	e.t.Cleanup(cancel)
	ch, err := tr.Consume(ctx, queue, opts)
	if err != nil {
		cancel()
		e.t.Fatalf("consume %q: %v", queue, err)
	}
	return consumer{ch: ch, cancel: cancel}
}

// recv returns the next delivery, failing the scenario after wait.
func (e *env) recv(c consumer) *transport.Delivery {
	e.t.Helper()
	select {
	case d, ok := <-c.ch:
		if !ok {
			e.t.Fatalf("delivery channel closed, want a delivery")
		}
		return d
	case <-time.After(wait):
		e.t.Fatalf("no delivery within %v", wait)
	}
	return nil
}

// recvBody receives the next delivery and checks its body.
func (e *env) recvBody(c consumer, body string) *transport.Delivery {
	e.t.Helper()
	d := e.recv(c)
	if string(d.Body) != body {
		e.t.Fatalf("received body %q, want %q", d.Body, body)
	}
	return d
}

// none checks that c receives nothing for a short while.
func (e *env) none(c consumer) {
	e.t.Helper()
	select {
	case d, ok := <-c.ch:
		if ok {
			e.t.Fatalf("unexpected delivery %q (redelivered %v)", d.Body, d.Redelivered)
		}
		e.t.Fatalf("delivery channel closed unexpectedly")
	case <-time.After(quiet):
	}
}

// closed waits until c's channel closes, discarding deliveries.
func (e *env) closed(c consumer) {
	e.t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case _, ok := <-c.ch:
			if !ok {
				return
			}
		case <-timeout:
			e.t.Fatalf("delivery channel still open after %v", wait)
		}
	}
}

func (e *env) ack(d *transport.Delivery) {
	e.t.Helper()
	if err := d.Ack(); err != nil {
		e.t.Fatalf("ack %q: %v", d.Body, err)
	}
}

func (e *env) nack(d *transport.Delivery, requeue bool) {
	e.t.Helper()
	if err := d.Nack(requeue); err != nil {
		e.t.Fatalf("nack(%v) %q: %v", requeue, d.Body, err)
	}
}

// contents returns the bodies in queue, in order, removing them. It
// publishes a marker and consumes up to it, so it needs no sleep: what was
// routed to the queue before the marker is in front of it.
func (e *env) contents(tr transport.Transport, queue string) []string {
	e.t.Helper()
	var r [8]byte
	rand.Read(r[:])
	marker := "marker-" + hex.EncodeToString(r[:])
	e.publish(tr, transport.DefaultExchange, queue, marker)
	c := e.consume(tr, queue, transport.ConsumeOptions{Prefetch: 50})
	defer e.closedAfter(c)
	var got []string
	for {
		d := e.recv(c)
		e.ack(d)
		if string(d.Body) == marker {
			return got
		}
		got = append(got, string(d.Body))
	}
}

func (e *env) closedAfter(c consumer) {
	c.cancel()
	e.closed(c)
}

// eventually polls f until it returns nil, failing after wait.
func (e *env) eventually(what string, f func() error) {
	e.t.Helper()
	deadline := time.Now().Add(wait)
	delay := 5 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: not within %v: %v", what, wait, err)
		}
		time.Sleep(delay)
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// await waits for done to close, failing after twice wait.
func (e *env) await(done <-chan struct{}, what string) {
	e.t.Helper()
	select {
	case <-done:
	case <-time.After(2 * wait):
		e.t.Errorf("%s: not within %v", what, 2*wait)
	}
}

// wantErr checks that err wraps want.
func (e *env) wantErr(what string, err, want error) {
	e.t.Helper()
	if !errors.Is(err, want) {
		e.t.Fatalf("%s: error %v, want one wrapping %v", what, err, want)
	}
}

// exists reports whether queue exists, with a mandatory publish of a
// message the caller ignores.
func (e *env) exists(tr transport.Transport, queue string) error {
	err := tr.Publish(e.ctx(), transport.DefaultExchange, queue, transport.Message{Body: []byte("probe")}, transport.PublishOptions{Mandatory: true})
	if errors.Is(err, transport.ErrUnroutable) {
		return fmt.Errorf("queue %q: %w", queue, err)
	}
	if err != nil {
		e.t.Fatalf("probe queue %q: %v", queue, err)
	}
	return nil
}

// gone waits until queue no longer exists.
func (e *env) gone(tr transport.Transport, queue string) {
	e.t.Helper()
	e.eventually("queue "+queue+" deleted", func() error {
		if e.exists(tr, queue) == nil {
			return fmt.Errorf("queue %q still exists", queue)
		}
		return nil
	})
}

func (e *env) equalStrings(what string, got, want []string) {
	e.t.Helper()
	if strings.Join(got, "\x00") != strings.Join(want, "\x00") || len(got) != len(want) {
		e.t.Fatalf("%s: got %q, want %q", what, got, want)
	}
}
