package tower

import (
	"testing"
	"time"

	"github.com/warrenrpc/warren/wire"
)

func stats(id string, started time.Time, path string, n, nerr int, busy time.Duration) wire.ServiceStats {
	return wire.ServiceStats{
		ServiceIdentity: wire.ServiceIdentity{Name: "simple", ID: id},
		Started:         started,
		Endpoints:       []wire.EndpointStats{{Name: "echo", Subject: path, NumRequests: n, NumErrors: nerr, ProcessingTime: busy}},
	}
}

// TestFabricRates: rates come from two answers, summed over the agents; a
// restarted agent counts from its next answer.
func TestFabricRates(t *testing.T) {
	f := newFabric()
	t0 := time.Unix(1000, 0)
	s0 := t0.Add(-time.Hour)
	f.update([]wire.ServiceStats{stats("a", s0, "/s/echo", 10, 1, 10*time.Millisecond), stats("b", s0, "/s/echo", 5, 0, 5*time.Millisecond)}, t0)
	p, _ := f.summary("/s/echo")
	if p.Agents != 2 || p.Requests != 15 || p.Errors != 1 || p.Rated || p.Mean != time.Millisecond {
		t.Fatalf("first answer: %+v", p)
	}
	t1 := t0.Add(2 * time.Second)
	// a: 10 more, 2 failed, 30ms; b restarted with 3 requests.
	f.update([]wire.ServiceStats{stats("a", s0, "/s/echo", 20, 3, 40*time.Millisecond), stats("b", t0, "/s/echo", 3, 0, 3*time.Millisecond)}, t1)
	p, _ = f.summary("/s/echo")
	if p.Requests != 23 || p.Errors != 3 || !p.Rated || p.Rate != 5 || p.ErrorRate != 0.2 || p.RecentMean != 3*time.Millisecond {
		t.Fatalf("second answer: %+v", p)
	}
	t2 := t1.Add(time.Second)
	f.update([]wire.ServiceStats{stats("a", s0, "/s/echo", 20, 3, 40*time.Millisecond), stats("b", t0, "/s/echo", 7, 0, 7*time.Millisecond)}, t2)
	if p, _ = f.summary("/s/echo"); p.Rate != 4 || p.ErrorRate != 0 {
		t.Fatalf("third answer: %+v", p)
	}
	f.update(nil, t2.Add(time.Second))
	if _, ok := f.summary("/s/echo"); ok || !f.wasAsked() {
		t.Fatal("a path no agent answers for is still shown")
	}
}
