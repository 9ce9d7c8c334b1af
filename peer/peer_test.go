package peer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

func runPeer(t *testing.T, tr transport.Transport, cfg Config) *Peer {
	t.Helper()
	p, err := New(tr, cfg, WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	fabrictest.RunUntilCleanup(t, "peer "+cfg.Name, p.Run, p.Ready())
	return p
}

// serve answers every request to p with its number plus one, or an error
// for a negative one, after release when hold is set.
func serve(t *testing.T, p *Peer, hold <-chan struct{}) {
	go func() {
		for m := range p.Requests() {
			var n int
			if err := json.Unmarshal(m.Body, &n); err != nil {
				t.Errorf("request body %s: %v", m.Body, err)
			}
			if hold != nil {
				<-hold
			}
			ctx := context.Background()
			if n < 0 {
				_ = p.ReplyError(ctx, m, "negative", fmt.Sprintf("%d is negative", n))
			} else if m.ReplyTo != "" {
				_ = p.Reply(ctx, m, n+1)
			}
			_ = m.Ack()
		}
	}()
}

// deleteOnCleanup deletes a shared peer's durable queue once the test's
// peers stopped.
func deleteOnCleanup(t *testing.T, tr transport.Transport, name string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := tr.DeleteQueue(ctx, wire.PeerQueue(name)); err != nil {
			t.Errorf("delete %s: %v", name, err)
		}
	})
}

func TestSendReceiveCallReply(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		name := fabrictest.Actor()
		srv := runPeer(t, connect(t), Config{Name: name})
		serve(t, srv, nil)
		cl := runPeer(t, connect(t), Config{Timeout: 10 * time.Second})

		// HareDo's first example: send, then receive by id.
		for i := 1; i <= 10; i++ {
			id, err := cl.Send(t.Context(), name, i)
			if err != nil {
				t.Fatal(err)
			}
			m, err := cl.Receive(t.Context(), id)
			var got int
			if err != nil || m.Decode(&got) != nil || got != i+1 || m.CorrelationID != id || m.From != name {
				t.Fatalf("reply to %d: %+v, %v", i, m, err)
			}
		}
		// Receive with no id: the oldest reply, whatever it answers.
		ids := map[string]bool{}
		for i := range 3 {
			id, err := cl.Send(t.Context(), name, i)
			if err != nil {
				t.Fatal(err)
			}
			ids[id] = true
		}
		for range 3 {
			m, err := cl.Receive(t.Context(), "")
			if err != nil || !ids[m.CorrelationID] {
				t.Fatalf("receive oldest: %+v, %v", m, err)
			}
			delete(ids, m.CorrelationID)
		}
		// Call, and an error reply.
		m, err := cl.Call(t.Context(), name, 41)
		if err != nil || string(m.Body) != "42" {
			t.Fatalf("call: %+v, %v", m, err)
		}
		_, err = cl.Call(t.Context(), name, -1)
		var re *wire.RemoteError
		if !errors.As(err, &re) || re.Code != "negative" || re.Message != "-1 is negative" {
			t.Fatalf("error reply: %v", err)
		}
		if _, err := cl.Send(t.Context(), fabrictest.Actor(), 1); !errors.Is(err, ErrNoPeer) {
			t.Fatalf("send to nobody: %v", err)
		}
	})
}

// TestLateReplyDropped: a reply that comes after its call timed out is
// dropped and counted, and no later Receive returns it.
func TestLateReplyDropped(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		name := fabrictest.Actor()
		srv := runPeer(t, connect(t), Config{Name: name})
		hold := make(chan struct{})
		serve(t, srv, hold)
		cl := runPeer(t, connect(t), Config{Timeout: 200 * time.Millisecond})
		if _, err := cl.Call(t.Context(), name, 1); !errors.Is(err, ErrTimeout) {
			t.Fatalf("call: %v, want ErrTimeout", err)
		}
		close(hold) // now the server replies
		testenv.WaitFor(t, 10*time.Second, func() error {
			if n := cl.Late(); n != 1 {
				return fmt.Errorf("%d late replies", n)
			}
			return nil
		})
		if m, err := cl.Receive(t.Context(), ""); !errors.Is(err, ErrTimeout) {
			t.Fatalf("a later receive got %+v, %v", m, err)
		}
		// The next call works.
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if m, err := cl.Call(ctx, name, 2); err != nil || string(m.Body) != "3" {
			t.Fatalf("next call: %+v, %v", m, err)
		}
		if cl.Foreign() != 0 {
			t.Fatalf("%d foreign replies", cl.Foreign())
		}
	})
}

// TestSharedAndExclusive: instances of a shared peer compete for its
// messages, and each gets the replies to its own calls; a second instance
// of an exclusive peer is refused.
func TestSharedAndExclusive(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		name := fabrictest.Actor()
		deleteOnCleanup(t, connect(t), name)
		var served [2]int
		var mu sync.Mutex
		var insts [2]*Peer
		for i := range insts {
			insts[i] = runPeer(t, connect(t), Config{Name: name, Shared: true, Timeout: 10 * time.Second})
			go func() {
				for m := range insts[i].Requests() {
					mu.Lock()
					served[i]++
					mu.Unlock()
					time.Sleep(time.Millisecond) // let the other instance take some
					_ = insts[i].Reply(context.Background(), m, i)
					_ = m.Ack()
				}
			}()
		}
		// Each instance calls its own peer name: the replies come back to
		// the instance that called, whichever instance served.
		var wg sync.WaitGroup
		for i := range insts {
			wg.Go(func() {
				for range 20 {
					if _, err := insts[i].Call(t.Context(), name, 0); err != nil {
						t.Errorf("instance %d call: %v", i, err)
						return
					}
				}
			})
		}
		wg.Wait()
		mu.Lock()
		if served[0]+served[1] != 40 || served[0] == 0 || served[1] == 0 {
			t.Errorf("served %v: want 40 shared by both", served)
		}
		mu.Unlock()

		ex := fabrictest.Actor()
		runPeer(t, connect(t), Config{Name: ex})
		second, err := New(connect(t), Config{Name: ex})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if err := second.Run(ctx); !errors.Is(err, ErrTaken) {
			t.Fatalf("second exclusive instance: %v, want ErrTaken", err)
		}
	})
}
