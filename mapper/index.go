package mapper

import (
	"cmp"
	"encoding/json"
	"slices"
	"strings"
)

// pathIndex holds the agents taking work for one service path (serving it,
// not inactive for it), twice sorted: by identity, for round robin, random
// picks and the candidates of custom selectors; and by load (status, then
// identity), for least_loaded, whose least loaded agents are then a prefix.
// Both hold the registry's *agent, so a heartbeat that changes nothing the
// index orders by costs nothing here; one that changes the status moves
// the agent in byLoad by as many places as its rank changed. Joins and
// leaves cost a binary search and a copy of the pointers after the place
// (at 10,000 agents, microseconds). Expired agents stay until the sweep:
// readers skip them.
type pathIndex struct {
	byID   []*agent
	byLoad []*agent
	// headEnd caches where the first load group of byLoad ends (0 when
	// unknown): requests outnumber the pings that move agents.
	headEnd int
}

func byID(a *agent, id string) int { return strings.Compare(a.Identity, id) }

func byLoad(a, b *agent) int {
	if d := a.load.compare(b.load); d != 0 {
		return d
	}
	return strings.Compare(a.Identity, b.Identity)
}

func (ix *pathIndex) add(a *agent) {
	ix.headEnd = 0
	i, _ := slices.BinarySearchFunc(ix.byID, a.Identity, byID)
	ix.byID = slices.Insert(ix.byID, i, a)
	j, _ := slices.BinarySearchFunc(ix.byLoad, a, byLoad)
	ix.byLoad = slices.Insert(ix.byLoad, j, a)
}

// remove takes a out; a.load must be the load it was added or reloaded with.
func (ix *pathIndex) remove(a *agent) {
	ix.headEnd = 0
	if i, ok := slices.BinarySearchFunc(ix.byID, a.Identity, byID); ok {
		ix.byID = slices.Delete(ix.byID, i, i+1)
	}
	if j, ok := slices.BinarySearchFunc(ix.byLoad, a, byLoad); ok {
		ix.byLoad = slices.Delete(ix.byLoad, j, j+1)
	}
	// Let the arrays' tails not keep removed agents alive.
	clear(ix.byID[len(ix.byID):cap(ix.byID)])
	clear(ix.byLoad[len(ix.byLoad):cap(ix.byLoad)])
}

// reload moves a, whose load is still its old one, to its place for load.
// The caller sets a.load to load afterwards.
func (ix *pathIndex) reload(a *agent, load loadKey) {
	i, ok := slices.BinarySearchFunc(ix.byLoad, a, byLoad)
	if !ok {
		return
	}
	ix.headEnd = 0
	moved := &agent{AgentInfo: AgentInfo{Identity: a.Identity}, load: load}
	j, _ := slices.BinarySearchFunc(ix.byLoad, moved, byLoad) // a itself still at i
	s := ix.byLoad
	switch {
	case j > i: // later: shift (i, j) down one; a goes at j-1
		copy(s[i:j-1], s[i+1:j])
		s[j-1] = a
	case j < i: // earlier: shift [j, i) up one; a goes at j
		copy(s[j+1:i+1], s[j:i])
		s[j] = a
	}
}

// leastLoaded returns the range [lo, hi) of byLoad holding the agents with
// the least load among those that fit ok, with lo the first that fits; lo
// is -1 when none fits.
func (ix *pathIndex) leastLoaded(ok func(*agent) bool) (lo, hi int) {
	lo = slices.IndexFunc(ix.byLoad, ok)
	if lo < 0 {
		return -1, -1
	}
	if lo == 0 && ix.headEnd > 0 {
		return 0, ix.headEnd
	}
	defer func() {
		if lo == 0 {
			ix.headEnd = hi
		}
	}()
	first := ix.byLoad[lo].load
	rest := ix.byLoad[lo:]
	n, _ := slices.BinarySearchFunc(rest, first, func(a *agent, k loadKey) int {
		if a.load.compare(k) <= 0 {
			return -1
		}
		return 1
	})
	return lo, lo + n
}

// loadKey is a status reduced to what CompareStatus orders it by, computed
// once per change of status rather than at each comparison.
type loadKey struct {
	class int // 0 number, 1 string, 2 anything else (by its JSON text)
	num   float64
	text  string
}

func keyOf(status any) loadKey {
	if n, ok := number(status); ok {
		return loadKey{class: 0, num: n}
	}
	if s, ok := status.(string); ok {
		return loadKey{class: 1, text: s}
	}
	b, _ := json.Marshal(status)
	return loadKey{class: 2, text: string(b)}
}

// compare orders keys as CompareStatus orders their statuses.
func (k loadKey) compare(o loadKey) int {
	if d := cmp.Compare(k.class, o.class); d != 0 {
		return d
	}
	if k.class == 0 {
		return cmp.Compare(k.num, o.num)
	}
	return strings.Compare(k.text, o.text)
}
