package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/wire"
)

// handlersStarted returns the message ids of the requests (not pushes) to
// path whose handler an agent's log says started.
func handlersStarted(log, path string) []string {
	var ids []string
	for line := range strings.Lines(log) {
		var rec struct {
			Msg       string `json:"msg"`
			MessageID string `json:"message_id"`
			Service   string `json:"service"`
			Push      bool   `json:"push"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "handler started" && rec.Service == path && !rec.Push {
			ids = append(ids, rec.MessageID)
		}
	}
	return ids
}

// killHandlerSeconds is how long each request's handler runs.
const killHandlerSeconds = 1

// TestFaultSIGKILLDefaults is issue 9's scenario, as users run it: two
// `warren agent` processes with the default settings (a ping every 15s, so
// a silent agent expires only after 45s), and `warren request /simple/sleep`
// processes, each a mapper that has just started. Once the handler of a
// request runs (the agent's debug log says so), its agent is killed with
// SIGKILL; the request must be answered by the other agent within the
// handler's time plus two seconds. The killed agent is replaced by a new
// process, and it starts again: WARREN_FAULT_KILLS times (default 10; run
// 100 by hand to catch a 1-in-100 failure).
func TestFaultSIGKILLDefaults(t *testing.T) {
	n := 10
	if v := os.Getenv("WARREN_FAULT_KILLS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("WARREN_FAULT_KILLS=%q: want a positive count", v)
		}
	}
	// A vhost of the test's own, as for faultRun.
	url, _ := testenv.PrivateVHost(t, testenv.AMQPURL(t), "warren-test-kill-")
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	tag := fabrictest.Actor()
	const path = "/simple/sleep"
	next := 0
	start := func() *agentProc {
		name := fmt.Sprintf("k%d", next)
		next++
		fabrictest.DeleteQueues(t, url, wire.AgentQueue(tag+"-"+name))
		p := startAgentWith(t, bin, url, tag, name)
		testenv.WaitFor(t, 15*time.Second, func() error {
			if !strings.Contains(p.log.String(), `"msg":"agent registered"`) {
				return fmt.Errorf("agent %s not registered yet", name)
			}
			return nil
		})
		return p
	}
	agents := []*agentProc{start(), start()}
	var extra []time.Duration // answer time beyond the handler's, after the kill
	for i := range n {
		seen := map[string]bool{}
		for _, a := range agents {
			for _, id := range handlersStarted(a.log.String(), path) {
				seen[id] = true
			}
		}
		var stdout, stderr bytes.Buffer
		req := exec.Command(bin, "--log-level", "debug", "--log-format", "json", "request", "--broker", url,
			path, strconv.Itoa(killHandlerSeconds), "--tag", tag, "--timeout", "30s")
		req.Stdout, req.Stderr = &stdout, &stderr
		if err := req.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- req.Wait() }()
		// The agent whose handler started this request.
		var victim int
		var msgID string
		testenv.WaitFor(t, 15*time.Second, func() error {
			for k, a := range agents {
				for _, id := range handlersStarted(a.log.String(), path) {
					if !seen[id] {
						victim, msgID = k, id
						return nil
					}
				}
			}
			return fmt.Errorf("run %d: no handler started yet", i)
		})
		v := agents[victim]
		if err := v.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		var werr error
		select {
		case werr = <-exited:
		case <-time.After(40 * time.Second):
			req.Process.Kill()
			werr = <-exited
		}
		took := time.Since(killed)
		<-v.exited
		if werr != nil || strings.TrimSpace(stdout.String()) != fmt.Sprintf(`"slept %ds"`, killHandlerSeconds) {
			t.Fatalf("run %d: request whose agent %s was killed: %v, output %q\n%s", i, v.name, werr, stdout.String(), tail(stderr.String(), 4096))
		}
		// The request the kill cut short is the one re-sent.
		if !strings.Contains(stderr.String(), `"correlation_id":"`+msgID+`"`) || !strings.Contains(stderr.String(), "request sent to another agent") {
			t.Fatalf("run %d: the killed agent %s ran %s, which the request did not re-send:\n%s", i, v.name, msgID, tail(stderr.String(), 4096))
		}
		extra = append(extra, took-killHandlerSeconds*time.Second)
		t.Logf("run %d: killed %s mid-handler; answered %v after the kill", i, v.name, took.Round(time.Millisecond))
		if took > killHandlerSeconds*time.Second+2*time.Second {
			t.Errorf("run %d: answered %v after the kill of %s; want the handler's %ds plus at most 2s", i, took.Round(time.Millisecond), v.name, killHandlerSeconds)
		}
		agents[victim] = start()
	}
	slices.Sort(extra)
	t.Logf("%d of %d requests answered after their agent was killed mid-handler; time beyond the handler's %ds, from the kill: median %v, p90 %v, max %v",
		len(extra), n, killHandlerSeconds, extra[len(extra)/2].Round(time.Millisecond), extra[len(extra)*9/10].Round(time.Millisecond), extra[len(extra)-1].Round(time.Millisecond))
}
