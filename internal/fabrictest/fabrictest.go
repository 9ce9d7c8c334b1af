// Package fabrictest runs fabric tests on every transport: the embedded
// broker and RabbitMQ (skipped without WARREN_AMQP_URL, failed without it
// under CI).
package fabrictest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/transport/mem"
)

// Connect returns a new connection to the test's broker, closed at the end
// of the test.
type Connect func(t *testing.T) transport.Transport

// Each runs f as the subtests "mem" and "rabbitmq".
func Each(t *testing.T, f func(t *testing.T, connect Connect)) {
	t.Run("mem", func(t *testing.T) {
		b := mem.NewBroker()
		f(t, func(t *testing.T) transport.Transport {
			tr := b.Connect()
			t.Cleanup(func() { tr.Close() })
			return tr
		})
	})
	t.Run("rabbitmq", func(t *testing.T) {
		url := testenv.AMQPURL(t)
		declared := &queues{}
		// Registered first, so it runs last: after every agent, mapper and
		// connection of the test has stopped.
		t.Cleanup(func() { declared.deleteAll(t, url) })
		f(t, func(t *testing.T) transport.Transport {
			tr, err := amqp.Dial(t.Context(), url, amqp.Config{}, amqp.WithLogger(testenv.Logger(t)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tr.Close() })
			return recording{tr, declared}
		})
	})
}

// queues records the agent, service and event subscription queues a
// test's agents, mappers and buses declare on the shared RabbitMQ. Their
// names hold the test's unique actor, agent identity or group; left behind
// (service and durable subscription queues are durable, agent queues
// expire only after minutes), they would pile up on a developer's broker,
// run after run (a few hundred a run), and slow its restarts.
type queues struct {
	mu       sync.Mutex
	names    []string
	onlyOurs bool // note only names that hold an Actor (see Recording)
}

// recording is a transport that notes the agent and service queues it
// declares.
type recording struct {
	transport.Transport
	q *queues
}

func (r recording) DeclareQueue(ctx context.Context, q transport.Queue) (string, error) {
	name, err := r.Transport.DeclareQueue(ctx, q)
	if err == nil && !q.Exclusive &&
		(strings.HasPrefix(name, "warren.service.") || strings.HasPrefix(name, "warren.agent.") ||
			strings.HasPrefix(name, "warren.events.")) && (!r.q.onlyOurs || isOurs(name)) {
		r.q.mu.Lock()
		if !slices.Contains(r.q.names, name) {
			r.q.names = append(r.q.names, name)
		}
		r.q.mu.Unlock()
	}
	return name, err
}

// NotifyReturn forwards to the transport it records for
// (transport.Returner), so that mappers publish as they do on it.
func (r recording) NotifyReturn(f func(transport.Return)) (stop func(), ok bool) {
	return transport.NotifyReturn(r.Transport, f)
}

// Unwrap returns the transport under the one a Connect returned: the
// *amqp.Transport or the embedded broker's connection.
func Unwrap(tr transport.Transport) transport.Transport {
	if r, ok := tr.(recording); ok {
		return r.Transport
	}
	return tr
}

func (q *queues) deleteAll(t testing.TB, url string) {
	q.mu.Lock()
	names := q.names
	q.mu.Unlock()
	deleteNow(t, url, names)
}

// DeleteQueues deletes queues on the RabbitMQ at url when the test ends.
// Registered before the agents that declare them start, it runs after they
// have stopped: durable queues would otherwise outlive the test.
func DeleteQueues(t testing.TB, url string, queues ...string) {
	t.Cleanup(func() { deleteNow(t, url, queues) })
}

func deleteNow(t testing.TB, url string, queues []string) {
	if len(queues) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := amqp.Dial(ctx, url, amqp.Config{ConnectionName: "warren-test cleanup"})
	if err != nil {
		t.Errorf("fabrictest: cannot delete the test's queues: %v", err)
		return
	}
	defer tr.Close()
	for _, n := range queues {
		if err := tr.DeleteQueue(ctx, n); err != nil {
			t.Errorf("fabrictest: delete %s: %v", n, err)
		}
	}
}

// Actor returns a unique actor name, so that tests sharing a RabbitMQ do not
// see each other's services.
func Actor() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	a := "t" + hex.EncodeToString(b[:])
	ours.Store(a, true)
	return a
}

// ours holds the names Actor returned in this process.
var ours sync.Map

// Recording returns tr, which must be a connection to the RabbitMQ at url,
// noting the agent, service and event queues declared through it whose
// names hold a name Actor returned; they are deleted when the test ends.
// Call it before the agents and mappers that use the result start, so that
// the deletion runs after they have stopped. Queues of other names (the
// example actor's /simple/... in the shared vhost) may be in use by other
// tests' processes and are left alone.
func Recording(t testing.TB, url string, tr transport.Transport) transport.Transport {
	declared := &queues{onlyOurs: true}
	t.Cleanup(func() { declared.deleteAll(t, url) })
	return recording{tr, declared}
}

// isOurs reports whether name holds a name Actor returned.
func isOurs(name string) bool {
	found := false
	ours.Range(func(k, _ any) bool {
		found = strings.Contains(name, k.(string))
		return !found
	})
	return found
}

// RunAgent runs a until the end of the test (then stops it and checks that
// Run returned nil) and returns once a is ready.
func RunAgent(t testing.TB, a *agent.Agent) {
	t.Helper()
	RunUntilCleanup(t, "agent "+a.Identity(), a.Run, a.Ready())
}

// RunMapper makes a mapper on tr, runs it until the end of the test (then
// stops it and checks that Run returned nil) and returns it once ready.
func RunMapper(t testing.TB, tr transport.Transport, cfg mapper.Config, opts ...mapper.Option) *mapper.Mapper {
	t.Helper()
	m, err := mapper.New(tr, cfg, append([]mapper.Option{mapper.WithLogger(testenv.Logger(t))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	RunUntilCleanup(t, "mapper", m.Run, m.Ready())
	return m
}

// RunUntilCleanup runs runFn in a goroutine until the end of the test (then
// cancels it and checks that it returned nil) and returns once ready is
// closed. Resources it uses must be released by cleanups registered before
// this call: cleanups run last-registered first.
func RunUntilCleanup(t testing.TB, what string, runFn func(context.Context) error, ready <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runFn(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: Run: %v", what, err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		done <- err // for the cleanup
		t.Fatalf("%s: Run: %v", what, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: not ready after 30s", what)
	}
}
