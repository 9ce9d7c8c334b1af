package secure

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/events"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
)

// TestEventsAndProgressSecure: events are signed by their publisher and
// checked by their subscriber; progress is sealed to the caller like the
// reply.
func TestEventsAndProgressSecure(t *testing.T) {
	p := testPKI(t)
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		wrap := func(name string) *Transport {
			tr, err := Wrap(connect(t), p.caConfig(name), WithLogger(testenv.Logger(t)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tr.Close() })
			return tr
		}
		key := fabrictest.Actor() + ".signed"
		sub, err := events.New(wrap("bob"), events.Config{Identity: "bob"}, events.WithLogger(testenv.Logger(t)))
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan *events.Event, 1)
		s, err := sub.Subscribe(t.Context(), key, func(_ context.Context, ev *events.Event) error {
			got <- ev
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		pub, err := events.New(wrap("fred"), events.Config{Identity: "fred"}, events.WithLogger(testenv.Logger(t)))
		if err != nil {
			t.Fatal(err)
		}
		if err := pub.Publish(t.Context(), key, "hi"); err != nil {
			t.Fatal(err)
		}
		select {
		case ev := <-got:
			if ev.From != "fred" || string(ev.Payload) != `"hi"` {
				t.Fatalf("event from %s: %s", ev.From, ev.Payload)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("no signed event")
		}

		// A streamed event: the subscribers of a group forward its chunks
		// to the assembler, signing the copies themselves.
		skey := fabrictest.Actor() + ".streamed"
		group := fabrictest.Actor()
		streamed := make(chan string, 2)
		for _, name := range []string{"bob", "eve"} {
			b, err := events.New(wrap(name), events.Config{Identity: name}, events.WithLogger(testenv.Logger(t)))
			if err != nil {
				t.Fatal(err)
			}
			s, err := b.Subscribe(t.Context(), skey, func(_ context.Context, ev *events.Event) error {
				data, err := io.ReadAll(ev.Stream)
				streamed <- fmt.Sprintf("%s %s %d", ev.From, ev.Payload, len(data))
				return err
			}, events.One(group))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
		}
		if err := pub.PublishStream(t.Context(), skey, "f", io.LimitReader(zeros{}, 1<<20), events.ChunkSize(32<<10)); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-streamed:
			if got != `fred "f" 1048576` {
				t.Fatalf("streamed event: %s", got)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no signed streamed event")
		}

		actor := fabrictest.Actor()
		a, err := agent.New(wrap("eve"), agent.Config{Identity: "eve"}, agent.WithLogger(testenv.Logger(t)))
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Handle("/"+actor+"/job", agent.Func(func(ctx context.Context, n int) (int, error) {
			for i := 1; i <= n; i++ {
				_ = agent.Progress(ctx, "", i)
			}
			return n, nil
		})); err != nil {
			t.Fatal(err)
		}
		fabrictest.RunAgent(t, a)
		m := fabrictest.RunMapper(t, wrap("mapper1"), mapper.Config{Identity: "mapper1"})
		var seqs []int64
		testenv.WaitFor(t, 20*time.Second, func() error {
			seqs = nil
			_, err := m.Request(t.Context(), "/"+actor+"/job", 5, mapper.OnProgress(func(p mapper.Progress) { seqs = append(seqs, p.Seq) }))
			return err
		})
		if len(seqs) != 5 || seqs[4] != 5 {
			t.Fatalf("progress in secure mode: %v", seqs)
		}
	})
}

// TestStreamsSecure: a streamed request and a streamed result, with every
// chunk, credit and reply signed and sealed to its recipient.
func TestStreamsSecure(t *testing.T) {
	p := testPKI(t)
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		wrap := func(name string) *Transport {
			tr, err := Wrap(connect(t), p.caConfig(name), WithLogger(testenv.Logger(t)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tr.Close() })
			return tr
		}
		actor := fabrictest.Actor()
		a, err := agent.New(wrap("eve"), agent.Config{Identity: "eve"}, agent.WithLogger(testenv.Logger(t)), agent.WithStreams(agent.StreamConfig{Dir: t.TempDir()}))
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Handle("/"+actor+"/len", agent.HandlerFunc(func(ctx context.Context, r *agent.Request) (any, error) {
			n, err := io.Copy(io.Discard, r.Stream)
			return n, err
		})); err != nil {
			t.Fatal(err)
		}
		if err := a.Handle("/"+actor+"/zeros", agent.Func(func(ctx context.Context, n int64) (*agent.StreamResult, error) {
			return &agent.StreamResult{Data: io.LimitReader(zeros{}, n), Meta: n}, nil
		})); err != nil {
			t.Fatal(err)
		}
		fabrictest.RunAgent(t, a)
		m := fabrictest.RunMapper(t, wrap("mapper1"), mapper.Config{Identity: "mapper1"})
		const n = 2<<20 + 3
		testenv.WaitFor(t, 20*time.Second, func() error {
			r, err := m.Stream(t.Context(), "/"+actor+"/len", nil, io.LimitReader(zeros{}, n), mapper.ChunkSize(64<<10))
			if err != nil {
				return err
			}
			if string(r.Body) != fmt.Sprint(n) {
				return fmt.Errorf("stream: %s", r.Body)
			}
			return nil
		})
		r, err := m.Request(t.Context(), "/"+actor+"/zeros", n, mapper.AcceptStream())
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		got, err := io.Copy(io.Discard, r.Stream)
		if err != nil || got != n {
			t.Fatalf("streamed result: %d bytes, %v", got, err)
		}
	})
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
