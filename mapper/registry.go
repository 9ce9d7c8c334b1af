package mapper

import (
	"cmp"
	"encoding/json"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/warrenrpc/warren/wire"
)

// AgentInfo is what a mapper knows of a live agent, from its latest
// heartbeat. Values handed out are copies.
type AgentInfo struct {
	Identity     string
	Queue        string
	Services     []string
	Tags         []string
	Status       any // the agent's status value, decoded from JSON
	PingInterval time.Duration
	LastSeen     time.Time // when the latest heartbeat arrived
	Started      time.Time
	// Inactive lists services the agent serves but does not take work for
	// now (their Active predicate is false); it is not selected for them.
	Inactive []string
}

// Serves reports whether the agent offers path.
func (a AgentInfo) Serves(path string) bool {
	_, ok := slices.BinarySearch(a.Services, path)
	return ok
}

// HasTags reports whether the agent carries every tag given.
func (a AgentInfo) HasTags(tags ...string) bool {
	for _, t := range tags {
		if !slices.Contains(a.Tags, t) {
			return false
		}
	}
	return true
}

// CompareStatus orders two status values: numbers numerically and before
// everything else, then strings lexically, then other values by their JSON
// text. least_loaded picks the smallest.
func CompareStatus(x, y any) int {
	xn, xok := number(x)
	yn, yok := number(y)
	switch {
	case xok && yok:
		return cmp.Compare(xn, yn)
	case xok:
		return -1
	case yok:
		return 1
	}
	xs, xok := x.(string)
	ys, yok := y.(string)
	switch {
	case xok && yok:
		return cmp.Compare(xs, ys)
	case xok:
		return -1
	case yok:
		return 1
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return cmp.Compare(string(xb), string(yb))
}

func number(v any) (float64, bool) {
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

// EventKind says what happened to an agent in the registry.
type EventKind string

// Registry events.
const (
	AgentJoined  EventKind = "joined"  // first heartbeat, or back after expiry
	AgentLeft    EventKind = "left"    // unregistered
	AgentExpired EventKind = "expired" // silent for the ping timeout
	// AgentLost: the broker says its connection is gone (its queue has no
	// consumer, or no longer exists), seen while a request waited on it.
	AgentLost EventKind = "lost"
)

// Event is a change in the registry.
type Event struct {
	Kind  EventKind
	Agent AgentInfo
}

// registry holds the live agents. All methods are safe for concurrent use;
// events are returned to the caller, which delivers them outside the lock.
type registry struct {
	timeout func(AgentInfo) time.Duration

	mu     sync.Mutex
	agents map[string]*AgentInfo
}

func newRegistry(timeout func(AgentInfo) time.Duration) *registry {
	return &registry{timeout: timeout, agents: map[string]*AgentInfo{}}
}

// update applies a heartbeat received at now.
func (r *registry) update(typ string, hb wire.Heartbeat, now time.Time) []Event {
	info := AgentInfo{
		Identity:     hb.Identity,
		Queue:        hb.Queue,
		Services:     slices.Sorted(slices.Values(hb.Services)),
		Tags:         slices.Clone(hb.Tags),
		Status:       hb.Status,
		PingInterval: pingInterval(hb.PingInterval),
		LastSeen:     now,
		Started:      hb.Started,
		Inactive:     slices.Clone(hb.Inactive),
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old, known := r.agents[hb.Identity]
	if typ == wire.TypeUnregister {
		if !known {
			return nil
		}
		delete(r.agents, hb.Identity)
		return []Event{{Kind: AgentLeft, Agent: *old}}
	}
	r.agents[hb.Identity] = &info
	if !known || r.expired(old, now) {
		return []Event{{Kind: AgentJoined, Agent: info}}
	}
	return nil
}

func (r *registry) expired(a *AgentInfo, now time.Time) bool {
	return now.Sub(a.LastSeen) > r.timeout(*a)
}

// drop removes the agent id, if known, with an event of kind.
func (r *registry) drop(id string, kind EventKind) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	a, ok := r.agents[id]
	if !ok {
		return nil
	}
	delete(r.agents, id)
	return []Event{{Kind: kind, Agent: *a}}
}

// sweep removes expired agents and returns their events.
func (r *registry) sweep(now time.Time) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var evs []Event
	for id, a := range r.agents {
		if r.expired(a, now) {
			delete(r.agents, id)
			evs = append(evs, Event{Kind: AgentExpired, Agent: *a})
		}
	}
	return evs
}

// live returns copies of the live agents, sorted by identity, that serve
// path (every agent when path is "").
func (r *registry) live(path string, now time.Time) []AgentInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]AgentInfo, 0, len(r.agents))
	for _, a := range r.agents {
		if r.expired(a, now) || (path != "" && (!a.Serves(path) || slices.Contains(a.Inactive, path))) {
			continue
		}
		out = append(out, *a)
	}
	slices.SortFunc(out, func(x, y AgentInfo) int { return cmp.Compare(x.Identity, y.Identity) })
	return out
}

// serving reports whether id is a live agent serving path.
func (r *registry) serving(id, path string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.agents[id]
	return a != nil && !r.expired(a, now) && a.Serves(path)
}

// identities returns the known identities (for tests and diagnostics).
func (r *registry) identities() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.agents))
}

// pingInterval reads an agent's advertised interval, clamped to 100ms..24h
// so that a bogus value can neither overflow nor make the agent flap.
func pingInterval(ms int64) time.Duration {
	return time.Duration(min(max(ms, 100), 24*3600*1000)) * time.Millisecond
}
