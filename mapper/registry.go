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
	// InFlight and Handled are the agent's counts of requests and pushes
	// in hand and handled since it started, as of its latest heartbeat;
	// -1 when it does not report them (an agent outside Warren may not).
	InFlight, Handled int64
	// QueueType is the type of the agent's own queue as its heartbeat
	// reports it (wire.QueueClassic, wire.QueueQuorum), "" when it does
	// not. Requests to an agent whose queue is classic are published
	// without a publisher confirm (see Mapper.Request).
	QueueType string
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
//
// Besides the agents by identity it keeps an index by service (see
// pathIndex), updated by heartbeats, so that a request's selection reads the
// agents serving its path in place instead of copying and sorting them all.
type registry struct {
	timeout func(AgentInfo) time.Duration

	mu     sync.Mutex
	agents map[string]*agent
	all    []*agent              // every agent, sorted by identity (for live(""): Agents)
	index  map[string]*pathIndex // service path, or tagKey → the agents taking work for it
}

// agent is a registry entry: the latest AgentInfo and what the index needs.
// Its AgentInfo is replaced as a whole by each heartbeat, never mutated in
// place, so copies handed out stay valid.
type agent struct {
	AgentInfo
	load    loadKey
	keys    []string      // the index keys it is under (see indexKeys), sorted
	timeout time.Duration // the registry's timeout of this agent
}

func newRegistry(timeout func(AgentInfo) time.Duration) *registry {
	return &registry{timeout: timeout, agents: map[string]*agent{}, index: map[string]*pathIndex{}}
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
		InFlight:     count(hb.InFlight),
		Handled:      count(hb.Handled),
		QueueType:    hb.QueueType,
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old, known := r.agents[hb.Identity]
	if typ == wire.TypeUnregister {
		if !known {
			return nil
		}
		r.remove(old)
		return []Event{{Kind: AgentLeft, Agent: old.AgentInfo}}
	}
	if !known {
		a := &agent{AgentInfo: info, load: keyOf(info.Status), keys: indexKeys(info), timeout: r.timeout(info)}
		r.agents[a.Identity] = a
		i, _ := slices.BinarySearchFunc(r.all, a.Identity, byID)
		r.all = slices.Insert(r.all, i, a)
		for _, k := range a.keys {
			r.path(k).add(a)
		}
		return []Event{{Kind: AgentJoined, Agent: info}}
	}
	rejoined := r.expired(old, now)
	r.change(old, info)
	if rejoined {
		return []Event{{Kind: AgentJoined, Agent: info}}
	}
	return nil
}

// change replaces a's AgentInfo with info, and moves it in the index as
// its services, inactive services, tags and status require.
func (r *registry) change(a *agent, info AgentInfo) {
	keys := a.keys
	if !slices.Equal(a.Services, info.Services) || !slices.Equal(a.Inactive, info.Inactive) || !slices.Equal(a.Tags, info.Tags) {
		keys = indexKeys(info)
	}
	load := a.load
	if !sameStatus(a.Status, info.Status) {
		load = keyOf(info.Status)
	}
	// Out of the keys it leaves, with its old load.
	for _, k := range a.keys {
		if _, ok := slices.BinarySearch(keys, k); !ok {
			r.index[k].remove(a)
			r.prune(k)
		}
	}
	// Moved within the keys it stays under, when its load changed.
	if load.compare(a.load) != 0 {
		for _, k := range a.keys {
			if _, ok := slices.BinarySearch(keys, k); ok {
				r.index[k].reload(a, load)
			}
		}
	}
	a.AgentInfo = info
	a.load = load
	a.timeout = r.timeout(info)
	// Under the keys it joins, with its new load.
	for _, k := range keys {
		if _, ok := slices.BinarySearch(a.keys, k); !ok {
			r.path(k).add(a)
		}
	}
	a.keys = keys
}

// takesWork returns the sorted paths a serves and does not list inactive.
func takesWork(a AgentInfo) []string {
	var out []string
	for i, p := range a.Services { // sorted
		if (i == 0 || p != a.Services[i-1]) && !slices.Contains(a.Inactive, p) {
			out = append(out, p)
		}
	}
	return out
}

// indexKeys returns the sorted keys of the index that a is under: each
// path it takes work for, and that path with each of its tags (tagKey), so
// that Tagged finds the agents with a tag without walking past the others.
func indexKeys(a AgentInfo) []string {
	paths := takesWork(a)
	out := slices.Clone(paths)
	for _, p := range paths {
		for _, t := range a.Tags {
			out = append(out, tagKey(p, t))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// tagKey is the index key of the agents taking work for path that carry
// tag. A path holds no NUL byte, so no key of one path is another's.
func tagKey(path, tag string) string { return path + "\x00" + tag }

// sameStatus reports whether two statuses are the same value, cheaply for
// the usual numbers and strings (false means "maybe not").
func sameStatus(x, y any) bool {
	switch x := x.(type) {
	case float64:
		y, ok := y.(float64)
		return ok && x == y
	case string:
		y, ok := y.(string)
		return ok && x == y
	case nil:
		return y == nil
	}
	return false
}

// path returns the index of p, creating it.
func (r *registry) path(p string) *pathIndex {
	ix := r.index[p]
	if ix == nil {
		ix = &pathIndex{}
		r.index[p] = ix
	}
	return ix
}

// prune forgets the index of p when no agent is left in it.
func (r *registry) prune(p string) {
	if ix := r.index[p]; ix != nil && len(ix.byID) == 0 {
		delete(r.index, p)
	}
}

// remove takes a out of the registry and the index.
func (r *registry) remove(a *agent) {
	delete(r.agents, a.Identity)
	if i, ok := slices.BinarySearchFunc(r.all, a.Identity, byID); ok {
		r.all = slices.Delete(r.all, i, i+1)
	}
	for _, k := range a.keys {
		r.index[k].remove(a)
		r.prune(k)
	}
}

func (r *registry) expired(a *agent, now time.Time) bool {
	return now.Sub(a.LastSeen) > a.timeout
}

// drop removes the agent id, if known, with an event of kind.
func (r *registry) drop(id string, kind EventKind) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	a, ok := r.agents[id]
	if !ok {
		return nil
	}
	r.remove(a)
	return []Event{{Kind: kind, Agent: a.AgentInfo}}
}

// sweep removes expired agents and returns their events.
func (r *registry) sweep(now time.Time) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var evs []Event
	for _, a := range r.agents {
		if r.expired(a, now) {
			r.remove(a)
			evs = append(evs, Event{Kind: AgentExpired, Agent: a.AgentInfo})
		}
	}
	return evs
}

// live returns copies of the live agents, sorted by identity, that serve
// path (every agent when path is ""), less those inactive for path. It
// reads the index, already in identity order: no sort.
func (r *registry) live(path string, now time.Time) []AgentInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	if path != "" {
		return r.collect(path, now, nil)
	}
	out := make([]AgentInfo, 0, len(r.all))
	for _, a := range r.all {
		if !r.expired(a, now) {
			out = append(out, a.AgentInfo)
		}
	}
	return out
}

// collect returns copies of the live agents taking work for path that fit
// ok (any when ok is nil), in identity order. The caller holds r.mu.
func (r *registry) collect(path string, now time.Time, ok func(*agent) bool) []AgentInfo {
	ix := r.index[path]
	if ix == nil {
		return nil
	}
	out := make([]AgentInfo, 0, len(ix.byID))
	for _, a := range ix.byID {
		if !r.expired(a, now) && (ok == nil || ok(a)) {
			out = append(out, a.AgentInfo)
		}
	}
	return out
}

// has reports whether a live agent takes work for path.
func (r *registry) has(path string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ix := r.index[path]; ix != nil {
		for _, a := range ix.byID {
			if !r.expired(a, now) {
				return true
			}
		}
	}
	return false
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

// count is a heartbeat's optional count, or -1 when absent.
func count(n *int64) int64 {
	if n == nil {
		return -1
	}
	return *n
}
