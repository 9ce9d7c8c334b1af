package tower

import (
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/warrenrpc/warren/mapper"
)

// maxEvents is how many joins and drops the page lists.
const maxEvents = 50

// historyPoints is how many status samples a chart holds at most.
const historyPoints = 60

// state is what the Tower remembers beyond the mapper's registry: each
// agent's recent statuses, the latest joins and drops, and the requests
// sent through it.
type state struct {
	span time.Duration // how far the charts reach back
	step time.Duration // one chart point per step

	mu     sync.Mutex
	hist   map[string][]point // by identity
	events []eventRec         // newest last
	svc    map[string]*svcStats
}

type point struct {
	at    time.Time
	value float64
	ok    bool // the status was a number
}

type eventRec struct {
	At       time.Time
	Kind     string
	Identity string
	Services []string
}

func newState(span time.Duration) *state {
	return &state{
		span: span,
		step: max(span/historyPoints, time.Second),
		hist: map[string][]point{},
		svc:  map[string]*svcStats{},
	}
}

// sample records the status of every live agent (one point per step) and
// forgets the history of agents gone for longer than the span.
func (s *state) sample(agents []mapper.AgentInfo, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	live := map[string]bool{}
	for _, a := range agents {
		live[a.Identity] = true
		h := s.hist[a.Identity]
		if n := len(h); n > 0 && now.Sub(h[n-1].at) < s.step {
			continue
		}
		v, ok := statusNumber(a.Status)
		h = append(h, point{at: now, value: v, ok: ok})
		for len(h) > 0 && now.Sub(h[0].at) > s.span {
			h = h[1:]
		}
		s.hist[a.Identity] = slices.Clip(h)
	}
	for id, h := range s.hist {
		if !live[id] && (len(h) == 0 || now.Sub(h[len(h)-1].at) > s.span) {
			delete(s.hist, id)
		}
	}
}

func (s *state) history(id string) []point {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.hist[id])
}

func (s *state) event(e mapper.Event, now time.Time) eventRec {
	rec := eventRec{At: now, Kind: string(e.Kind), Identity: e.Agent.Identity, Services: e.Agent.Services}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, rec)
	if len(s.events) > maxEvents {
		s.events = slices.Clone(s.events[len(s.events)-maxEvents:])
	}
	return rec
}

// recentEvents returns the latest events, newest first.
func (s *state) recentEvents() []eventRec {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Clone(s.events)
	slices.Reverse(out)
	return out
}

// statusNumber reads a status as a number for the chart.
func statusNumber(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	}
	return 0, false
}

// svcStats counts the requests sent through the Tower to one path, in
// one-second buckets over the last minute, plus totals.
type svcStats struct {
	buckets [60]bucket
	total   int64
	errors  int64
	lat     []time.Duration // the latest latencies, for quantiles
}

type bucket struct {
	sec    int64 // Unix second this bucket counts
	n, err int64
	sum    time.Duration
}

const maxLatencies = 256

// maxPaths bounds how many paths the Tower keeps figures for.
const maxPaths = 1000

// observe records one call to path that took d and failed with code (""
// when it succeeded).
func (s *state) observe(path string, d time.Duration, failed bool, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.svc[path]
	if st == nil {
		if len(s.svc) >= maxPaths {
			return // a flood of made-up paths: not remembered
		}
		st = &svcStats{}
		s.svc[path] = st
	}
	sec := now.Unix()
	b := &st.buckets[sec%60]
	if b.sec != sec {
		*b = bucket{sec: sec}
	}
	b.n++
	b.sum += d
	st.total++
	if failed {
		b.err++
		st.errors++
	}
	st.lat = append(st.lat, d)
	if len(st.lat) > maxLatencies {
		st.lat = slices.Clone(st.lat[len(st.lat)-maxLatencies:])
	}
}

// svcSummary is a service's figures over the last minute.
type svcSummary struct {
	Total, Errors int64   // since the Tower started
	Rate          float64 // requests per second, last minute
	ErrorRate     float64 // share of failures, last minute (0..1)
	Mean, P95     time.Duration
	Seen          bool // any request was sent through the Tower
}

func (s *state) summary(path string, now time.Time) svcSummary {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.svc[path]
	if st == nil {
		return svcSummary{}
	}
	out := svcSummary{Total: st.total, Errors: st.errors, Seen: true}
	var n, nerr int64
	var sum time.Duration
	for _, b := range st.buckets {
		if now.Unix()-b.sec < 60 {
			n += b.n
			nerr += b.err
			sum += b.sum
		}
	}
	out.Rate = float64(n) / 60
	if n > 0 {
		out.ErrorRate = float64(nerr) / float64(n)
		out.Mean = sum / time.Duration(n)
	}
	if len(st.lat) > 0 {
		l := slices.Sorted(slices.Values(st.lat))
		out.P95 = l[min(len(l)-1, len(l)*95/100)]
	}
	return out
}

// paths returns the paths requests were sent to.
func (s *state) paths() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.svc))
	for p := range s.svc {
		out = append(out, p)
	}
	return out
}
