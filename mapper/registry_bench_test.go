package mapper

import (
	"cmp"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Selection benchmarks: the registry with n agents all serving one path,
// with statuses 0..9 (so a tenth of them tie for least loaded), the tag
// "eu" on all, "gpu" on the least loaded tenth and "hot" on the most loaded. Each op is one request's
// selection: what mapper.Request runs under the registry lock.
//
// "copy+sort" is the baseline, the selection before the index: every live
// agent serving the path copied out of the registry and sorted by
// identity, then Select over the copies. Compare the figures per size, as
// ratios: the machine these run on is shared and noisy.

func benchRegistry(n int) (*registry, time.Time) {
	r := newRegistry(func(a AgentInfo) time.Duration { return 3 * a.PingInterval })
	now := time.Now()
	for i := range n {
		tags := []string{"eu"}
		switch i % 10 {
		case 0: // among the least loaded
			tags = append(tags, "gpu")
		case 9: // the most loaded
			tags = append(tags, "hot")
		}
		r.update(wire.TypePing, wire.Heartbeat{
			Identity: fmt.Sprintf("agent-%06d", (i*7919)%n), Services: []string{"/bench/echo", "/bench/other"},
			Tags: tags, Status: float64(i % 10), PingInterval: 15000,
		}, now)
	}
	return r, now
}

// copySort is the registry's live(path) before the index: copy and sort.
func copySort(r *registry, path string, now time.Time) []AgentInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]AgentInfo, 0, len(r.agents))
	for _, a := range r.agents {
		if r.expired(a, now) || !a.Serves(path) || slices.Contains(a.Inactive, path) {
			continue
		}
		out = append(out, a.AgentInfo)
	}
	slices.SortFunc(out, func(x, y AgentInfo) int { return cmp.Compare(x.Identity, y.Identity) })
	return out
}

func BenchmarkSelect(b *testing.B) {
	custom := SelectorFunc(func(_ string, c []AgentInfo) []AgentInfo { return c[len(c)/2 : len(c)/2+1] })
	sels := []struct {
		name string
		sel  func() Selector
	}{
		{"least_loaded", LeastLoaded},
		{"round_robin", RoundRobin},
		{"random", Random},
		{"identity", func() Selector { return Identity("agent-000003") }},
		{"tagged_gpu", func() Selector { return Tagged(nil, "gpu") }},
		// The worst case of Tagged: its agents are the most loaded, so
		// least_loaded walks past the nine tenths that are not.
		{"tagged_hot", func() Selector { return Tagged(nil, "hot") }},
		{"custom", func() Selector { return custom }},
	}
	for _, n := range []int{10, 1000, 10000} {
		r, now := benchRegistry(n)
		for _, s := range sels {
			b.Run(fmt.Sprintf("%s/agents=%d/index", s.name, n), func(b *testing.B) {
				sel := s.sel()
				for b.Loop() {
					if got, _ := r.pick("/bench/echo", sel, nil, now, nil); len(got) != 1 {
						b.Fatal("no pick")
					}
				}
			})
			b.Run(fmt.Sprintf("%s/agents=%d/copy+sort", s.name, n), func(b *testing.B) {
				sel := s.sel()
				for b.Loop() {
					if got := sel.Select("/bench/echo", copySort(r, "/bench/echo", now)); len(got) != 1 {
						b.Fatal("no pick")
					}
				}
			})
		}
	}
}

// BenchmarkHeartbeat: one ping from a known agent, at n agents, with its
// status unchanged or changed (which moves it in the least-loaded order of
// both its services).
func BenchmarkHeartbeat(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		for _, change := range []bool{false, true} {
			b.Run(fmt.Sprintf("agents=%d/status_changed=%t", n, change), func(b *testing.B) {
				r, now := benchRegistry(n)
				hb := wire.Heartbeat{Identity: "agent-000003", Services: []string{"/bench/echo", "/bench/other"}, Tags: []string{"eu"}, PingInterval: 15000}
				i := 0
				for b.Loop() {
					hb.Status = 3.0
					if change {
						hb.Status = float64(i % 10)
					}
					i++
					r.update(wire.TypePing, hb, now)
				}
			})
		}
	}
}

// BenchmarkReadBeat: what a mapper does with each heartbeat it receives,
// from the delivery: read and check it (wire.ReadHeartbeat), then update
// the registry, at 10,000 agents, the status changing each time.
func BenchmarkReadBeat(b *testing.B) {
	r, _ := benchRegistry(10000)
	var msgs []transport.Message
	for i := range 10 {
		msg, err := wire.NewHeartbeat(wire.TypePing, wire.Heartbeat{
			Identity: "agent-000003", Queue: wire.AgentQueue("agent-000003"),
			Services: []string{"/bench/echo", "/bench/other"}, Tags: []string{"eu"},
			Status: float64(i), PingInterval: 15000, Started: time.Now(),
		})
		if err != nil {
			b.Fatal(err)
		}
		msgs = append(msgs, msg)
	}
	i := 0
	for b.Loop() {
		d := transport.Delivery{Message: msgs[i%len(msgs)]}
		i++
		hb, err := wire.ReadHeartbeat(&d)
		if err != nil {
			b.Fatal(err)
		}
		r.update(d.Type, hb, time.Now())
	}
	b.ReportMetric(float64(len(msgs[0].Body)), "body-bytes")
}

// BenchmarkAgents: Mapper.Agents (registry.live("")), every live agent in
// identity order, as the Control Tower and the metrics read it; against
// the copy and sort it was.
func BenchmarkAgents(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		r, now := benchRegistry(n)
		b.Run(fmt.Sprintf("agents=%d/index", n), func(b *testing.B) {
			for b.Loop() {
				if len(r.live("", now)) != n {
					b.Fatal("missing agents")
				}
			}
		})
		b.Run(fmt.Sprintf("agents=%d/copy+sort", n), func(b *testing.B) {
			for b.Loop() {
				r.mu.Lock()
				out := make([]AgentInfo, 0, len(r.agents))
				for _, a := range r.agents {
					if !r.expired(a, now) {
						out = append(out, a.AgentInfo)
					}
				}
				r.mu.Unlock()
				slices.SortFunc(out, func(x, y AgentInfo) int { return cmp.Compare(x.Identity, y.Identity) })
			}
		})
	}
}
