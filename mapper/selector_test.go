package mapper

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

func agents(statuses map[string]any) []AgentInfo {
	var out []AgentInfo
	for id, s := range statuses {
		out = append(out, AgentInfo{Identity: id, Status: s, Services: []string{"/a/b"}})
	}
	slices.SortFunc(out, func(x, y AgentInfo) int { return strings.Compare(x.Identity, y.Identity) })
	return out
}

func ids(as []AgentInfo) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.Identity)
	}
	return out
}

func TestLeastLoaded(t *testing.T) {
	tests := []struct {
		name     string
		statuses map[string]any
		want     []string // any of these
	}{
		{"numbers", map[string]any{"fred": 0.9, "bob": 0.1, "joe": 0.5}, []string{"bob"}},
		{"numbers before strings", map[string]any{"fred": "a", "bob": 3.0}, []string{"bob"}},
		{"strings", map[string]any{"fred": "b", "bob": "c"}, []string{"fred"}},
		{"tie", map[string]any{"fred": 1.0, "bob": 1.0, "joe": 2.0}, []string{"bob", "fred"}},
		{"nil status last after numbers", map[string]any{"fred": nil, "bob": 5.0}, []string{"bob"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			seen := map[string]bool{}
			for range 200 {
				got := LeastLoaded().Select("/a/b", agents(tc.statuses))
				if len(got) != 1 || !slices.Contains(tc.want, got[0].Identity) {
					t.Fatalf("got %v, want one of %v", ids(got), tc.want)
				}
				seen[got[0].Identity] = true
			}
			if len(seen) != len(tc.want) {
				t.Errorf("ties not shared: saw %v of %v", seen, tc.want)
			}
		})
	}
}

func TestRoundRobinTakesTurnsAndSurvivesChanges(t *testing.T) {
	rr := RoundRobin()
	c := agents(map[string]any{"a": 0.0, "b": 0.0, "c": 0.0})
	var got []string
	for range 6 {
		got = append(got, rr.Select("/a/b", c)[0].Identity)
	}
	if want := []string{"a", "b", "c", "a", "b", "c"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	// b leaves after a was served last time round: next is c.
	rr.Select("/a/b", c) // a
	c2 := agents(map[string]any{"a": 0.0, "c": 0.0})
	if g := rr.Select("/a/b", c2)[0].Identity; g != "c" {
		t.Fatalf("after b left got %s, want c", g)
	}
	// Other paths have their own turn.
	if g := rr.Select("/x/y", c)[0].Identity; g != "a" {
		t.Fatalf("new path got %s, want a", g)
	}
}

func TestIdentityTaggedAllRandom(t *testing.T) {
	c := agents(map[string]any{"a": 0.0, "b": 1.0})
	c[1].Tags = []string{"gpu", "eu"}
	if got := ids(Identity("b").Select("", c)); !slices.Equal(got, []string{"b"}) {
		t.Errorf("Identity(b) = %v", got)
	}
	if got := Identity("zed").Select("", c); len(got) != 0 {
		t.Errorf("Identity(zed) = %v, want none", ids(got))
	}
	if got := ids(Tagged(nil, "gpu").Select("", c)); !slices.Equal(got, []string{"b"}) {
		t.Errorf("Tagged(gpu) = %v", got)
	}
	if got := Tagged(nil, "gpu", "us").Select("", c); len(got) != 0 {
		t.Errorf("Tagged(gpu,us) = %v, want none", ids(got))
	}
	if got := ids(All().Select("", c)); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("All = %v", got)
	}
	seen := map[string]bool{}
	for range 100 {
		seen[Random().Select("", c)[0].Identity] = true
	}
	if len(seen) != 2 {
		t.Errorf("Random picked only %v in 100 draws", seen)
	}
}

func TestParseSelector(t *testing.T) {
	for _, name := range []string{"", "least_loaded", "all", "random", "round_robin", "agent:fred"} {
		if _, err := ParseSelector(name); err != nil {
			t.Errorf("ParseSelector(%q): %v", name, err)
		}
	}
	for _, name := range []string{"agent:", "fastest", "ALL", "agent:a b", "agent:a\x00b", "agent:\x1b[2J", "agent:\xff"} {
		if _, err := ParseSelector(name); err == nil {
			t.Errorf("ParseSelector(%q) accepted", name)
		}
	}
}

func TestRegistryExpiryAndReturn(t *testing.T) {
	r := newRegistry(func(a AgentInfo) time.Duration { return 3 * a.PingInterval })
	t0 := time.Unix(1000, 0)
	hb := wire.Heartbeat{Identity: "fred", Services: []string{"/s/e"}, PingInterval: 100, Status: 0.5}
	if ev := r.update(wire.TypeRegister, hb, t0); len(ev) != 1 || ev[0].Kind != AgentJoined {
		t.Fatalf("register events = %v", ev)
	}
	if ev := r.update(wire.TypePing, hb, t0.Add(100*time.Millisecond)); len(ev) != 0 {
		t.Fatalf("ping of a live agent gave events %v", ev)
	}
	if got := r.live("/s/e", t0.Add(350*time.Millisecond)); len(got) != 1 {
		t.Fatalf("live within timeout = %v", got)
	}
	if got := r.live("/s/x", t0); len(got) != 0 {
		t.Fatalf("agent listed for a path it does not serve")
	}
	late := t0.Add(500 * time.Millisecond)
	if got := r.live("/s/e", late); len(got) != 0 {
		t.Fatalf("expired agent still live")
	}
	if ev := r.sweep(late); len(ev) != 1 || ev[0].Kind != AgentExpired {
		t.Fatalf("sweep events = %v", ev)
	}
	if ev := r.update(wire.TypePing, hb, late.Add(time.Second)); len(ev) != 1 || ev[0].Kind != AgentJoined {
		t.Fatalf("returning agent events = %v", ev)
	}
	if ev := r.update(wire.TypeUnregister, hb, late.Add(time.Second)); len(ev) != 1 || ev[0].Kind != AgentLeft {
		t.Fatalf("unregister events = %v", ev)
	}
	if got := r.identities(); len(got) != 0 {
		t.Fatalf("registry after unregister = %v", got)
	}
}

func TestNewRefusesABadIdentity(t *testing.T) {
	tr := mem.NewBroker().Connect()
	defer tr.Close()
	for _, id := range []string{"a b", "a/b", "a\x1b[2Jb", "a\xffb"} {
		if _, err := New(tr, Config{Identity: id}); !errors.Is(err, wire.ErrInvalidIdentity) {
			t.Errorf("identity %q: err = %v", id, err)
		}
	}
}
