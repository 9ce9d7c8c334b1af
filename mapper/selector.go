package mapper

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/warrenrpc/warren/wire"
)

// Selector picks the agents a request goes to, from the live agents that
// serve its path (sorted by identity, never empty). It returns a subset; an
// empty result means no agent fits. Selectors must be safe for concurrent
// use and must not keep the slice.
//
// The built-in selectors (LeastLoaded, Random, RoundRobin, All, Identity,
// and Tagged over one of them) do not need that slice: a mapper runs them
// over its registry's index by service, in place, without copying an agent
// it does not pick (see docs/scaling.md). A custom selector (a SelectorFunc,
// or Tagged over one) gets the slice, built for it at each call from the
// index, which keeps it in identity order: a copy of each live candidate,
// but no sort. Their Select methods still work on any slice, for custom
// selectors that delegate to them.
type Selector interface {
	Select(path string, candidates []AgentInfo) []AgentInfo
}

// indexed is a selector that picks from a registry's index in place. pick
// is called with the registry locked; it returns copies of the agents of ix
// that fit f that it picks.
type indexed interface {
	pick(path string, ix *pathIndex, f filter) []AgentInfo
}

// filter is what makes an indexed agent a candidate for a request: live,
// not among the agents to skip (they declined it), and carrying tags.
type filter struct {
	r    *registry
	now  time.Time
	skip map[string]bool
	tags []string
}

func (f *filter) fits(a *agent) bool {
	return !f.r.expired(a, f.now) && !f.skip[a.Identity] && a.HasTags(f.tags...)
}

// randomTries is how many random draws a pick makes before it counts the
// agents that fit: with expired or declining agents a draw may miss.
const randomTries = 8

// pick returns the agents sel picks among the live agents taking work for
// path, less those in skip; n is the number of those candidates, counted
// only when no agent is picked (or for a custom selector, which gets them).
// Built-in selectors pick under the registry lock; a custom one runs
// outside it, on a copy of the candidates (it may be slow, or read the
// mapper).
//
// The one agent least_loaded picks (the default) is appended to dst, which
// a caller may give room for it on its stack: no allocation.
func (r *registry) pick(path string, sel Selector, skip map[string]bool, now time.Time, dst []AgentInfo) (picked []AgentInfo, n int) {
	if s, ok := sel.(indexed); ok && inPlace(sel) {
		r.mu.Lock()
		defer r.mu.Unlock()
		ix := r.index[path]
		if ix == nil {
			return nil, 0
		}
		f := filter{r: r, now: now, skip: skip}
		if l, ok := sel.(leastLoaded); ok {
			picked = l.pickInto(ix, f, dst)
		} else {
			picked = s.pick(path, ix, f)
		}
		if len(picked) > 0 {
			return picked, 0
		}
		for _, a := range ix.byID {
			if f.fits(a) {
				n++
			}
		}
		return nil, n
	}
	buf := candidatePool.Get().(*[]AgentInfo)
	defer func() {
		clear(*buf) // keep no agent alive from the pool
		*buf = (*buf)[:0]
		candidatePool.Put(buf)
	}()
	r.mu.Lock()
	f := filter{r: r, now: now, skip: skip}
	ix := r.index[path]
	if ix == nil {
		r.mu.Unlock()
		return nil, 0
	}
	// Tagged over a custom selector: only the agents with the tags, from
	// the index of the rarest one (Tagged's Select filters them again).
	src, tags := ix, tagsOf(sel)
	for _, tag := range tags {
		sub := r.index[tagKey(path, tag)]
		if sub == nil {
			src = &pathIndex{}
			break
		}
		if len(sub.byID) < len(src.byID) {
			src = sub
		}
	}
	f.tags = tags
	for _, a := range src.byID {
		if f.fits(a) {
			*buf = append(*buf, a.AgentInfo)
		}
	}
	n = len(*buf)
	if len(tags) > 0 {
		f.tags, n = nil, 0
		for _, a := range ix.byID {
			if f.fits(a) {
				n++
			}
		}
	}
	r.mu.Unlock()
	if len(*buf) == 0 {
		return nil, n
	}
	// The selector must not keep the slice, but what it returns may be
	// part of it: copied out before the buffer is reused.
	return slices.Clone(sel.Select(path, *buf)), n
}

// tagsOf returns the tags a chain of Tagged requires.
func tagsOf(sel Selector) []string {
	var tags []string
	for {
		t, ok := sel.(tagged)
		if !ok {
			return tags
		}
		tags = append(tags, t.tags...)
		sel = t.next
	}
}

// inPlace reports whether sel picks from the index: a built-in selector,
// or Tagged over one.
func inPlace(sel Selector) bool {
	switch s := sel.(type) {
	case tagged:
		return inPlace(s.next)
	case indexed:
		return true
	}
	return false
}

// candidatePool holds the buffers of custom selectors' candidates: at
// 10,000 agents, 1.7 MB each that a new slice per request would have to
// allocate and zero.
var candidatePool = sync.Pool{New: func() any { return new([]AgentInfo) }}

// SelectorFunc adapts a function to a Selector.
type SelectorFunc func(path string, candidates []AgentInfo) []AgentInfo

// Select calls f.
func (f SelectorFunc) Select(path string, c []AgentInfo) []AgentInfo { return f(path, c) }

// LeastLoaded picks the agent with the smallest status (see CompareStatus);
// ties go to a random one of the least loaded, so equal agents share work.
// Over the index it finds the least loaded as the head of the agents kept
// sorted by status: O(log n).
func LeastLoaded() Selector { return leastLoaded{} }

type leastLoaded struct{}

func (leastLoaded) Select(_ string, c []AgentInfo) []AgentInfo {
	best := []AgentInfo{c[0]}
	for _, a := range c[1:] {
		switch d := CompareStatus(a.Status, best[0].Status); {
		case d < 0:
			best = append(best[:0], a)
		case d == 0:
			best = append(best, a)
		}
	}
	return []AgentInfo{best[rand.IntN(len(best))]}
}

func (l leastLoaded) pick(_ string, ix *pathIndex, f filter) []AgentInfo {
	return l.pickInto(ix, f, nil)
}

// pickInto appends the agent it picks to dst: registry.pick calls it
// directly (not through the indexed interface), so that a dst on its
// caller's stack stays there.
func (leastLoaded) pickInto(ix *pathIndex, f filter, dst []AgentInfo) []AgentInfo {
	lo, hi := ix.leastLoaded(f.fits)
	if lo < 0 {
		return dst
	}
	return append(dst, oneOf(ix.byLoad[lo:hi], f).AgentInfo)
}

// oneOf returns a random agent of s that fits f, uniformly; one must.
func oneOf(s []*agent, f filter) *agent {
	for range randomTries {
		if a := s[rand.IntN(len(s))]; f.fits(a) {
			return a
		}
	}
	n := 0
	for _, a := range s {
		if f.fits(a) {
			n++
		}
	}
	k := rand.IntN(max(n, 1))
	for _, a := range s {
		if f.fits(a) {
			if k == 0 {
				return a
			}
			k--
		}
	}
	return nil
}

// All picks every candidate: fan-out.
func All() Selector { return all{} }

type all struct{}

func (all) Select(_ string, c []AgentInfo) []AgentInfo { return c }

func (all) pick(_ string, ix *pathIndex, f filter) []AgentInfo {
	var out []AgentInfo
	for _, a := range ix.byID {
		if f.fits(a) {
			out = append(out, a.AgentInfo)
		}
	}
	return out
}

// Random picks one candidate uniformly.
func Random() Selector { return random{} }

type random struct{}

func (random) Select(_ string, c []AgentInfo) []AgentInfo {
	return []AgentInfo{c[rand.IntN(len(c))]}
}

func (random) pick(_ string, ix *pathIndex, f filter) []AgentInfo {
	if a := oneOf(ix.byID, f); a != nil {
		return []AgentInfo{a.AgentInfo}
	}
	return nil
}

// RoundRobin returns a selector that takes the candidates in turn, per path.
// Each call to RoundRobin has its own counters.
func RoundRobin() Selector { return &roundRobin{next: map[string]turn{}} }

type roundRobin struct {
	mu   sync.Mutex
	next map[string]turn // path → the agent served last
}

// turn is the agent a round robin served last, and where it was: a hint
// that saves the binary search while the index has not changed there.
type turn struct {
	id string
	at int
}

func (rr *roundRobin) Select(path string, c []AgentInfo) []AgentInfo {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	last := rr.next[path].id
	// The first identity after the last one served, in sorted order,
	// so agents joining or leaving do not reset the rotation.
	i, _ := slices.BinarySearchFunc(c, last, func(a AgentInfo, id string) int { return strings.Compare(a.Identity, id) })
	if i < len(c) && c[i].Identity == last {
		i++
	}
	if i >= len(c) {
		i = 0
	}
	rr.next[path] = turn{id: c[i].Identity, at: -1}
	return []AgentInfo{c[i]}
}

func (rr *roundRobin) pick(path string, ix *pathIndex, f filter) []AgentInfo {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	last := rr.next[path]
	var i int
	if last.at >= 0 && last.at < len(ix.byID) && ix.byID[last.at].Identity == last.id {
		i = last.at + 1
	} else {
		var found bool
		i, found = slices.BinarySearchFunc(ix.byID, last.id, byID)
		if found {
			i++
		}
	}
	for k := range len(ix.byID) {
		at := (i + k) % len(ix.byID)
		if a := ix.byID[at]; f.fits(a) {
			rr.next[path] = turn{id: a.Identity, at: at}
			return []AgentInfo{a.AgentInfo}
		}
	}
	return nil
}

// Identity picks the agent with this identity, if it serves the path.
func Identity(id string) Selector { return identity(id) }

// identity is a named type, so that Park can tell a call for one agent.
type identity string

func (id identity) Select(_ string, c []AgentInfo) []AgentInfo {
	for _, a := range c {
		if a.Identity == string(id) {
			return []AgentInfo{a}
		}
	}
	return nil
}

func (id identity) pick(_ string, ix *pathIndex, f filter) []AgentInfo {
	if i, ok := slices.BinarySearchFunc(ix.byID, string(id), byID); ok && f.fits(ix.byID[i]) {
		return []AgentInfo{ix.byID[i].AgentInfo}
	}
	return nil
}

// Tagged narrows candidates to those carrying every tag, then lets next
// pick among them (LeastLoaded when next is nil).
func Tagged(next Selector, tags ...string) Selector {
	if next == nil {
		next = LeastLoaded()
	}
	return tagged{next: next, tags: tags}
}

// tagged is a named type, so that Park can tell a call for some agents.
type tagged struct {
	next Selector
	tags []string
}

func (t tagged) Select(path string, c []AgentInfo) []AgentInfo {
	var keep []AgentInfo
	for _, a := range c {
		if a.HasTags(t.tags...) {
			keep = append(keep, a)
		}
	}
	if len(keep) == 0 {
		return nil
	}
	return t.next.Select(path, keep)
}

func (t tagged) pick(path string, ix *pathIndex, f filter) []AgentInfo {
	f.tags = append(slices.Clip(f.tags), t.tags...)
	// The fewest agents: those under the key of the rarest tag.
	for _, tag := range t.tags {
		sub := f.r.index[tagKey(path, tag)]
		if sub == nil {
			return nil // no agent has it
		}
		if len(sub.byID) < len(ix.byID) {
			ix = sub
		}
	}
	return t.next.(indexed).pick(path, ix, f) // inPlace(t)
}

// pinning reports whether s names its agent by identity, or else the tags
// it requires.
func pinning(s Selector) (byID bool, tags []string) {
	switch s := s.(type) {
	case identity:
		return true, nil
	case tagged:
		byID, more := pinning(s.next)
		if byID {
			return true, nil
		}
		return false, append(slices.Clone(s.tags), more...)
	}
	return false, nil
}

// targeted reports whether s names its agents by identity or tags, rather
// than choosing among whichever agents serve the path.
func targeted(s Selector) bool {
	switch s.(type) {
	case identity, tagged:
		return true
	}
	return false
}

// ParseSelector returns the selector a name stands for: least_loaded, all,
// random, round_robin, or agent:IDENTITY. The CLI and config files use it.
func ParseSelector(name string) (Selector, error) {
	switch {
	case name == "" || name == "least_loaded":
		return LeastLoaded(), nil
	case name == "all":
		return All(), nil
	case name == "random":
		return Random(), nil
	case name == "round_robin" || name == "rr":
		return RoundRobin(), nil
	case strings.HasPrefix(name, "agent:") && len(name) > len("agent:"):
		id := strings.TrimPrefix(name, "agent:")
		if err := wire.CheckIdentity(id); err != nil {
			return nil, fmt.Errorf("mapper: selector agent:IDENTITY: %w", err)
		}
		return Identity(id), nil
	}
	return nil, fmt.Errorf("mapper: unknown selector %q (want least_loaded, all, random, round_robin or agent:IDENTITY)", name)
}
