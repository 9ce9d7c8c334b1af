package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/warrenrpc/warren/internal/testenv"
)

func TestBenchOnEmbeddedBroker(t *testing.T) {
	for _, workload := range []string{"request", "push"} {
		t.Run(workload, func(t *testing.T) {
			code, out, errOut := run(t, t.Context(), "bench", workload, "--embedded", "-d", "300ms", "-c", "4", "--size", "10", "--json")
			if code != 0 {
				t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
			}
			var rep benchReport
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			r := rep.Result
			if rep.Workload != workload || rep.Broker != "embedded" || rep.Clients != 4 || rep.Size != 10 ||
				r.Calls == 0 || len(r.Errors) != 0 || r.Rate <= 0 || r.P50 <= 0 || r.P50 > r.P999 || r.CPU <= 0 {
				t.Errorf("report %+v", rep)
			}
			// Pushes left in the agent's queue at its stop would be
			// dead-lettered, and logged as such.
			if strings.Contains(errOut, "dead-lettered") {
				t.Errorf("the bench left work behind:\n%s", errOut)
			}
		})
	}
	code, out, _ := run(t, t.Context(), "bench", "request", "--embedded", "-d", "200ms", "-c", "2")
	for _, want := range []string{"request /bench/echo on embedded: 2 clients", "calls/s", "p99.9", "errors    none", "this process"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("exit %d, output lacks %q:\n%s", code, want, out)
		}
	}
}

func TestBenchRefusesBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--clients", "0"}, "--clients 0"},
		{[]string{"--duration=-1s"}, "--duration -1s"},
		{[]string{"--size=-1"}, "--size -1"},
		{[]string{"nope"}, "invalid service path"},
		{[]string{"--baseline"}, "--baseline compares with RabbitMQ"},
	} {
		code, _, errOut := run(t, t.Context(), append([]string{"bench", "request", "--embedded"}, tc.args...)...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, want 2 and %q in:\n%s", tc.args, code, tc.want, errOut)
		}
	}
}

// TestBenchBaselineOnRabbitMQ runs one short round of --baseline: Warren
// and both raw shapes measured, and a ratio to each.
func TestBenchBaselineOnRabbitMQ(t *testing.T) {
	url := testenv.AMQPURL(t)
	t.Setenv("WARREN_BROKER", url)
	code, out, errOut := run(t, t.Context(), "bench", "request", "--baseline", "--rounds", "2", "-d", "200ms", "-c", "2", "--json")
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	var rep baselineReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(rep.Runs) != 2 || len(rep.Runs[0]) != 3 {
		t.Fatalf("runs %+v", rep.Runs)
	}
	for _, raw := range []string{"raw-direct-reply-to", "raw-exclusive-queue"} {
		if q := rep.Ratio[raw]; q.N != 2 || q.Median <= 0 || q.Q1 > q.Median || q.Median > q.Q3 {
			t.Errorf("ratio to %s: %+v", raw, q)
		}
		if q := rep.P50Ratio[raw]; q.N != 2 || q.Median <= 0 {
			t.Errorf("p50 ratio to %s: %+v", raw, q)
		}
	}
	if strings.Contains(out+errOut, "guest:guest") {
		t.Error("the broker password is shown")
	}
}
