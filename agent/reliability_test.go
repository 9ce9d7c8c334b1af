package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

// runAgent runs a until the test ends or stop is called; stop returns Run's
// error.
func runAgent(t *testing.T, a *agent.Agent) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(15 * time.Second):
				err = errors.New("Run did not return within 15s of its context ending")
			}
		})
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	select {
	case <-a.Ready():
	case err := <-done:
		t.Fatalf("agent stopped before it was ready: %v", err)
	}
	return stop
}

// tap consumes everything published to exchange from now on.
func tap(t *testing.T, c transport.Transport, exchange string) <-chan *transport.Delivery {
	t.Helper()
	q, err := c.DeclareQueue(t.Context(), transport.Queue{Exclusive: true})
	must(t, err)
	must(t, c.Bind(t.Context(), transport.Binding{Exchange: exchange, Queue: q}))
	ch, err := c.Consume(t.Context(), q, transport.ConsumeOptions{AutoAck: true})
	must(t, err)
	return ch
}

// replyQueue declares a reply queue and consumes it.
func replyQueue(t *testing.T, c transport.Transport) (string, <-chan *transport.Delivery) {
	t.Helper()
	q, err := c.DeclareQueue(t.Context(), transport.Queue{Exclusive: true})
	must(t, err)
	ch, err := c.Consume(t.Context(), q, transport.ConsumeOptions{AutoAck: true})
	must(t, err)
	return q, ch
}

func receive(t *testing.T, ch <-chan *transport.Delivery, what string, match func(*transport.Delivery) bool) *transport.Delivery {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case d := <-ch:
			if match(d) {
				return d
			}
		case <-timeout:
			t.Fatalf("no %s within 5s", what)
			return nil
		}
	}
}

func byID(id string) func(*transport.Delivery) bool {
	return func(d *transport.Delivery) bool { return d.MessageID == id || d.CorrelationID == id }
}

// TestDrainBoundedWhileServiceRetires: a service that turned inactive with
// a request in hand does not make the drain wait past its timeout (the
// goroutine retiring its consumer used to be waited for before the drain
// began, and it waits for that very request).
func TestDrainBoundedWhileServiceRetires(t *testing.T) {
	b := mem.NewBroker()
	defer b.Close()
	var active atomic.Bool
	active.Store(true)
	started := make(chan struct{}, 1)
	a, err := agent.New(b.Connect(), agent.Config{Identity: "a1", PingInterval: 20 * time.Millisecond, DrainTimeout: 200 * time.Millisecond}, agent.WithLogger(testenv.Logger(t)))
	must(t, err)
	must(t, a.Handle("/s/work", agent.HandlerFunc(func(ctx context.Context, _ *agent.Request) (any, error) {
		started <- struct{}{}
		<-ctx.Done() // ends only when the drain times out
		return nil, ctx.Err()
	}), agent.Active(active.Load)))
	stop := runAgent(t, a)
	pub := b.Connect()
	defer pub.Close()
	beats := tap(t, pub, wire.HeartbeatExchange)
	must(t, pub.Publish(t.Context(), wire.ServiceExchange, "/s/work",
		transport.Message{Type: wire.TypePush, MessageID: "w1", Body: []byte(`1`)}, transport.PublishOptions{Mandatory: true}))
	<-started
	active.Store(false)
	// A ping advertising the service inactive: syncActive ran before it.
	receive(t, beats, "ping with /s/work inactive", func(d *transport.Delivery) bool {
		var hb wire.Heartbeat
		return json.Unmarshal(d.Body, &hb) == nil && slices.Contains(hb.Inactive, "/s/work")
	})
	begin := time.Now()
	done := make(chan error, 1)
	go func() { done <- stop() }()
	select {
	case err := <-done:
		must(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s of being stopped (drain timeout 200ms)")
	}
	if took := time.Since(begin); took < 200*time.Millisecond {
		t.Errorf("stopped in %v, before the drain timeout, with a request in hand", took)
	}
}

// TestDeadlineCheckedAfterSemaphore: a request whose deadline passes while
// it waits for its service's concurrency limit is not started; it gets the
// expired error reply (a push: the expired dead letter) at its deadline.
func TestDeadlineCheckedAfterSemaphore(t *testing.T) {
	b := mem.NewBroker()
	defer b.Close()
	var mu sync.Mutex
	var ran []string
	started, release := make(chan struct{}), make(chan struct{})
	a, err := agent.New(b.Connect(), agent.Config{Identity: "a1", PingInterval: time.Second}, agent.WithLogger(testenv.Logger(t)))
	must(t, err)
	must(t, a.Handle("/s/one", agent.HandlerFunc(func(_ context.Context, req *agent.Request) (any, error) {
		mu.Lock()
		ran = append(ran, req.MessageID)
		mu.Unlock()
		if req.MessageID == "first" {
			close(started)
			<-release
		}
		return 1, nil
	}), agent.Prefetch(1)))
	runAgent(t, a)
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free) // before the agent's cleanup, so that it can drain
	c := b.Connect()
	defer c.Close()
	replyQ, replies := replyQueue(t, c)
	dead := tap(t, c, wire.DeadLetterExchange)
	send := func(id, typ, replyTo string, deadline time.Time) {
		t.Helper()
		h := map[string]any{wire.HeaderPath: "/s/one"}
		if !deadline.IsZero() {
			h[wire.HeaderDeadline] = deadline.UnixMilli()
		}
		must(t, c.Publish(t.Context(), wire.RequestExchange, "a1", transport.Message{
			Type: typ, MessageID: id, CorrelationID: id, ReplyTo: replyTo, Headers: h, Body: []byte(`1`),
		}, transport.PublishOptions{Mandatory: true}))
	}
	send("first", wire.TypeRequest, replyQ, time.Time{})
	<-started
	send("late", wire.TypeRequest, replyQ, time.Now().Add(150*time.Millisecond))
	send("latepush", wire.TypePush, "", time.Now().Add(150*time.Millisecond))
	r := receive(t, replies, "reply to late", byID("late"))
	if code := wire.String(r.Headers, wire.HeaderCode); code != wire.CodeExpired {
		t.Errorf("late: code %q, headers %v; want %s", code, r.Headers, wire.CodeExpired)
	}
	dl := receive(t, dead, "dead letter of latepush", byID("latepush"))
	if reason := wire.String(dl.Headers, wire.HeaderReason); reason != wire.CodeExpired {
		t.Errorf("latepush: reason %q, want %s", reason, wire.CodeExpired)
	}
	free()
	receive(t, replies, "reply to first", byID("first"))
	send("after", wire.TypeRequest, replyQ, time.Now().Add(5*time.Second))
	receive(t, replies, "reply to after", byID("after"))
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"first", "after"}; !slices.Equal(ran, want) {
		t.Errorf("handler ran for %v, want %v", ran, want)
	}
}

// TestDrainTellsMappersFirst: when it is stopped, an agent at once pings
// with every service inactive (mappers stop selecting it), finishes and
// acks its request in hand, passes on what is addressed to it meanwhile,
// and unregisters only at the end.
func TestDrainTellsMappersFirst(t *testing.T) {
	b := mem.NewBroker()
	defer b.Close()
	var runs atomic.Int64
	started, release := make(chan struct{}, 1), make(chan struct{})
	tr := &settleRecorder{Transport: b.Connect()}
	a, err := agent.New(tr, agent.Config{Identity: "a1", PingInterval: 50 * time.Millisecond, NoSharedQueues: true}, agent.WithLogger(testenv.Logger(t)))
	must(t, err)
	for _, p := range []string{"/s/work", "/s/other"} {
		must(t, a.Handle(p, agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) {
			runs.Add(1)
			started <- struct{}{}
			<-release
			return "done", nil
		})))
	}
	c := b.Connect()
	defer c.Close()
	must(t, wire.Topology(t.Context(), c))
	beats := tap(t, c, wire.HeartbeatExchange) // from the register on
	stop := runAgent(t, a)
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free)
	replyQ, replies := replyQueue(t, c)
	send := func(id string) {
		t.Helper()
		must(t, c.Publish(t.Context(), wire.RequestExchange, "a1", transport.Message{
			Type: wire.TypeRequest, MessageID: id, CorrelationID: id, ReplyTo: replyQ,
			Headers: map[string]any{wire.HeaderPath: "/s/work"}, Body: []byte(`1`),
		}, transport.PublishOptions{Mandatory: true}))
	}
	send("inhand")
	<-started
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	receive(t, beats, "ping with every service inactive", func(d *transport.Delivery) bool {
		if d.Type == wire.TypeUnregister {
			t.Fatal("unregistered before the work in hand finished")
		}
		var hb wire.Heartbeat
		return d.Type == wire.TypePing && json.Unmarshal(d.Body, &hb) == nil &&
			slices.Equal(hb.Inactive, []string{"/s/other", "/s/work"})
	})
	// A request that reaches the draining agent is passed on, not started.
	send("late")
	r := receive(t, replies, "reply to late", byID("late"))
	if code := wire.String(r.Headers, wire.HeaderCode); code != wire.CodeDeclined {
		t.Errorf("late: code %q, want %s", code, wire.CodeDeclined)
	}
	// Still draining: pings go on, no unregister.
	receive(t, beats, "a second draining ping", func(d *transport.Delivery) bool {
		if d.Type == wire.TypeUnregister {
			t.Fatal("unregistered before the work in hand finished")
		}
		return d.Type == wire.TypePing
	})
	free()
	r = receive(t, replies, "reply to the request in hand", byID("inhand"))
	if string(r.Body) != `"done"` || r.Headers[wire.HeaderStatus] != nil {
		t.Errorf("in hand: reply %s %v", r.Body, r.Headers)
	}
	receive(t, beats, "unregister", func(d *transport.Delivery) bool { return d.Type == wire.TypeUnregister })
	must(t, <-stopped)
	if n := runs.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
	if got := tr.settled("inhand"); got != "ack" {
		t.Errorf("request in hand settled %q, want ack", got)
	}
}

// settleRecorder records how the agent settles each delivery, by message
// id.
type settleRecorder struct {
	transport.Transport
	mu  sync.Mutex
	how map[string]string
}

func (r *settleRecorder) settled(id string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.how[id]
}

func (r *settleRecorder) Consume(ctx context.Context, queue string, opts transport.ConsumeOptions) (<-chan *transport.Delivery, error) {
	src, err := r.Transport.Consume(ctx, queue, opts)
	if err != nil || opts.AutoAck {
		return src, err
	}
	out := make(chan *transport.Delivery)
	go func() {
		defer close(out)
		for d := range src {
			nd := transport.NewDelivery(d.Message, func(ack, requeue bool) error {
				how := "ack"
				switch {
				case !ack && requeue:
					how = "requeue"
				case !ack:
					how = "reject"
				}
				r.mu.Lock()
				if r.how == nil {
					r.how = map[string]string{}
				}
				r.how[d.MessageID] = how
				r.mu.Unlock()
				if ack {
					return d.Ack()
				}
				return d.Nack(requeue)
			})
			nd.Exchange, nd.RoutingKey, nd.Redelivered, nd.ConsumerTag = d.Exchange, d.RoutingKey, d.Redelivered, d.ConsumerTag
			select {
			case out <- nd:
			case <-ctx.Done():
			}
		}
	}()
	return out, nil
}

// TestDeadLetterUnroutable: with no queue bound to the dead-letter
// exchange, a dead letter is not dropped while its original is acked: the
// original is rejected (for the queue's own dead-lettering).
func TestDeadLetterUnroutable(t *testing.T) {
	b := mem.NewBroker()
	defer b.Close()
	tr := &settleRecorder{Transport: b.Connect()}
	a, err := agent.New(tr, agent.Config{Identity: "a1", PingInterval: time.Second}, agent.WithLogger(testenv.Logger(t)))
	must(t, err)
	must(t, a.Handle("/s/add", agent.Func(func(_ context.Context, in int) (int, error) { return in + 1, nil })))
	runAgent(t, a)
	c := b.Connect()
	defer c.Close()
	push := func(id, body string) {
		t.Helper()
		must(t, c.Publish(t.Context(), wire.RequestExchange, "a1", transport.Message{
			Type: wire.TypePush, MessageID: id, Headers: map[string]any{wire.HeaderPath: "/s/add"}, Body: []byte(body),
		}, transport.PublishOptions{Mandatory: true}))
	}
	settledAs := func(id, want string) {
		t.Helper()
		testenv.WaitFor(t, 5*time.Second, func() error {
			if got := tr.settled(id); got != want {
				return &settleError{id, got, want}
			}
			return nil
		})
	}
	// Bound: the dead letter is taken and the original acked.
	dead := tap(t, c, wire.DeadLetterExchange)
	push("bound", `"not a number"`)
	receive(t, dead, "dead letter", byID("bound"))
	settledAs("bound", "ack")
	// Nothing bound.
	must(t, c.Unbind(t.Context(), transport.Binding{Exchange: wire.DeadLetterExchange, Queue: wire.DeadLetterQueue}))
	must(t, c.Close()) // its tap queue goes with it
	c = b.Connect()
	push("unbound", `"not a number"`)
	settledAs("unbound", "reject")
}

type settleError struct{ id, got, want string }

func (e *settleError) Error() string {
	return e.id + " settled as " + `"` + e.got + `", want ` + e.want
}

// TestAttemptsHeaderClamped: a warren-attempts header that is negative or
// huge does not make a declined message bounce more than MaxDeliveries
// times.
func TestAttemptsHeaderClamped(t *testing.T) {
	b := mem.NewBroker()
	defer b.Close()
	var mu sync.Mutex
	runs := map[string]int{}
	a, err := agent.New(b.Connect(), agent.Config{Identity: "a1", PingInterval: time.Second, MaxDeliveries: 3}, agent.WithLogger(testenv.Logger(t)))
	must(t, err)
	must(t, a.Handle("/s/no", agent.HandlerFunc(func(_ context.Context, req *agent.Request) (any, error) {
		mu.Lock()
		runs[req.MessageID]++
		mu.Unlock()
		return nil, agent.ErrDecline
	})))
	runAgent(t, a)
	c := b.Connect()
	defer c.Close()
	dead := tap(t, c, wire.DeadLetterExchange)
	for _, tc := range []struct {
		id       string
		attempts any
		runs     int
	}{
		{"negative", int64(-1 << 62), 3},
		{"minus-one", int32(-1), 3},
		{"huge", int64(1 << 62), 1},
		{"nan", float64(-1e300), 3},
		{"text", "-5", 3},
	} {
		must(t, c.Publish(t.Context(), wire.ServiceExchange, "/s/no", transport.Message{
			Type: wire.TypePush, MessageID: tc.id, Headers: map[string]any{wire.HeaderAttempts: tc.attempts}, Body: []byte(`1`),
		}, transport.PublishOptions{Mandatory: true}))
		d := receive(t, dead, "dead letter of "+tc.id, byID(tc.id))
		if reason := wire.String(d.Headers, wire.HeaderReason); reason != wire.CodeDeliveryLimit {
			t.Errorf("%s: reason %q, want %s", tc.id, reason, wire.CodeDeliveryLimit)
		}
		mu.Lock()
		if n := runs[tc.id]; n != tc.runs {
			t.Errorf("%s (attempts %v): handler ran %d times, want %d", tc.id, tc.attempts, n, tc.runs)
		}
		mu.Unlock()
	}
}

// TestRunWithoutHandlers: Run without handlers is an error that leaves
// the agent usable: handlers can still be added, and Run then serves.
func TestRunWithoutHandlers(t *testing.T) {
	b := mem.NewBroker()
	defer b.Close()
	a, err := agent.New(b.Connect(), agent.Config{Identity: "a1", PingInterval: time.Second})
	must(t, err)
	if err := a.Run(t.Context()); err == nil {
		t.Fatal("Run without handlers returned nil")
	}
	must(t, a.Handle("/s/add", agent.Func(func(_ context.Context, in int) (int, error) { return in + 1, nil })))
	runAgent(t, a)
}
