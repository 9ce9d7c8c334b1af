package discovery_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/discovery"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/wire"
)

// TestStatsCountKnownLoad runs a known load on an agent hosting two
// actors, then asks PING, INFO and STATS: the counts are the load's.
func TestStatsCountKnownLoad(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		calc, other := fabrictest.Actor(), fabrictest.Actor()
		id := calc + "-agent"
		a, err := agent.New(connect(t), agent.Config{Identity: id, Tags: []string{"blue"}, Version: "1.2.3", PingInterval: time.Second}, agent.WithLogger(testenv.Logger(t)))
		must(t, err)
		must(t, a.Handle("/"+calc+"/add", agent.Func(func(_ context.Context, in [2]int) (int, error) {
			time.Sleep(time.Millisecond)
			return in[0] + in[1], nil
		})))
		must(t, a.Handle("/"+calc+"/fail", agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) {
			return nil, &agent.Error{Code: "nope", Message: "always"}
		})))
		must(t, a.Handle("/"+other+"/idle", agent.Func(func(_ context.Context, in int) (int, error) { return in, nil })))
		fabrictest.RunAgent(t, a)
		m := fabrictest.RunMapper(t, connect(t), mapper.Config{})

		const adds, fails, pushes = 7, 3, 2
		for i := range adds {
			if _, err := m.Request(t.Context(), "/"+calc+"/add", [2]int{i, 1}); err != nil {
				t.Fatal(err)
			}
		}
		for range fails {
			_, err := m.Request(t.Context(), "/"+calc+"/fail", 1)
			if !errors.Is(err, &wire.RemoteError{Code: "nope"}) {
				t.Fatalf("fail: %v", err)
			}
		}
		for i := range pushes {
			must(t, m.Push(t.Context(), "/"+calc+"/add", [2]int{i, 2}))
		}
		for a.Handled() < adds+fails+pushes {
			select {
			case <-t.Context().Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}

		tr := connect(t)
		stats, err := discovery.Stats(t.Context(), tr, discovery.Query{Name: calc})
		must(t, err)
		if len(stats) != 1 {
			t.Fatalf("stats: %d answers, want 1: %+v", len(stats), stats)
		}
		s := stats[0]
		if s.Name != calc || s.ID != id || s.Version != "1.2.3" || s.Type != wire.StatsResponseType || s.Metadata["warren.tags"] != "blue" || s.Started.IsZero() {
			t.Errorf("stats identity: %+v", s)
		}
		if len(s.Endpoints) != 2 {
			t.Fatalf("stats endpoints: %+v", s.Endpoints)
		}
		add, fail := s.Endpoints[0], s.Endpoints[1]
		if add.Name != "add" || add.Subject != "/"+calc+"/add" || add.QueueGroup != wire.ServiceQueue("/"+calc+"/add") ||
			add.NumRequests != adds+pushes || add.NumErrors != 0 || add.LastError != "" ||
			add.ProcessingTime < (adds+pushes)*time.Millisecond || add.AverageProcessingTime != add.ProcessingTime/(adds+pushes) {
			t.Errorf("add: %+v", add)
		}
		if fail.Name != "fail" || fail.NumRequests != fails || fail.NumErrors != fails || fail.LastError != "nope: always" {
			t.Errorf("fail: %+v", fail)
		}

		pings, err := discovery.Ping(t.Context(), tr, discovery.Query{ID: id})
		must(t, err)
		want := []string{calc, other}
		if other < calc {
			want = []string{other, calc}
		}
		if got := names(pings); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("ping by id: %v, want %v", got, want)
		}
		for _, p := range pings {
			if p.Type != wire.PingResponseType || p.ID != id {
				t.Errorf("ping: %+v", p)
			}
		}

		infos, err := discovery.Info(t.Context(), tr, discovery.Query{Name: other, ID: id})
		must(t, err)
		if len(infos) != 1 || infos[0].Type != wire.InfoResponseType || len(infos[0].Endpoints) != 1 ||
			infos[0].Endpoints[0].Subject != "/"+other+"/idle" || infos[0].Endpoints[0].Metadata == nil {
			t.Errorf("info: %+v", infos)
		}
		none, err := discovery.Ping(t.Context(), tr, discovery.Query{Name: calc, ID: "nobody", Wait: 200 * time.Millisecond})
		if err != nil || len(none) != 0 {
			t.Errorf("ping of nobody: %v %v", none, err)
		}
	})
}

func names(ps []wire.ServicePing) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return out
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
