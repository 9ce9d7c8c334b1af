package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// recorder is a transport that notes, per service path, whether each
// request or push its consumers received was persistent.
type recorder struct {
	transport.Transport
	mu         sync.Mutex
	persistent map[string][]bool
}

func (r *recorder) Consume(ctx context.Context, queue string, opts transport.ConsumeOptions) (<-chan *transport.Delivery, error) {
	in, err := r.Transport.Consume(ctx, queue, opts)
	if err != nil {
		return nil, err
	}
	out := make(chan *transport.Delivery)
	go func() {
		defer close(out)
		for d := range in {
			if d.Type == wire.TypeRequest || d.Type == wire.TypePush {
				r.mu.Lock()
				p := wire.String(d.Headers, wire.HeaderPath)
				r.persistent[p] = append(r.persistent[p], d.Persistent)
				r.mu.Unlock()
			}
			select {
			case out <- d:
			case <-ctx.Done():
			}
		}
	}()
	return out, nil
}

func (r *recorder) seen(path string) []bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.persistent[path])
}

// echoAgent runs an agent named id serving paths with a handler that
// returns its payload, on a recorder.
func echoAgent(t *testing.T, tr transport.Transport, id string, paths ...string) *recorder {
	t.Helper()
	rec := &recorder{Transport: tr, persistent: map[string][]bool{}}
	a, err := agent.New(rec, agent.Config{Identity: id, PingInterval: time.Second}, agent.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		if err := a.Handle(p, agent.HandlerFunc(func(_ context.Context, r *agent.Request) (any, error) {
			return r.Payload, nil
		})); err != nil {
			t.Fatal(err)
		}
	}
	fabrictest.RunAgent(t, a)
	return rec
}

// TestRequestPushReliabilityFlags sends with --persistent, --park, --ttl and
// --retry-on-connection-loss from the command line and checks what reached
// the agents and queues.
func TestRequestPushReliabilityFlags(t *testing.T) {
	tr, url := rabbit(t)
	actor := fabrictest.Actor()
	echo, later, parked := "/"+actor+"/echo", "/"+actor+"/later", "/"+actor+"/parked"
	for _, p := range []string{echo, later, parked} {
		t.Cleanup(func() { tr.DeleteQueue(context.Background(), wire.ServiceQueue(p)) })
	}
	id := actor + "-a"
	rec := echoAgent(t, tr, id, echo)
	to := "agent:" + id
	warren := func(args ...string) (int, string, string) {
		return run(t, t.Context(), append(args, "--broker", url, "--log-level", "error")...)
	}

	// --persistent makes persistent messages; without it they are not.
	testenv.WaitFor(t, 15*time.Second, func() error {
		if code, out, errOut := warren("request", echo, "1", "--selector", to, "--persistent"); code != 0 || strings.TrimSpace(out) != "1" {
			return fmt.Errorf("request --persistent: exit %d %q %s", code, out, errOut)
		}
		return nil
	})
	if code, out, errOut := warren("request", echo, "2", "--selector", to, "--retry-on-connection-loss"); code != 0 || strings.TrimSpace(out) != "2" {
		t.Fatalf("request --retry-on-connection-loss: exit %d %q %s", code, out, errOut)
	}
	if code, _, errOut := warren("push", echo, "3", "--selector", to, "--persistent"); code != 0 {
		t.Fatalf("push --persistent: exit %d %s", code, errOut)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if got := rec.seen(echo); !slices.Equal(got, []bool{true, false, true}) {
			return fmt.Errorf("persistent flags received %v, want [true false true]", got)
		}
		return nil
	})

	// Flags that do not apply are refused.
	for _, args := range [][]string{
		{"request", echo, "--selector", "all", "--park"},
		{"request", echo, "--selector", "all", "--retry-on-connection-loss"},
		{"push", echo, "--ttl", "-1s"},
		{"push", echo, "--timeout", "0s"},
	} {
		if code, _, errOut := warren(args...); code != 2 {
			t.Errorf("%v: exit %d %s; want usage error", args, code, errOut)
		}
	}

	// No agent serves later: without --park that fails at once; with it the
	// request waits in the shared queue for the agent that comes.
	if code, _, errOut := warren("request", later, "4", "--timeout", "5s"); code != 1 || !strings.Contains(errOut, "no agent") {
		t.Fatalf("request without agent: exit %d %s", code, errOut)
	}
	type result struct {
		code     int
		out, err string
	}
	done := make(chan result, 1)
	go func() {
		code, out, errOut := warren("request", later, "5", "--park", "--timeout", "30s")
		done <- result{code, out, errOut}
	}()
	testenv.WaitFor(t, 10*time.Second, func() error {
		// The queue exists once the request is parked in it.
		_, err := tr.DeclareQueue(t.Context(), transport.Queue{Name: wire.ServiceQueue(later), Durable: true, DeadLetterExchange: wire.DeadLetterExchange})
		return err
	})
	echoAgent(t, tr, actor+"-b", later)
	select {
	case r := <-done:
		if r.code != 0 || strings.TrimSpace(r.out) != "5" {
			t.Fatalf("parked request: exit %d %q %s", r.code, r.out, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("parked request not answered")
	}

	// A parked push lives for --ttl, not --timeout.
	start := time.Now()
	if code, _, errOut := warren("push", parked, "6", "--park", "--ttl", "1m", "--timeout", "5s"); code != 0 {
		t.Fatalf("push --park --ttl: exit %d %s", code, errOut)
	}
	if code, _, errOut := warren("push", parked, "7", "--park"); code != 0 {
		t.Fatalf("push --park: exit %d %s", code, errOut)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ds, err := tr.Consume(ctx, wire.ServiceQueue(parked), transport.ConsumeOptions{Prefetch: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		body     string
		min, max time.Duration
	}{{"6", 50 * time.Second, time.Minute}, {"7", 5 * time.Second, 10 * time.Second}} {
		var d *transport.Delivery
		select {
		case d = <-ds:
		case <-ctx.Done():
			t.Fatal("parked push not in the shared queue")
		}
		dl, ok := wire.Deadline(d.Headers)
		if string(d.Body) != want.body || !d.Persistent || d.Expiration < want.min || d.Expiration > want.max || !ok ||
			dl.Sub(start) < want.min || dl.Sub(start) > want.max+5*time.Second {
			t.Errorf("parked push %s: persistent %v, expiration %v, deadline in %v; want %v to %v",
				d.Body, d.Persistent, d.Expiration, dl.Sub(start), want.min, want.max)
		}
		d.Ack()
	}
}

// TestAgentDurableFlags runs warren agent --durable and checks its queue is
// a quorum queue with the delivery limit asked for.
func TestAgentDurableFlags(t *testing.T) {
	tr, url := rabbit(t)
	id := fabrictest.Actor()
	own := wire.AgentQueue(id)
	t.Cleanup(func() { tr.DeleteQueue(context.Background(), own) })
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	type result struct {
		code   int
		errOut string
	}
	done := make(chan result, 1)
	go func() {
		code, _, errOut := run(t, ctx, "agent", "--broker", url, "--token", id, "--ping", "1s", "--durable", "--max-deliveries", "3", "--log-level", "error")
		done <- result{code, errOut}
	}()
	testenv.WaitFor(t, 15*time.Second, func() error {
		code, out, errOut := run(t, t.Context(), "request", "/simple/whoami", "--selector", "agent:"+id, "--persistent", "--broker", url, "--timeout", "3s")
		if code != 0 || strings.TrimSpace(out) != `"`+id+`"` {
			return fmt.Errorf("exit %d %q %s", code, out, errOut)
		}
		return nil
	})
	// The declaration the agent made is accepted again only as is.
	same := transport.Queue{Name: own, Type: transport.Quorum, Durable: true, DeliveryLimit: 3, Expires: wire.AgentQueueExpiry, DeadLetterExchange: wire.DeadLetterExchange}
	if _, err := tr.DeclareQueue(t.Context(), same); err != nil {
		t.Fatalf("agent queue is not a quorum queue with delivery limit 3: %v", err)
	}
	plain := transport.Queue{Name: own, Expires: wire.AgentQueueExpiry, DeadLetterExchange: wire.DeadLetterExchange}
	if _, err := tr.DeclareQueue(t.Context(), plain); !errors.Is(err, transport.ErrPrecondition) {
		t.Fatalf("agent queue redeclared as a classic queue: %v", err)
	}
	cancel()
	select {
	case r := <-done:
		if r.code != 0 {
			t.Fatalf("agent exit %d: %s", r.code, r.errOut)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("agent did not stop")
	}
	for _, args := range [][]string{{"--ping", "0s"}, {"--max-deliveries", "0"}} {
		if code, _, errOut := run(t, t.Context(), append([]string{"agent", "--broker", url}, args...)...); code != 2 {
			t.Errorf("agent %v: exit %d %s; want usage error", args, code, errOut)
		}
	}
}

// TestReplyJSONCodes: a fan-out leg that failed is labelled by what
// happened, not "timeout" whatever it was (an agent whose queue is gone
// was shown as a timeout).
func TestReplyJSONCodes(t *testing.T) {
	for _, c := range []struct {
		err  error
		code string
	}{
		{fmt.Errorf("request /a/b to x: %w: %w", mapper.ErrTimeout, context.DeadlineExceeded), "timeout"},
		{fmt.Errorf("mapper: request /a/b to ghost: %w", transport.ErrUnroutable), "unroutable"},
		{fmt.Errorf("mapper: request /a/b to x: %w", transport.ErrConnectionLost), "connection_lost"},
		{&wire.RemoteError{Code: wire.CodeHandler, Message: "boom"}, wire.CodeHandler},
		{errors.New("other"), "error"},
	} {
		got := replyJSON(&mapper.Reply{Err: c.err}).(map[string]any)["error"].(map[string]string)["code"]
		if got != c.code {
			t.Errorf("%v: code %q, want %q", c.err, got, c.code)
		}
	}
}
