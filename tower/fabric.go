package tower

import (
	"context"
	"sync"
	"time"

	"github.com/warrenrpc/warren/discovery"
	"github.com/warrenrpc/warren/wire"
)

// fabric holds the fabric-wide figures of each path, from the agents'
// answers to discovery STATS (docs/protocol.md): their counters since each
// agent started, summed over the agents serving the path, and the rates
// computed from two successive answers.
type fabric struct {
	mu    sync.Mutex
	prev  map[fabricKey]fabricCount // the latest answer of each agent's endpoint
	paths map[string]fabricSummary
	asked bool // STATS was asked at least once
}

type fabricKey struct{ id, actor, path string }

type fabricCount struct {
	started  time.Time
	at       time.Time
	requests int64
	errors   int64
	busy     time.Duration // processing_time
}

// fabricSummary is a path's figures, summed over the agents that answered.
type fabricSummary struct {
	Agents          int
	Requests        int64         // since each agent started
	Errors          int64         // idem
	Mean            time.Duration // mean processing time since each agent started
	Rated           bool          // the fields below are known (two answers)
	Rate            float64       // requests per second since the previous answer
	ErrorRate       float64       // share of failures since the previous answer (0..1)
	RecentMean      time.Duration // mean processing time since the previous answer
	recentN, recent int64         // requests and failures since the previous answer
	recentBusy      time.Duration
	busy            time.Duration
}

func newFabric() *fabric {
	return &fabric{prev: map[fabricKey]fabricCount{}, paths: map[string]fabricSummary{}}
}

// update replaces the figures with those of one STATS round, answered at
// now. An agent that restarted (a new start time, or counters that went
// back) starts from zero again: its rate is counted from the next answer.
func (f *fabric) update(stats []wire.ServiceStats, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	prev := f.prev
	f.prev = make(map[fabricKey]fabricCount, len(prev))
	paths := map[string]fabricSummary{}
	rated := map[string]bool{}
	for _, s := range stats {
		for _, e := range s.Endpoints {
			if e.Subject == "" || len(paths) >= maxPaths {
				continue
			}
			k := fabricKey{s.ID, s.Name, e.Subject}
			c := fabricCount{started: s.Started, at: now, requests: int64(e.NumRequests), errors: int64(e.NumErrors), busy: e.ProcessingTime}
			f.prev[k] = c
			p := paths[e.Subject]
			p.Agents++
			p.Requests += c.requests
			p.Errors += c.errors
			p.busy += c.busy
			if old, ok := prev[k]; ok && old.started.Equal(c.started) && c.requests >= old.requests && c.errors >= old.errors {
				if dt := now.Sub(old.at); dt > 0 {
					p.Rate += float64(c.requests-old.requests) / dt.Seconds()
					p.recentN += c.requests - old.requests
					p.recent += c.errors - old.errors
					p.recentBusy += max(c.busy-old.busy, 0)
					rated[e.Subject] = true
				}
			}
			paths[e.Subject] = p
		}
	}
	for path, p := range paths {
		if p.Requests > 0 {
			p.Mean = p.busy / time.Duration(p.Requests)
		}
		p.Rated = rated[path]
		if p.recentN > 0 {
			p.ErrorRate = float64(p.recent) / float64(p.recentN)
			p.RecentMean = p.recentBusy / time.Duration(p.recentN)
		}
		paths[path] = p
	}
	f.paths = paths
	f.asked = true
}

func (f *fabric) summary(path string) (fabricSummary, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.paths[path]
	return p, ok
}

func (f *fabric) wasAsked() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.asked
}

// statsLoop asks the fabric STATS every cfg.Stats while any page is open,
// and has the pages updated with the answers.
func (t *Tower) statsLoop(ctx context.Context) {
	tick := time.NewTicker(t.cfg.Stats)
	defer tick.Stop()
	// Answers are collected for up to a second, and never for longer than
	// half the interval, so that rounds do not overlap.
	wait := min(time.Second, t.cfg.Stats/2)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if t.hub.clients() == 0 {
			continue
		}
		stats, err := discovery.Stats(ctx, t.tr, discovery.Query{Wait: wait})
		if err != nil {
			if ctx.Err() == nil {
				t.log.Warn("discovery stats", "err", err)
			}
			continue
		}
		t.fabric.update(stats, time.Now())
		select {
		case t.kick <- struct{}{}:
		default:
		}
	}
}
