package mapper_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
)

// queueNames records the names of the queues the broker generated.
type queueNames struct {
	mu    sync.Mutex
	names []string
}

func (q *queueNames) add(asked transport.Queue, name string, err error) (string, error) {
	if err == nil && asked.Name == "" {
		q.mu.Lock()
		q.names = append(q.names, name)
		q.mu.Unlock()
	}
	return name, err
}

// callbackConn is a *mem.Conn, whose ConsumeFunc the mapper uses for its
// replies; channelConn hides it, so the mapper reads a channel.
type callbackConn struct {
	*mem.Conn
	queueNames
}

func (c *callbackConn) DeclareQueue(ctx context.Context, q transport.Queue) (string, error) {
	name, err := c.Conn.DeclareQueue(ctx, q)
	return c.add(q, name, err)
}

type channelConn struct {
	transport.Transport
	queueNames
}

func (c *channelConn) DeclareQueue(ctx context.Context, q transport.Queue) (string, error) {
	name, err := c.Transport.DeclareQueue(ctx, q)
	return c.add(q, name, err)
}

// TestReplyConsumerEndIsALoss: when the consumer of the reply queue ends
// under a running session (here its queue is deleted), the calls waiting
// for a reply fail at once with ErrConnectionLost and the mapper makes a
// new session, on the embedded broker's callback path as on a channel.
func TestReplyConsumerEndIsALoss(t *testing.T) {
	for _, tc := range []struct {
		name string
		wrap func(*mem.Conn) (transport.Transport, *queueNames)
	}{
		{"callback", func(c *mem.Conn) (transport.Transport, *queueNames) {
			w := &callbackConn{Conn: c}
			return w, &w.queueNames
		}},
		{"channel", func(c *mem.Conn) (transport.Transport, *queueNames) {
			w := &channelConn{Transport: c}
			return w, &w.queueNames
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := mem.NewBroker()
			t.Cleanup(func() { b.Close() })
			const path = "/replyloss/hold"
			started := make(chan struct{}, 1)
			release := make(chan struct{})
			t.Cleanup(func() { close(release) })
			a, err := agent.New(b.Connect(), agent.Config{Identity: "replyloss-agent"}, agent.WithLogger(testenv.Logger(t)))
			must(t, err)
			must(t, a.Handle(path, agent.HandlerFunc(func(ctx context.Context, _ *agent.Request) (any, error) {
				started <- struct{}{}
				select {
				case <-release:
				case <-ctx.Done():
				}
				return "late", nil
			})))
			fabrictest.RunAgent(t, a)
			mc := b.Connect()
			tr, names := tc.wrap(mc)
			m := fabrictest.RunMapper(t, tr, mapper.Config{})
			names.mu.Lock()
			replyQ := names.names[0] // the first it names (startSession)
			names.mu.Unlock()
			res := make(chan error, 1)
			go func() {
				_, err := m.Request(ctxT(t, 30*time.Second), path, nil)
				res <- err
			}()
			<-started
			must(t, mc.DeleteQueue(t.Context(), replyQ))
			select {
			case err := <-res:
				if !errors.Is(err, transport.ErrConnectionLost) {
					t.Fatalf("request after its reply queue went: %v, want ErrConnectionLost", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("request still waiting 20s after its reply queue went")
			}
			// A new session: requests work again.
			release <- struct{}{} // the held handler, if still running, may end
			go func() {
				_, err := m.Request(ctxT(t, 20*time.Second), path, nil)
				res <- err
			}()
			<-started
			release <- struct{}{}
			if err := <-res; err != nil {
				t.Fatalf("request in the new session: %v", err)
			}
		})
	}
}
