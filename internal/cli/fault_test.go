package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport/amqp"
)

var buildOnce = sync.OnceValues(func() (string, error) {
	dir, err := mkdirTemp()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "warren")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/warrenrpc/warren/cmd/warren").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build: %v\n%s", err, out)
	}
	return bin, nil
})

// agentProc is one `warren agent` process of a fault test. It logs at
// debug level, in JSON, so that the test can count the handler executions
// of every message from the "handler started" and "handler returned"
// records (with message_id and push) that the agent package logs.
type agentProc struct {
	name   string
	cmd    *exec.Cmd
	log    *testenv.Buffer
	exited chan struct{} // closed when the process exited and its log is complete
	err    error         // cmd.Wait's, once exited is closed
}

// startAgentWith starts `warren agent` with identity tag-name, tagged tag,
// with the settings given (the defaults for those not given).
func startAgentWith(t *testing.T, bin, url, tag, name string, settings ...string) *agentProc {
	t.Helper()
	p := &agentProc{name: name, log: &testenv.Buffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{"--log-level", "debug", "--log-format", "json", "agent", "--broker", url,
		"--token", tag + "-" + name, "--tag", tag}, settings...)...)
	p.cmd.Stderr = p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("agent %s log (last 4 KiB):\n%s", name, tail(p.log.String(), 4096))
		}
	})
	return p
}

func tail(s string, n int) string { return s[max(0, len(s)-n):] }

// execution counts the handler runs of one message.
type execution struct {
	started, returned int
	push              bool
}

// executions adds the handler runs an agent logged to into.
func executions(log string, into map[string]*execution) {
	for line := range strings.Lines(log) {
		var rec struct {
			Msg       string `json:"msg"`
			MessageID string `json:"message_id"`
			Push      bool   `json:"push"`
		}
		if json.Unmarshal([]byte(line), &rec) != nil || rec.MessageID == "" {
			continue
		}
		if rec.Msg != "handler started" && rec.Msg != "handler returned" {
			continue
		}
		e := into[rec.MessageID]
		if e == nil {
			e = &execution{push: rec.Push}
			into[rec.MessageID] = e
		}
		if rec.Msg == "handler started" {
			e.started++
		} else {
			e.returned++
		}
	}
}

// inHand returns how many handlers an agent has started and not returned.
func inHand(log string) int {
	ex := map[string]*execution{}
	executions(log, ex)
	n := 0
	for _, e := range ex {
		n += e.started - e.returned
	}
	return n
}

// faultFigures are what one fault run measured.
type faultFigures struct {
	sent, delivered, lost, duplicatedResults int // requests, and their results as the callers saw them
	pushes, confirmed, pushesDone            int // pushes sent, confirmed, and executed to the end
	executed, duplicated                     int // handler starts across agents; starts beyond a message's first
	inHandAtFault                            int // handlers running on the faulted agent when the fault fired
	lateReplies                              int64
}

func (f faultFigures) String() string {
	return fmt.Sprintf("requests sent %d, results delivered %d, lost %d, duplicated results %d; pushes sent %d, confirmed %d, executed %d; "+
		"handler executions %d, duplicated executions %d (late replies discarded by the mapper %d); in hand on the faulted agent at the fault %d",
		f.sent, f.delivered, f.lost, f.duplicatedResults, f.pushes, f.confirmed, f.pushesDone,
		f.executed, f.duplicated, f.lateReplies, f.inHandAtFault)
}

// faultRun starts agents a and b as processes and sends n requests to
// /simple/sleep (30ms each) with 16 in flight from a mapper in this
// process, with a push of the same before every other request. Once n/4
// results came back, and while a has handlers running, it calls fault(a).
// It waits for the requests, then for every confirmed push to be executed,
// and returns the figures; a is the caller's to wait for.
func faultRun(t *testing.T, n int, fault func(a *agentProc)) faultFigures {
	// A vhost of the test's own: other tests' agents serving /simple/*
	// would take work passed on to the shared queue, unseen by the count.
	url, _ := testenv.PrivateVHost(t, testenv.AMQPURL(t), "warren-test-fault-")
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	tag := fabrictest.Actor()
	// The default settings, as users run it: a ping every 15s, so the
	// mapper learns of a killed agent from the broker, not from its pings.
	a := startAgentWith(t, bin, url, tag, "a")
	b := startAgentWith(t, bin, url, tag, "b")
	tr, err := amqp.Dial(t.Context(), url, amqp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() }) // after the mapper's cleanup
	m := fabrictest.RunMapper(t, tr, mapper.Config{})
	ctx := t.Context()
	testenv.WaitFor(t, 15*time.Second, func() error {
		live := 0
		for _, a := range m.Agents() {
			if a.HasTags(tag) {
				live++
			}
		}
		if live != 2 {
			return fmt.Errorf("%d agents live", live)
		}
		return nil
	})

	var f faultFigures
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	var answered atomic.Int64
	var pushes, confirmed atomic.Int64
	faulted := make(chan struct{})
	var faultOnce sync.Once
	fire := func() {
		faultOnce.Do(func() {
			go func() {
				defer close(faulted)
				// Fire while a is working: wait until it has a handler
				// running (its log reaches us through a pipe, later
				// on a loaded machine).
				// Several, so that one is still running when the fault
				// lands (what the log shows may be a moment old).
				for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
					if f.inHandAtFault = inHand(a.log.String()); f.inHandAtFault >= 3 {
						break
					}
					time.Sleep(time.Millisecond)
				}
				fault(a)
			}()
		})
	}
	results := make([]atomic.Int64, n)
	opts := []mapper.CallOption{mapper.WithTags(tag), mapper.Select(mapper.RoundRobin())}
	for i := range n {
		sem <- struct{}{}
		f.sent++
		wg.Go(func() {
			defer func() { <-sem }()
			rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
			defer rcancel()
			if i%2 == 0 {
				pushes.Add(1)
				if err := m.Push(rctx, "/simple/sleep", 0.03, opts...); err != nil {
					t.Logf("push %d not confirmed: %v", i, err)
				} else {
					confirmed.Add(1)
				}
			}
			r, err := m.Request(rctx, "/simple/sleep", 0.03, opts...)
			if err != nil {
				t.Errorf("request %d: %v", i, err)
				return
			}
			var got string
			if err := r.Decode(&got); err != nil || got != "slept 30ms" {
				t.Errorf("request %d: got %q (%v)", i, got, err)
				return
			}
			results[i].Add(1)
			if answered.Add(1) == int64(n/4) {
				fire()
			}
		})
	}
	wg.Wait()
	fire() // in case too few requests were answered to fire it
	<-faulted
	for i := range results {
		switch k := results[i].Load(); k {
		case 1:
			f.delivered++
		case 0:
			f.lost++
		default:
			f.delivered++
			f.duplicatedResults += int(k - 1)
		}
	}
	f.pushes, f.confirmed = int(pushes.Load()), int(confirmed.Load())

	// Every confirmed push runs to the end somewhere (a push the faulted
	// agent held goes to another agent, through its queue's rescue).
	count := func() map[string]*execution {
		ex := map[string]*execution{}
		executions(a.log.String(), ex)
		executions(b.log.String(), ex)
		return ex
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		f.pushesDone = 0
		for _, e := range count() {
			if e.push && e.returned > 0 {
				f.pushesDone++
			}
		}
		if f.pushesDone >= f.confirmed || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, e := range count() {
		f.executed += e.started
		f.duplicated += max(e.started-1, 0)
	}
	f.lateReplies = m.LateReplies()
	return f
}

// check asserts what every fault run must show: each request answered
// exactly once, every confirmed push executed, the fault hit work in hand.
func (f faultFigures) check(t *testing.T) {
	t.Helper()
	if f.lost != 0 || f.delivered != f.sent {
		t.Errorf("%d of %d requests unanswered", f.lost, f.sent)
	}
	if f.duplicatedResults != 0 {
		t.Errorf("%d duplicated results", f.duplicatedResults)
	}
	if f.confirmed != f.pushes {
		t.Errorf("%d of %d pushes not confirmed (an agent was live for each)", f.pushes-f.confirmed, f.pushes)
	}
	if f.pushesDone < f.confirmed || f.pushesDone > f.pushes {
		t.Errorf("%d distinct pushes executed, want every one of the %d confirmed (and at most the %d sent)", f.pushesDone, f.confirmed, f.pushes)
	}
	if f.executed < f.sent+f.pushesDone {
		t.Errorf("%d handler executions for %d requests and %d pushes", f.executed, f.sent, f.pushesDone)
	}
	if f.inHandAtFault == 0 {
		t.Error("the fault fired with no handler running on the faulted agent")
	}
}

func TestFaultAgentSIGKILLUnderLoad(t *testing.T) {
	start := time.Now()
	var a *agentProc
	f := faultRun(t, 300, func(p *agentProc) {
		a = p
		a.cmd.Process.Signal(syscall.SIGKILL)
	})
	<-a.exited
	killed := inHand(a.log.String()) // started on a and never returned: cut short by the kill
	t.Logf("SIGKILL mid-load: %v; handlers cut short by the kill %d; in %v", f, killed, time.Since(start).Round(time.Millisecond))
	f.check(t)
	if killed == 0 {
		t.Error("the kill cut no handler short: it did not strike mid-request")
	}
}

func TestFaultAgentSIGTERMUnderLoad(t *testing.T) {
	start := time.Now()
	var a *agentProc
	f := faultRun(t, 300, func(p *agentProc) {
		a = p
		a.cmd.Process.Signal(syscall.SIGTERM)
	})
	select {
	case <-a.exited:
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not exit within 15s of SIGTERM")
	}
	unfinished := inHand(a.log.String())
	passedOn := strings.Count(a.log.String(), `"msg":"agent draining: passing the request on"`)
	t.Logf("SIGTERM mid-load: %v; exit %v; handlers a left unfinished %d, requests and pushes it passed on while draining %d; in %v",
		f, a.err, unfinished, passedOn, time.Since(start).Round(time.Millisecond))
	f.check(t)
	if a.err != nil {
		t.Errorf("agent exit after SIGTERM: %v", a.err)
	}
	if unfinished != 0 {
		t.Errorf("the draining agent left %d handlers unfinished", unfinished)
	}
	if f.duplicated != 0 {
		t.Errorf("%d duplicated executions after a graceful stop", f.duplicated)
	}
}

func mkdirTemp() (string, error) { return os.MkdirTemp("", "warren-bin-") }
