package mapper_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/wire"
)

// sourceAgent serves /<actor>/source: n pseudo-random bytes (seed 3) as
// a streamed result, with meta "source".
func sourceAgent(t *testing.T, connect fabrictest.Connect, id, actor string, idle time.Duration) *agent.Agent {
	t.Helper()
	a, err := agent.New(connect(t), agent.Config{Identity: id}, agent.WithLogger(testenv.Logger(t)), agent.WithStreams(agent.StreamConfig{IdleTimeout: idle}))
	must(t, err)
	must(t, a.Handle("/"+actor+"/source", agent.Func(func(ctx context.Context, n int64) (*agent.StreamResult, error) {
		return &agent.StreamResult{Data: newRand(3, n), Meta: "source"}, nil
	})))
	fabrictest.RunAgent(t, a)
	return a
}

// TestStreamedResult: results of several sizes arrive whole, checked, in
// a file that Close removes; a caller that does not take streams gets an
// error; memory stays bounded.
func TestStreamedResult(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		sourceAgent(t, connect, actor+"-a", actor, 0)
		m := fabrictest.RunMapper(t, connect(t), mapper.Config{})
		waitAgents(t, m, "/"+actor+"/source", 1)
		for _, n := range []int64{0, 1, 3<<20 + 5} {
			r, err := m.Request(t.Context(), "/"+actor+"/source", n, mapper.AcceptStream())
			must(t, err)
			if string(r.Body) != `"source"` || r.StreamSize != n || r.Stream == nil {
				t.Fatalf("%d bytes: body %s, size %d", n, r.Body, r.StreamSize)
			}
			if got, want := sum(r.Stream), sum(newRand(3, n)); got != want {
				t.Fatalf("%d bytes: sha256 %s, want %s", n, got, want)
			}
			must(t, r.Close())
			if _, err := r.Stream.Read(make([]byte, 1)); err == nil {
				t.Errorf("the stream reads after Close")
			}
		}
		_, err := m.Request(t.Context(), "/"+actor+"/source", 10)
		if !errors.Is(err, &wire.RemoteError{Code: wire.CodeHandler}) {
			t.Errorf("a caller that does not take streams: %v", err)
		}

		stopHeap := testenv.HeapPeak()
		const big = 64 << 20
		start := time.Now()
		r, err := m.Request(t.Context(), "/"+actor+"/source", big, mapper.AcceptStream())
		base, peak := stopHeap()
		must(t, err)
		defer r.Close()
		n, err := io.Copy(io.Discard, r.Stream)
		must(t, err)
		grew := int64(peak) - int64(base)
		t.Logf("64 MiB result in %v; heap grew by %d MiB", time.Since(start).Round(time.Millisecond), grew>>20)
		if n != big || grew > 64<<20 {
			t.Errorf("read %d bytes; heap grew by %d MiB", n, grew>>20)
		}
	})
}

// TestStreamedResultCallerGone: a caller that gave up stops crediting;
// the agent drops the rest after its idle timeout and serves on.
func TestStreamedResultCallerGone(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		a := sourceAgent(t, connect, actor+"-a", actor, 300*time.Millisecond)
		tr := connect(t)
		m := fabrictest.RunMapper(t, tr, mapper.Config{})
		waitAgents(t, m, "/"+actor+"/source", 1)
		// A caller that stops reading its replies: its mapper stops.
		m2, err := mapper.New(connect(t), mapper.Config{}, mapper.WithLogger(testenv.Logger(t)))
		must(t, err)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- m2.Run(ctx) }()
		<-m2.Ready()
		waitAgents(t, m2, "/"+actor+"/source", 1)
		h0 := a.Handled()
		rctx, rcancel := context.WithTimeout(t.Context(), 2*time.Second)
		_, err = m2.Request(rctx, "/"+actor+"/source", int64(100<<30), mapper.AcceptStream())
		rcancel()
		if !errors.Is(err, mapper.ErrTimeout) {
			t.Fatalf("100 GiB in 2s: %v", err)
		}
		cancel()
		must(t, <-done)
		testenv.WaitFor(t, 20*time.Second, func() error {
			r, err := m.Request(t.Context(), "/"+actor+"/source", 5, mapper.AcceptStream())
			if err != nil {
				return err
			}
			return r.Close()
		})
		// The abandoned request and the small one are both done.
		testenv.WaitFor(t, 20*time.Second, func() error {
			if n := a.Handled() - h0; n < 2 {
				return fmt.Errorf("%d requests handled since, want 2", n)
			}
			return nil
		})
	})
}

// TestStreamBothWays: a streamed request whose result is streamed too.
func TestStreamBothWays(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		a, err := agent.New(connect(t), agent.Config{Identity: actor + "-a"}, agent.WithLogger(testenv.Logger(t)))
		must(t, err)
		must(t, a.Handle("/"+actor+"/copy", agent.HandlerFunc(func(ctx context.Context, r *agent.Request) (any, error) {
			return &agent.StreamResult{Data: r.Stream, Meta: r.StreamSize}, nil
		})))
		fabrictest.RunAgent(t, a)
		m := fabrictest.RunMapper(t, connect(t), mapper.Config{})
		waitAgents(t, m, "/"+actor+"/copy", 1)
		const n = 1<<20 + 9
		r, err := m.Stream(t.Context(), "/"+actor+"/copy", nil, newRand(5, n), mapper.AcceptStream(), mapper.ChunkSize(100<<10))
		must(t, err)
		defer r.Close()
		if string(r.Body) != fmt.Sprint(n) || sum(r.Stream) != sum(newRand(5, n)) {
			t.Fatalf("copy: %s", r.Body)
		}
	})
}
