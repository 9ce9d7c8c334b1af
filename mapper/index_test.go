package mapper

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/wire"
)

// model is the brute-force reference of the registry: the agents by
// identity, nothing else, read by scanning and sorting them all.
type model map[string]AgentInfo

func (m model) candidates(path string, now time.Time, skip map[string]bool) []AgentInfo {
	var out []AgentInfo
	for _, a := range m {
		if now.Sub(a.LastSeen) > 3*a.PingInterval || !a.Serves(path) || slices.Contains(a.Inactive, path) || skip[a.Identity] {
			continue
		}
		out = append(out, a)
	}
	slices.SortFunc(out, func(x, y AgentInfo) int { return cmp.Compare(x.Identity, y.Identity) })
	return out
}

func subset(rng *rand.Rand, from []string) []string {
	var out []string
	for _, s := range from {
		if rng.IntN(2) == 0 {
			out = append(out, s)
		}
	}
	return out
}

var (
	propPaths    = []string{"/a/x", "/a/y", "/b/x", "/b/z"}
	propTags     = []string{"gpu", "eu", "big"}
	propStatuses = []any{0.0, 1.0, 1.0, 2.0, -1.0, "a", "b", nil, true, map[string]any{"q": 1.0}}
)

// checkIndex verifies the index against the model: each path holds
// exactly the agents serving it and not inactive for it, in both orders.
func checkIndex(t *testing.T, r *registry, m model) {
	t.Helper()
	want := map[string][]string{}
	for id, a := range m {
		for _, p := range takesWork(a) {
			want[p] = append(want[p], id)
			for _, tag := range slices.Compact(slices.Sorted(slices.Values(a.Tags))) {
				want[tagKey(p, tag)] = append(want[tagKey(p, tag)], id)
			}
		}
	}
	if len(r.index) != len(want) {
		t.Fatalf("index has %d paths, want %d", len(r.index), len(want))
	}
	for p, ix := range r.index {
		w := slices.Sorted(slices.Values(want[p]))
		var got []string
		for _, a := range ix.byID {
			got = append(got, a.Identity)
		}
		if !slices.Equal(got, w) {
			t.Fatalf("%s byID %v, want %v", p, got, w)
		}
		if !slices.IsSortedFunc(ix.byLoad, byLoad) || len(ix.byLoad) != len(w) {
			t.Fatalf("%s byLoad not sorted or wrong size", p)
		}
		for _, a := range ix.byLoad {
			if a != r.agents[a.Identity] || a.load != keyOf(a.Status) {
				t.Fatalf("%s byLoad holds a stale entry for %s", p, a.Identity)
			}
			if _, ok := slices.BinarySearch(w, a.Identity); !ok {
				t.Fatalf("%s byLoad holds %s", p, a.Identity)
			}
		}
	}
}

// TestIndexAgreesWithBruteForce applies random heartbeats (joins, status,
// services, tags and inactive changes), unregisters, drops, expiries and
// sweeps, and after each checks the index and every selector against the
// brute-force reference.
func TestIndexAgreesWithBruteForce(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { propertyRun(t, seed) })
	}
}

func propertyRun(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 14))
	r := newRegistry(func(a AgentInfo) time.Duration { return 3 * a.PingInterval })
	m := model{}
	now := time.Unix(1e9, 0)
	rrIndex, rrSlice := RoundRobin(), RoundRobin()
	trrIndex, trrSlice := Tagged(RoundRobin(), "eu"), Tagged(RoundRobin(), "eu")
	for step := range 400 {
		id := fmt.Sprintf("agent-%02d", rng.IntN(25))
		switch op := rng.IntN(10); {
		case op < 6: // heartbeat
			hb := wire.Heartbeat{
				Identity:     id,
				Queue:        wire.AgentQueue(id),
				Services:     subset(rng, propPaths),
				Tags:         subset(rng, propTags),
				Status:       propStatuses[rng.IntN(len(propStatuses))],
				PingInterval: []int64{100, 1000}[rng.IntN(2)],
				Inactive:     subset(rng, subset(rng, propPaths)),
			}
			if rng.IntN(8) == 0 { // a duplicated service
				hb.Services = append(hb.Services, propPaths[0])
			}
			r.update(wire.TypePing, hb, now)
			m[id] = AgentInfo{Identity: id, Services: slices.Sorted(slices.Values(hb.Services)), Tags: hb.Tags, Status: hb.Status,
				PingInterval: pingInterval(hb.PingInterval), LastSeen: now, Inactive: hb.Inactive}
		case op == 6:
			r.update(wire.TypeUnregister, wire.Heartbeat{Identity: id}, now)
			delete(m, id)
		case op == 7:
			r.drop(id, AgentLost)
			delete(m, id)
		case op == 8:
			now = now.Add(time.Duration(rng.IntN(1500)) * time.Millisecond)
		default:
			r.sweep(now)
			for id, a := range m {
				if now.Sub(a.LastSeen) > 3*a.PingInterval {
					delete(m, id)
				}
			}
		}
		checkIndex(t, r, m)
		var everyone []AgentInfo
		for _, a := range m {
			if now.Sub(a.LastSeen) <= 3*a.PingInterval {
				everyone = append(everyone, a)
			}
		}
		slices.SortFunc(everyone, func(x, y AgentInfo) int { return cmp.Compare(x.Identity, y.Identity) })
		if got, want := ids(r.live("", now)), ids(everyone); !slices.Equal(got, want) {
			t.Fatalf("step %d: live(\"\") = %v, want %v", step, got, want)
		}
		for _, path := range propPaths {
			if got, want := ids(r.live(path, now)), ids(m.candidates(path, now, nil)); !slices.Equal(got, want) {
				t.Fatalf("step %d: live(%s) = %v, want %v", step, path, got, want)
			}
			skip := map[string]bool{}
			for range rng.IntN(3) {
				skip[fmt.Sprintf("agent-%02d", rng.IntN(25))] = true
			}
			checkSelectors(t, r, m, path, now, skip, rng, [4]Selector{rrIndex, rrSlice, trrIndex, trrSlice})
		}
	}
}

func checkSelectors(t *testing.T, r *registry, m model, path string, now time.Time, skip map[string]bool, rng *rand.Rand, rr [4]Selector) {
	t.Helper()
	cands := m.candidates(path, now, skip)
	tag := propTags[rng.IntN(len(propTags))]
	var tagCands []AgentInfo
	for _, a := range cands {
		if a.HasTags(tag) {
			tagCands = append(tagCands, a)
		}
	}
	least := func(c []AgentInfo) []string {
		var out []string
		for _, a := range c {
			if len(out) > 0 && CompareStatus(a.Status, m[out[0]].Status) > 0 {
				continue
			}
			if len(out) > 0 && CompareStatus(a.Status, m[out[0]].Status) < 0 {
				out = out[:0]
			}
			out = append(out, a.Identity)
		}
		return out
	}
	one := func(name string, sel Selector, ok func([]AgentInfo) bool, c []AgentInfo) {
		t.Helper()
		got, n := r.pick(path, sel, skip, now, nil)
		if len(got) == 0 && n != len(cands) {
			t.Fatalf("%s %s: counted %d candidates, want %d", name, path, n, len(cands))
		}
		if len(c) == 0 {
			if len(got) != 0 {
				t.Fatalf("%s %s: picked %v of no candidate", name, path, ids(got))
			}
			return
		}
		if !ok(got) {
			t.Fatalf("%s %s: picked %v of %v", name, path, ids(got), ids(c))
		}
	}
	in := func(set []string) func([]AgentInfo) bool {
		return func(g []AgentInfo) bool { return len(g) == 1 && slices.Contains(set, g[0].Identity) }
	}
	one("least_loaded", LeastLoaded(), in(least(cands)), cands)
	one("tagged least_loaded", Tagged(nil, tag), in(least(tagCands)), tagCands)
	one("random", Random(), in(ids(cands)), cands)
	var both []AgentInfo
	for _, a := range cands {
		if a.HasTags("eu", "gpu") {
			both = append(both, a)
		}
	}
	one("tagged random, two tags", Tagged(Random(), "eu", "gpu"), in(ids(both)), both)
	one("tagged tagged least_loaded", Tagged(Tagged(nil, "gpu"), "eu"), in(least(both)), both)
	one("all", All(), func(g []AgentInfo) bool { return slices.Equal(ids(g), ids(cands)) }, cands)
	var seen []AgentInfo
	custom := SelectorFunc(func(_ string, c []AgentInfo) []AgentInfo { seen = slices.Clone(c); return c[:1] })
	one("custom", custom, func(g []AgentInfo) bool {
		return slices.EqualFunc(seen, cands, func(x, y AgentInfo) bool {
			return x.Identity == y.Identity && x.LastSeen.Equal(y.LastSeen) && slices.Equal(x.Tags, y.Tags)
		})
	}, cands)
	seen = nil
	one("tagged custom", Tagged(custom, tag), func(g []AgentInfo) bool {
		return slices.Equal(ids(seen), ids(tagCands)) && len(g) == 1 && g[0].Identity == tagCands[0].Identity
	}, tagCands)
	if len(cands) > 0 {
		id := cands[rng.IntN(len(cands))].Identity
		one("identity", Identity(id), in([]string{id}), cands)
	}
	gone := fmt.Sprintf("agent-%02d", rng.IntN(25))
	if got, _ := r.pick(path, Identity(gone), skip, now, nil); len(got) > 0 && !slices.Contains(ids(cands), gone) {
		t.Fatalf("identity %s picked, not a candidate", gone)
	}
	// Round robin over the index takes the same turns as over the slice.
	for i := 0; i < 4; i += 2 {
		c := cands
		if i == 2 {
			c = m.candidates(path, now, skip) // Tagged filters it itself
		}
		got, _ := r.pick(path, rr[i], skip, now, nil)
		var want []AgentInfo
		if len(c) > 0 {
			want = rr[i+1].Select(path, c)
		}
		if !slices.Equal(ids(got), ids(want)) {
			t.Fatalf("round robin %d %s: index picked %v, slice %v", i, path, ids(got), ids(want))
		}
	}
}

// TestIndexedLeastLoadedSharesTies: over the index too, equal agents share
// the work, and agents skipped or expired among them get none.
func TestIndexedLeastLoadedSharesTies(t *testing.T) {
	r := newRegistry(func(a AgentInfo) time.Duration { return 3 * a.PingInterval })
	now := time.Now()
	for i := range 10 {
		st := 1.0
		if i >= 6 {
			st = 2
		}
		r.update(wire.TypePing, wire.Heartbeat{Identity: fmt.Sprintf("a%d", i), Services: []string{"/s/p"}, Status: st, PingInterval: 1000}, now)
	}
	// a0 expires; a1 is skipped.
	r.update(wire.TypePing, wire.Heartbeat{Identity: "a0", Services: []string{"/s/p"}, Status: 1.0, PingInterval: 100}, now.Add(-time.Second))
	seen := map[string]int{}
	for range 400 {
		got, _ := r.pick("/s/p", LeastLoaded(), map[string]bool{"a1": true}, now, nil)
		seen[got[0].Identity]++
	}
	if len(seen) != 4 || seen["a2"] == 0 || seen["a3"] == 0 || seen["a4"] == 0 || seen["a5"] == 0 {
		t.Fatalf("picked %v, want a2..a5 all", seen)
	}
	// A status change moves an agent: a7 becomes the least loaded.
	r.update(wire.TypePing, wire.Heartbeat{Identity: "a7", Services: []string{"/s/p"}, Status: 0.5, PingInterval: 1000}, now)
	if got, _ := r.pick("/s/p", LeastLoaded(), nil, now, nil); got[0].Identity != "a7" {
		t.Fatalf("picked %s, want a7", got[0].Identity)
	}
	// Inactive for the path: not picked, still known.
	r.update(wire.TypePing, wire.Heartbeat{Identity: "a7", Services: []string{"/s/p"}, Inactive: []string{"/s/p"}, Status: 0.5, PingInterval: 1000}, now)
	if got, _ := r.pick("/s/p", Identity("a7"), nil, now, nil); len(got) != 0 {
		t.Fatalf("inactive a7 picked")
	}
	if !slices.Contains(r.identities(), "a7") {
		t.Fatalf("inactive a7 forgotten")
	}
}

func TestLoadKeyOrdersAsCompareStatus(t *testing.T) {
	vals := []any{nil, true, false, 0.0, -1.0, 2.5, "a", "", "b", map[string]any{"x": 1.0}, []any{1.0}, 3, int64(-4)}
	for _, x := range vals {
		for _, y := range vals {
			if got, want := keyOf(x).compare(keyOf(y)), CompareStatus(x, y); got != want {
				t.Errorf("%v vs %v: key %d, CompareStatus %d", x, y, got, want)
			}
		}
	}
}

func TestRegistryPickSkipsAndCounts(t *testing.T) {
	r := newRegistry(func(a AgentInfo) time.Duration { return 3 * a.PingInterval })
	now := time.Now()
	for _, id := range []string{"a", "b", "c"} {
		r.update(wire.TypePing, wire.Heartbeat{Identity: id, Services: []string{"/s/p"}, Status: 0.0, PingInterval: 1000, Tags: []string{strings.ToUpper(id)}}, now)
	}
	if got, n := r.pick("/s/p", Tagged(nil, "Z"), nil, now, nil); len(got) != 0 || n != 3 {
		t.Fatalf("tag Z: %v, %d candidates; want none of 3", ids(got), n)
	}
	if got, n := r.pick("/s/p", LeastLoaded(), map[string]bool{"a": true, "b": true, "c": true}, now, nil); len(got) != 0 || n != 0 {
		t.Fatalf("all skipped: %v, %d candidates", ids(got), n)
	}
	if got, _ := r.pick("/s/none", LeastLoaded(), nil, now, nil); len(got) != 0 {
		t.Fatalf("unknown path: %v", ids(got))
	}
	// A custom selector runs outside the registry lock: it may read the
	// registry (as one reading Mapper.Agents does), alone or under Tagged.
	reads := SelectorFunc(func(_ string, c []AgentInfo) []AgentInfo {
		if len(r.identities()) != 3 {
			return nil
		}
		return c[len(c)-1:]
	})
	if got, n := r.pick("/s/p", reads, nil, now, nil); len(got) != 1 || got[0].Identity != "c" || n != 3 {
		t.Fatalf("custom: %v of %d", ids(got), n)
	}
	if got, _ := r.pick("/s/p", Tagged(reads, "B"), nil, now, nil); len(got) != 1 || got[0].Identity != "b" {
		t.Fatalf("tagged custom: %v", ids(got))
	}
}
