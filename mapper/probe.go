package mapper

import (
	"context"
	"errors"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Liveness probes. The ping timeout (three ping intervals, 45s with the
// default 15s) is far too long to wait for a request whose agent died, and
// a mapper that has just started (every `warren request`) has not seen
// enough pings to judge anyway. The broker knows at once: when an agent's
// connection goes away (a crash, kill -9), its queue warren.agent.ID loses
// its consumer. So while a request waits on an agent for longer than
// probeAfter, the mapper asks the broker, on every sweep, how many
// consumers that queue has (a passive declare: one round trip, nothing
// created). Two answers of none, probeConfirm apart, or a queue that no
// longer exists, drop the agent (AgentLost): its requests go to another
// agent at once, its queue is rescued, as for an expired agent.
//
// Two answers rather than one: an agent stopping gracefully stops consuming
// its queue only once it has answered everything it took, just before it
// unregisters; its last replies may still be on their way. Its unregister
// arrives well within probeConfirm, and then the mapper waits leftGrace for
// those replies instead of re-sending their requests.
const (
	// probeAfter: requests answered quicker than this cost no probe.
	probeAfter = 250 * time.Millisecond
	// probeConfirm: the least time between the two answers of no consumer
	// that drop an agent.
	probeConfirm = 150 * time.Millisecond
	// probeTimeout bounds one probe.
	probeTimeout = 2 * time.Second
)

// probe is the state of the probes of one agent; guarded by Mapper.mu.
type probe struct {
	running bool
	empty   time.Time // when its queue was first seen without a consumer; zero while it has one
}

// probeAgents starts a probe of each agent that a request has been waiting
// on for probeAfter or more, unless one is running.
func (m *Mapper) probeAgents(now time.Time) {
	m.mu.Lock()
	waited := map[string]bool{}
	for _, w := range m.pending {
		if w.target != "" && now.Sub(w.sent) >= probeAfter {
			waited[w.target] = true
		}
	}
	for id, p := range m.probes {
		if !waited[id] && !p.running {
			delete(m.probes, id)
		}
	}
	var start []string
	for id := range waited {
		p := m.probes[id]
		if p == nil {
			p = &probe{}
			m.probes[id] = p
		}
		if !p.running {
			p.running = true
			start = append(start, id)
		}
	}
	ctx := m.runCtx
	m.mu.Unlock()
	for _, id := range start {
		m.bg.Go(func() { m.probe(ctx, id) })
	}
}

// probe asks the broker whether the queue of agent id has a consumer, and
// drops the agent when it has had none for probeConfirm or is gone.
func (m *Mapper) probe(ctx context.Context, id string) {
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	info, err := m.tr.InspectQueue(pctx, wire.AgentQueue(id))
	cancel()
	now := time.Now()
	missing := errors.Is(err, transport.ErrNotFound)
	m.mu.Lock()
	p := m.probes[id]
	if p == nil {
		m.mu.Unlock()
		return
	}
	p.running = false
	var why string
	switch {
	case missing:
		why = "its queue no longer exists"
	case err != nil:
		// No answer: the ping timeout still holds.
		if ctx.Err() == nil {
			m.log.Debug("agent probe failed", "agent", id, "err", err)
		}
	case info.Consumers > 0:
		p.empty = time.Time{}
	case p.empty.IsZero():
		p.empty = now
	case now.Sub(p.empty) >= probeConfirm:
		why = "its queue has had no consumer for " + now.Sub(p.empty).Round(time.Millisecond).String() + ": its connection is gone"
	}
	if why != "" {
		delete(m.probes, id)
	}
	m.mu.Unlock()
	if why != "" {
		m.lose(id, why)
	}
}

// lose drops the agent id from the registry, if it is there, because the
// broker says it is gone: what waits on it is re-sent (see redispatch).
// It comes back with its next heartbeat.
func (m *Mapper) lose(id, why string) {
	evs := m.reg.drop(id, AgentLost)
	if len(evs) > 0 {
		m.log.Warn("agent lost: dropped before its ping timeout", "agent", id, "why", why)
	}
	m.emit(evs)
}
