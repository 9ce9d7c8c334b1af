package mapper_test

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
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// progressAgent runs an agent named id serving /<actor>/count: n progress
// messages (key "step", value i) then the result "done by ID".
func progressAgent(t *testing.T, connect fabrictest.Connect, id, actor string) *agent.Agent {
	t.Helper()
	a, err := agent.New(connect(t), agent.Config{Identity: id}, agent.WithLogger(testenv.Logger(t)))
	must(t, err)
	must(t, a.Handle("/"+actor+"/count", agent.Func(func(ctx context.Context, n int) (string, error) {
		for i := 1; i <= n; i++ {
			if err := agent.Progress(ctx, "step", i); err != nil {
				return "", err
			}
		}
		return "done by " + id, nil
	})))
	fabrictest.RunAgent(t, a)
	return a
}

// TestProgressOrder: every progress message arrives, in order, before
// Request returns the result; per agent in a fan-out.
func TestProgressOrder(t *testing.T) {
	const n = 200
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		progressAgent(t, connect, actor+"-a", actor)
		m := fabrictest.RunMapper(t, connect(t), mapper.Config{})
		waitAgents(t, m, "/"+actor+"/count", 1)

		var got []mapper.Progress
		r, err := m.Request(t.Context(), "/"+actor+"/count", n, mapper.OnProgress(func(p mapper.Progress) {
			got = append(got, p)
		}))
		must(t, err)
		if string(r.Body) != fmt.Sprintf(`"done by %s-a"`, actor) {
			t.Fatalf("result %s", r.Body)
		}
		if len(got) != n {
			t.Fatalf("%d progress messages before the result, want %d", len(got), n)
		}
		for i, p := range got {
			if p.Seq != int64(i+1) || string(p.Value) != fmt.Sprint(i+1) || p.Key != "step" || p.Agent != actor+"-a" {
				t.Fatalf("progress %d: %+v", i, p)
			}
		}

		// Without OnProgress the agent sends none: the reply is all.
		r, err = m.Request(t.Context(), "/"+actor+"/count", n)
		must(t, err)
		if string(r.Body) != fmt.Sprintf(`"done by %s-a"`, actor) || m.LateReplies() != 0 {
			t.Fatalf("result %s, %d late replies", r.Body, m.LateReplies())
		}

		// Fan-out: each agent's progress, in its order.
		progressAgent(t, connect, actor+"-b", actor)
		waitAgents(t, m, "/"+actor+"/count", 2)
		per := map[string][]int64{}
		rs, err := m.FanOut(t.Context(), "/"+actor+"/count", 20, mapper.OnProgress(func(p mapper.Progress) {
			per[p.Agent] = append(per[p.Agent], p.Seq)
		}))
		must(t, err)
		for _, id := range []string{actor + "-a", actor + "-b"} {
			if rs[id] == nil || rs[id].Err != nil || len(per[id]) != 20 || per[id][19] != 20 {
				t.Errorf("agent %s: reply %+v, progress %v", id, rs[id], per[id])
			}
		}
	})
}

// TestProgressOldCaller: a caller that knows nothing of progress (no
// warren-progress header) gets only its reply, even from a handler that
// reports progress.
func TestProgressOldCaller(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		progressAgent(t, connect, actor+"-a", actor)
		c := connect(t)
		q, err := c.DeclareQueue(t.Context(), transport.Queue{Exclusive: true})
		must(t, err)
		replies, err := c.Consume(t.Context(), q, transport.ConsumeOptions{AutoAck: true})
		must(t, err)
		for _, ask := range []bool{false, true} {
			msg := wire.NewRequest(wire.TypeRequest, "/"+actor+"/count", "raw", fmt.Sprint(ask), []byte("3"), time.Time{})
			msg.ReplyTo, msg.CorrelationID = q, msg.MessageID
			if ask {
				wire.AskProgress(&msg)
			}
			must(t, c.Publish(t.Context(), wire.RequestExchange, actor+"-a", msg, transport.PublishOptions{Mandatory: true}))
			var types []string
			for {
				d := <-replies
				types = append(types, d.Type)
				if d.Type == wire.TypeReply {
					break
				}
			}
			want := 1
			if ask {
				want = 4
			}
			if len(types) != want {
				t.Errorf("asked for progress %v: got %v", ask, types)
			}
		}
	})
}

// TestProgressCallerGone: a caller that gave up loses the progress; the
// handler is neither blocked nor failed, and the agent serves on.
func TestProgressCallerGone(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		first := make(chan struct{})
		finished := make(chan error, 1)
		a, err := agent.New(connect(t), agent.Config{Identity: actor + "-a"}, agent.WithLogger(testenv.Logger(t)))
		must(t, err)
		var once sync.Once
		must(t, a.Handle("/"+actor+"/long", agent.HandlerFunc(func(ctx context.Context, r *agent.Request) (any, error) {
			_ = agent.Progress(ctx, "", 0)
			once.Do(func() { close(first) })
			<-ctx.Done() // the caller's deadline
			var err error
			for i := range 500 {
				if err = agent.Progress(context.WithoutCancel(ctx), "", float64(i)/500); err != nil {
					break
				}
			}
			finished <- err
			return nil, nil
		})))
		must(t, a.Handle("/"+actor+"/echo", agent.HandlerFunc(func(_ context.Context, r *agent.Request) (any, error) {
			return r.Payload, nil
		})))
		fabrictest.RunAgent(t, a)
		tr := connect(t)
		m := fabrictest.RunMapper(t, tr, mapper.Config{})
		waitAgents(t, m, "/"+actor+"/long", 1)
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		var got int
		_, err = m.Request(ctx, "/"+actor+"/long", nil, mapper.OnProgress(func(mapper.Progress) { got++ }))
		if !errors.Is(err, mapper.ErrTimeout) {
			t.Fatalf("request: %v, want a timeout", err)
		}
		select {
		case err := <-finished:
			must(t, err)
		case <-time.After(20 * time.Second):
			t.Fatal("handler blocked by progress to a caller that has gone")
		}
		r, err := m.Request(t.Context(), "/"+actor+"/echo", json.RawMessage(`"still here"`))
		must(t, err)
		if string(r.Body) != `"still here"` || got < 1 {
			t.Fatalf("after: %s, %d progress", r.Body, got)
		}
	})
}

// TestProgressOutsideARequest: Progress is a no-op for a push and outside
// a handler, and refuses a value that is not JSON.
func TestProgressOutsideARequest(t *testing.T) {
	if err := agent.Progress(context.Background(), "", 1); err != nil {
		t.Fatal(err)
	}
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		errs := make(chan error, 2)
		a, err := agent.New(connect(t), agent.Config{Identity: actor + "-a"}, agent.WithLogger(testenv.Logger(t)))
		must(t, err)
		must(t, a.Handle("/"+actor+"/p", agent.HandlerFunc(func(ctx context.Context, r *agent.Request) (any, error) {
			errs <- agent.Progress(ctx, "", 1)
			errs <- agent.Progress(ctx, "", func() {})
			return nil, nil
		})))
		fabrictest.RunAgent(t, a)
		m := fabrictest.RunMapper(t, connect(t), mapper.Config{})
		waitAgents(t, m, "/"+actor+"/p", 1)
		must(t, m.Push(t.Context(), "/"+actor+"/p", nil))
		if err := <-errs; err != nil {
			t.Errorf("progress in a push: %v", err)
		}
		<-errs // a push: nothing is encoded
		_, err = m.Request(t.Context(), "/"+actor+"/p", nil, mapper.OnProgress(func(mapper.Progress) {}))
		must(t, err)
		must(t, <-errs)
		if err := <-errs; err == nil {
			t.Errorf("a value that is not JSON accepted")
		}
	})
}

// waitAgents waits until n live agents serve path.
func waitAgents(t *testing.T, m *mapper.Mapper, path string, n int) {
	t.Helper()
	testenv.WaitFor(t, 20*time.Second, func() error {
		got := 0
		for _, a := range m.Agents() {
			if slices.Contains(a.Services, path) {
				got++
			}
		}
		if got != n {
			return fmt.Errorf("%d agents serve %s, want %d", got, path, n)
		}
		return nil
	})
}

// TestProgressTimeout: a job that keeps reporting runs past the progress
// timeout; one that goes quiet fails at it, long before the deadline.
func TestProgressTimeout(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		a, err := agent.New(connect(t), agent.Config{Identity: actor + "-a"}, agent.WithLogger(testenv.Logger(t)))
		must(t, err)
		must(t, a.Handle("/"+actor+"/job", agent.Func(func(ctx context.Context, report bool) (string, error) {
			for i := range 40 { // 2s
				if report {
					_ = agent.Progress(ctx, "", i)
				}
				select {
				case <-time.After(50 * time.Millisecond):
				case <-ctx.Done():
					return "", ctx.Err()
				}
			}
			return "done", nil
		})))
		fabrictest.RunAgent(t, a)
		m := fabrictest.RunMapper(t, connect(t), mapper.Config{})
		waitAgents(t, m, "/"+actor+"/job", 1)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		r, err := m.Request(ctx, "/"+actor+"/job", true, mapper.ProgressTimeout(time.Second))
		must(t, err)
		if string(r.Body) != `"done"` {
			t.Fatalf("result %s", r.Body)
		}
		// The quiet job would answer "done" after 2s, well within ctx:
		// a timeout can only be the progress timeout.
		_, err = m.Request(ctx, "/"+actor+"/job", false, mapper.ProgressTimeout(300*time.Millisecond))
		if !errors.Is(err, mapper.ErrTimeout) {
			t.Fatalf("a quiet job: %v, want ErrTimeout", err)
		}
	})
}
