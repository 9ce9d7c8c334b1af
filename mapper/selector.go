package mapper

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"

	"github.com/warrenrpc/warren/wire"
)

// Selector picks the agents a request goes to, from the live agents that
// serve its path (sorted by identity, never empty). It returns a subset; an
// empty result means no agent fits. Selectors must be safe for concurrent
// use and must not keep the slice.
type Selector interface {
	Select(path string, candidates []AgentInfo) []AgentInfo
}

// SelectorFunc adapts a function to a Selector.
type SelectorFunc func(path string, candidates []AgentInfo) []AgentInfo

// Select calls f.
func (f SelectorFunc) Select(path string, c []AgentInfo) []AgentInfo { return f(path, c) }

// LeastLoaded picks the agent with the smallest status (see CompareStatus);
// ties go to a random one of the least loaded, so equal agents share work.
func LeastLoaded() Selector {
	return SelectorFunc(func(_ string, c []AgentInfo) []AgentInfo {
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
	})
}

// All picks every candidate: fan-out.
func All() Selector {
	return SelectorFunc(func(_ string, c []AgentInfo) []AgentInfo { return c })
}

// Random picks one candidate uniformly.
func Random() Selector {
	return SelectorFunc(func(_ string, c []AgentInfo) []AgentInfo {
		return []AgentInfo{c[rand.IntN(len(c))]}
	})
}

// RoundRobin returns a selector that takes the candidates in turn, per path.
// Each call to RoundRobin has its own counters.
func RoundRobin() Selector {
	var mu sync.Mutex
	next := map[string]string{} // path → identity served last
	return SelectorFunc(func(path string, c []AgentInfo) []AgentInfo {
		mu.Lock()
		defer mu.Unlock()
		last := next[path]
		// The first identity after the last one served, in sorted order,
		// so agents joining or leaving do not reset the rotation.
		i, _ := slices.BinarySearchFunc(c, last, func(a AgentInfo, id string) int { return strings.Compare(a.Identity, id) })
		if i < len(c) && c[i].Identity == last {
			i++
		}
		if i >= len(c) {
			i = 0
		}
		next[path] = c[i].Identity
		return []AgentInfo{c[i]}
	})
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
