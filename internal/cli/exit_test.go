package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/alecthomas/kong"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/wire"
)

// countingAgent is an agent (default settings) serving path with a handler
// that returns its payload; it counts, per payload, the deliveries its
// consumers received (in the order the broker sent them) and the handler's
// runs.
type countingAgent struct {
	transport.Transport
	mu        sync.Mutex
	delivered map[string]int
	executed  map[string]int
}

func (c *countingAgent) Consume(ctx context.Context, queue string, opts transport.ConsumeOptions) (<-chan *transport.Delivery, error) {
	in, err := c.Transport.Consume(ctx, queue, opts)
	if err != nil {
		return nil, err
	}
	out := make(chan *transport.Delivery)
	go func() {
		defer close(out)
		for d := range in {
			if d.Type == wire.TypeRequest || d.Type == wire.TypePush {
				c.mu.Lock()
				c.delivered[string(d.Body)]++
				c.mu.Unlock()
			}
			select {
			case out <- d:
			case <-ctx.Done():
			}
		}
	}()
	return out, nil
}

func (c *countingAgent) counts(payload string) (delivered, executed int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.delivered[payload], c.executed[payload]
}

func startCountingAgent(t *testing.T, tr transport.Transport, url, id, path string) *countingAgent {
	t.Helper()
	c := &countingAgent{Transport: tr, delivered: map[string]int{}, executed: map[string]int{}}
	a, err := agent.New(c, agent.Config{Identity: id}, agent.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Handle(path, agent.HandlerFunc(func(_ context.Context, r *agent.Request) (any, error) {
		c.mu.Lock()
		c.executed[string(r.Payload)]++
		c.mu.Unlock()
		return r.Payload, nil
	})); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fabrictest.DeleteQueues(t, url, wire.ServiceQueue(path), wire.AgentQueue(id)) })
	fabrictest.RunAgent(t, a)
	return c
}

// cliRun is one warren process's outcome.
type cliRun struct {
	args           []string
	payload        string
	code           int  // -1 when killed by a signal
	signaled       bool // killed by SIGINT before it could handle it
	stdout, stderr string
	took           time.Duration
}

// runCLI runs the warren binary with args (broker in WARREN_BROKER, so no
// warning about a password on the command line), sending SIGINT after
// interrupt when it is not negative.
func runCLI(t *testing.T, bin, url string, interrupt time.Duration, args ...string) cliRun {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "WARREN_BROKER="+url)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if interrupt >= 0 {
		time.Sleep(interrupt) // the point at which the fault is injected: any is fine
		_ = cmd.Process.Signal(syscall.SIGINT)
	}
	err := cmd.Wait()
	r := cliRun{args: args, stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			r.signaled = ws.Signal() == syscall.SIGINT
		}
	default:
		t.Fatal(err)
	}
	return r
}

// checkRuns asserts the promise of request and push, for runs that used
// unique payloads on agent c's path: exit 0 means the result was printed
// (request) or the push was confirmed, and the handler ran exactly once;
// any other exit is one clear line "warren: ..." (after log lines, if any)
// that contains want, and
// when it says nothing was sent, nothing was delivered. barrier is run
// first: once its request has been answered, every earlier message that
// reached the agent's queue has been delivered.
func checkRuns(t *testing.T, c *countingAgent, runs []cliRun, barrier func(), want func(cliRun) string) {
	t.Helper()
	barrier()
	for _, r := range runs {
		if r.code != 0 {
			continue
		}
		testenv.WaitFor(t, 15*time.Second, func() error {
			if _, ex := c.counts(r.payload); ex == 0 {
				return fmt.Errorf("%v exited 0 and was not executed", r.args)
			}
			return nil
		})
	}
	var ok, failed, killed int
	for _, r := range runs {
		delivered, executed := c.counts(r.payload)
		// Log lines (time=... level=WARN) may come first.
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		line := lines[len(lines)-1]
		for _, l := range lines[:len(lines)-1] {
			if !strings.HasPrefix(l, "time=") {
				t.Errorf("%v: stderr %q: more than one line besides the log", r.args, r.stderr)
			}
		}
		switch {
		case r.signaled:
			killed++
			// SIGINT before Go's handler was installed: nothing sent.
			if delivered != 0 {
				t.Errorf("%v: killed by SIGINT at start, yet delivered %d times", r.args, delivered)
			}
		case r.code == 0:
			ok++
			if executed != 1 || delivered != 1 {
				t.Errorf("%v: exit 0, delivered %d times, executed %d times; want once", r.args, delivered, executed)
			}
			if r.args[0] == "request" && strings.TrimSpace(r.stdout) != r.payload {
				t.Errorf("%v: exit 0, printed %q; want %s", r.args, r.stdout, r.payload)
			}
		default:
			failed++
			if r.stdout != "" {
				t.Errorf("%v: exit %d, printed %q", r.args, r.code, r.stdout)
			}
			if !strings.HasPrefix(line, "warren: ") || !strings.Contains(line, want(r)) {
				t.Errorf("%v: exit %d, stderr %q; want one line with %q", r.args, r.code, r.stderr, want(r))
			}
			for _, misleading := range []string{"password", "vhost", "connection lost"} {
				if strings.Contains(line, misleading) {
					t.Errorf("%v: stderr %q blames %s", r.args, line, misleading)
				}
			}
			if strings.Contains(line, "nothing was sent") && delivered != 0 {
				t.Errorf("%v: says nothing was sent, yet delivered %d times: %s", r.args, delivered, line)
			}
			if executed > 1 {
				t.Errorf("%v: executed %d times", r.args, executed)
			}
		}
	}
	t.Logf("%d runs: %d exit 0 (executed once each), %d failed with a clear line, %d killed by SIGINT before its handler", len(runs), ok, failed, killed)
}

// TestCallExitStatusTimeoutSweep runs fresh warren request and push
// processes with --timeout from 1ms to 200ms against an agent with default
// settings: exit 0 means executed exactly once (request: the result
// printed; push: confirmed), anything else is one line that says the
// timeout passed and how far the call got. Before, a --timeout of 5-10ms
// exited 0 with nothing sent.
func TestCallExitStatusTimeoutSweep(t *testing.T) {
	tr, url := rabbit(t)
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	actor := fabrictest.Actor()
	path := "/" + actor + "/echo"
	c := startCountingAgent(t, tr, url, actor+"-a", path)
	barrier := func() {
		testenv.WaitFor(t, 30*time.Second, func() error {
			r := runCLI(t, bin, url, -1, "request", path, `"barrier"`, "--timeout", "5s")
			if r.code != 0 {
				return fmt.Errorf("barrier request: exit %d %s", r.code, r.stderr)
			}
			return nil
		})
	}
	barrier() // the agent is up

	var runs []cliRun
	n := 0
	for ms := 1; ms <= 200; ms += max(1, ms/4) {
		d := (time.Duration(ms) * time.Millisecond).String()
		for _, cmd := range []string{"request", "push"} {
			n++
			payload := fmt.Sprintf(`"%s-%d"`, cmd, n)
			r := runCLI(t, bin, url, -1, cmd, path, payload, "--timeout", d)
			r.payload = payload
			runs = append(runs, r)
		}
	}
	checkRuns(t, c, runs, barrier, func(r cliRun) string { return "--timeout " + r.args[4] + " passed" })
}

// TestCallExitStatusSIGINT interrupts fresh warren request and push
// processes at points from their start to after their work: exit 0 means
// executed exactly once; a SIGINT that Go's handler caught gives one line
// saying so and how far the call got.
func TestCallExitStatusSIGINT(t *testing.T) {
	tr, url := rabbit(t)
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	actor := fabrictest.Actor()
	path := "/" + actor + "/echo"
	c := startCountingAgent(t, tr, url, actor+"-a", path)
	barrier := func() {
		testenv.WaitFor(t, 30*time.Second, func() error {
			r := runCLI(t, bin, url, -1, "request", path, `"barrier"`, "--timeout", "5s")
			if r.code != 0 {
				return fmt.Errorf("barrier request: exit %d %s", r.code, r.stderr)
			}
			return nil
		})
	}
	barrier()

	var runs []cliRun
	n := 0
	for _, at := range []time.Duration{0, time.Millisecond, 3 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond,
		40 * time.Millisecond, 70 * time.Millisecond, 100 * time.Millisecond, 130 * time.Millisecond, 160 * time.Millisecond,
		200 * time.Millisecond, 300 * time.Millisecond, 500 * time.Millisecond} {
		for _, cmd := range []string{"request", "push"} {
			n++
			payload := fmt.Sprintf(`"%s-%d"`, cmd, n)
			r := runCLI(t, bin, url, at, cmd, path, payload, "--timeout", "10s")
			r.payload = payload
			runs = append(runs, r)
		}
	}
	checkRuns(t, c, runs, barrier, func(cliRun) string { return "interrupted" })
}

// TestCallBounds: flags and arguments out of bounds are usage errors
// (exit 2) with a clear line, before anything is dialled: a ping that
// would flood, a deadline RabbitMQ would refuse (it was reported as a lost
// connection), paths and identities with control characters or invalid
// UTF-8 (they were echoed raw), payload files that are missing, too large
// or not JSON.
func TestCallBounds(t *testing.T) {
	dir := t.TempDir()
	notJSON := dir + "/not.json"
	big := dir + "/big.json"
	if err := os.WriteFile(notJSON, []byte("{oops"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(big, bytes.Repeat([]byte(" "), wire.DefaultMaxMessageSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	// Nothing listens there: a test that dialled would fail differently.
	broker := "--broker=amqp://guest:guest@127.0.0.1:1/"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"agent", "--ping", "1ns"}, "--ping 1ns: want 100ms to 1h0m0s"},
		{[]string{"agent", "--ping", "2h"}, "--ping 2h0m0s: want 100ms to 1h0m0s"},
		{[]string{"demo", "--ping", "1ns"}, "--ping 1ns: want 100ms to 1h0m0s"},
		{[]string{"request", "/simple/echo", "--timeout", "1000000h"}, "--timeout 1000000h0m0s: at most 1193h2m47.295s"},
		{[]string{"push", "/simple/echo", "--ttl", "1000000h"}, "--ttl 1000000h0m0s: at most 1193h2m47.295s"},
		{[]string{"push", "/simple/echo", "--timeout", "0s"}, "--timeout 0s: want a positive duration"},
		{[]string{"request", "/simple/ec\x01ho"}, `invalid service path "/simple/ec\x01ho"`},
		{[]string{"push", "/simple/ec\xffho"}, `argument 2 /simple/ec\xffho is not valid UTF-8`},
		{[]string{"request", "/simple/echo", "-s", "agent:fr\x1b[2Jed"}, `invalid identity "fr\x1b[2Jed"`},
		{[]string{"agent", "--token", "fr\x7fed"}, `invalid identity "fr\x7fed"`},
		{[]string{"request", "/simple/echo", "@" + dir + "/missing.json"}, "no such file"},
		{[]string{"request", "/simple/echo", "@" + notJSON}, "payload from " + notJSON + " (5 bytes) is not JSON"},
		{[]string{"push", "/simple/echo", "@" + big}, "over the limit of 16777216 bytes"},
		{[]string{"request", "/simple/echo", "hi"}, `payload "hi" is not JSON`},
	} {
		code, out, errOut := run(t, t.Context(), append(tc.args, broker)...)
		if code != 2 || out != "" || !strings.Contains(errOut, tc.want) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 2 and %q", tc.args, code, out, errOut, tc.want)
		}
		if strings.ContainsFunc(errOut, func(r rune) bool { return r != '\n' && (r < ' ' || r == 0x7f || r == 0xfffd) }) {
			t.Errorf("%q: stderr %q echoes raw control characters or bad UTF-8", tc.args, errOut)
		}
	}
}

// TestPayloadSources sends payloads from a file (@FILE, 10 MB, which
// exceeds what an argument list may hold), from standard input (-), and
// negative numbers without "--", flags before and after them.
func TestPayloadSources(t *testing.T) {
	tr, url := rabbit(t)
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	actor := fabrictest.Actor()
	path := "/" + actor + "/echo"
	c := startCountingAgent(t, tr, url, actor+"-a", path)
	testenv.WaitFor(t, 30*time.Second, func() error {
		if r := runCLI(t, bin, url, -1, "request", path, "0", "--timeout", "5s"); r.code != 0 {
			return fmt.Errorf("exit %d %s", r.code, r.stderr)
		}
		return nil
	})

	big := `"` + strings.Repeat("x", 10<<20) + `"`
	file := t.TempDir() + "/big.json"
	if err := os.WriteFile(file, []byte(big+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, bin, url, -1, "request", path, "@"+file, "--timeout", "30s")
	if r.code != 0 || strings.TrimSpace(r.stdout) != big {
		t.Fatalf("request @FILE (10 MB): exit %d, %d bytes out, stderr %s", r.code, len(r.stdout), r.stderr)
	}

	cmd := exec.Command(bin, "request", path, "-", "--timeout", "10s")
	cmd.Env = append(os.Environ(), "WARREN_BROKER="+url)
	cmd.Stdin = strings.NewReader(`{"from": "stdin"}`)
	out, err := cmd.Output()
	if err != nil || strings.Join(strings.Fields(string(out)), " ") != `{ "from": "stdin" }` {
		t.Fatalf("request -: %v %q", err, out)
	}

	for _, args := range [][]string{
		{"request", path, "-5", "--timeout", "10s"},
		{"request", "--timeout", "10s", path, "-1.5e3"},
		{"request", "-s", "least_loaded", path, "-0.25", "--tag", "x", "--timeout", "10s"},
	} {
		want := args[slices.IndexFunc(args, func(a string) bool { return negativeNumber.MatchString(a) })]
		if want == "-0.25" {
			// --tag x: no agent carries it.
			if r := runCLI(t, bin, url, -1, args...); r.code != 1 || !strings.Contains(r.stderr, "no agent") {
				t.Errorf("%q: exit %d %q %q", args, r.code, r.stdout, r.stderr)
			}
			continue
		}
		if r := runCLI(t, bin, url, -1, args...); r.code != 0 || strings.TrimSpace(r.stdout) != want {
			t.Errorf("%q: exit %d %q %q", args, r.code, r.stdout, r.stderr)
		}
	}
	if r := runCLI(t, bin, url, -1, "push", path, "-42", "--timeout", "10s"); r.code != 0 {
		t.Fatalf("push -42: exit %d %s", r.code, r.stderr)
	}
	testenv.WaitFor(t, 10*time.Second, func() error {
		if _, ex := c.counts("-42"); ex != 1 {
			return fmt.Errorf("push -42 executed %d times", ex)
		}
		return nil
	})
}

// TestDisruptiveCallDuringMemoryAlarm raises RabbitMQ's memory alarm, which
// blocks every publishing connection: warren request and push keep their
// --timeout (a request with --timeout 3s ran 6s) and say that the broker
// blocks publishes and why (they said "no agent serves this service").
func TestDisruptiveCallDuringMemoryAlarm(t *testing.T) {
	testenv.RequireDisruptive(t)
	tr, url := rabbit(t)
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	actor := fabrictest.Actor()
	path := "/" + actor + "/echo"
	c := startCountingAgent(t, tr, url, actor+"-a", path)
	barrier := func() {
		testenv.WaitFor(t, 30*time.Second, func() error {
			r := runCLI(t, bin, url, -1, "request", path, `"barrier"`, "--timeout", "5s")
			if r.code != 0 {
				return fmt.Errorf("barrier request: exit %d %s", r.code, r.stderr)
			}
			return nil
		})
	}
	barrier()

	testenv.Rabbitmqctl(t, "set_vm_memory_high_watermark", "0.0000001")
	restored := false
	restore := func() {
		if !restored {
			restored = true
			testenv.Rabbitmqctl(t, "set_vm_memory_high_watermark", "0.4")
		}
	}
	t.Cleanup(restore)
	// The alarm is raised once a publish of ours is blocked.
	q, err := tr.DeclareQueue(t.Context(), transport.Queue{Exclusive: true, AutoDelete: true})
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		err := tr.Publish(ctx, "", q, transport.Message{Body: []byte("probe")}, transport.PublishOptions{Confirm: true})
		if err != nil && strings.Contains(err.Error(), "blocking publishes") {
			return nil
		}
		return fmt.Errorf("publish not blocked yet: %v", err)
	})

	var runs []cliRun
	n := 0
	for _, timeout := range []string{"500ms", "3s"} {
		for _, cmd := range []string{"request", "push"} {
			n++
			payload := fmt.Sprintf(`"%s-%d"`, cmd, n)
			r := runCLI(t, bin, url, -1, cmd, path, payload, "--timeout", timeout)
			r.payload = payload
			runs = append(runs, r)
			d, _ := time.ParseDuration(timeout)
			if r.took > d+time.Second {
				t.Errorf("%v took %v", r.args, r.took)
			}
			t.Logf("%v: exit %d in %v: %s", r.args, r.code, r.took.Round(time.Millisecond), strings.TrimSpace(r.stderr))
		}
	}
	restore()
	checkRuns(t, c, runs, barrier, func(cliRun) string {
		return "the broker is blocking publishes (low on memory): a memory alarm is raised"
	})
	for _, r := range runs {
		if r.code == 0 {
			t.Errorf("%v: exit 0 during the alarm", r.args)
		}
	}
}

// TestNegativePayloads: a negative number is the payload of request and
// push without "--", wherever it stands among the flags; a flag's value and
// other commands are left alone.
func TestNegativePayloads(t *testing.T) {
	var r root
	parser, err := kong.New(&r, kong.Name("warren"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ in, want string }{
		{"request /a/b -5", "request /a/b -- -5"},
		{"request /a/b -5 --timeout 3s", "request /a/b --timeout 3s -- -5"},
		{"--log-level debug push -s random /a/b -1.5e3 --tag x", "--log-level debug push -s random /a/b --tag x -- -1.5e3"},
		{"request /a/b -- -5", "request /a/b -- -5"},
		{"request /a/b 5", "request /a/b 5"},
		{"request /a/b -5s", "request /a/b -5s"},
		{"request /a/b --selector -5", "request /a/b --selector -5"},
		{"bench request -5", "bench request -5"},
		{"agent --max-deliveries -1", "agent --max-deliveries -1"},
	} {
		if got := strings.Join(negativePayloads(parser.Model, strings.Fields(tc.in)), " "); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.in, got, tc.want)
		}
	}
}

// TestExplain checks the failure lines of request and push, stage by
// stage, without a broker.
func TestExplain(t *testing.T) {
	expired, cancel := context.WithTimeout(t.Context(), -time.Second)
	defer cancel()
	sig, stop := context.WithCancelCause(t.Context())
	stop(interruptSignal{})
	cancelled, stop2 := context.WithCancel(t.Context())
	stop2()
	live := t.Context()
	base := errors.New("base")
	blocked := &amqp.BlockedError{Reason: "low on disk"}
	for _, tc := range []struct {
		name            string
		ctx             context.Context
		stage           stage
		blocked         error
		sent, confirmed int64
		err             error
		want            string
	}{
		{"timeout connecting", expired, stageConnect, nil, 0, 0, base,
			"request /a/b: --timeout 5ms passed while connecting to the broker; nothing was sent: base"},
		{"timeout starting", expired, stageStart, nil, 0, 0, base,
			"request /a/b: --timeout 5ms passed while starting the mapper; nothing was sent: base"},
		{"no agent yet", expired, stageCall, nil, 0, 0, fmt.Errorf("%w: x", mapper.ErrNoAgent),
			"request /a/b: --timeout 5ms passed before an agent serving the path was heard from"},
		{"signal while sending", sig, stageCall, nil, 1, 0, base,
			"request /a/b: interrupted (interrupt signal received) while sending; the broker did not confirm it: it may or may not have been delivered: base"},
		{"cancelled waiting", cancelled, stageCall, nil, 1, 1, base,
			"request /a/b: interrupted while waiting for the reply; the broker took the request: it may have run: base"},
		{"blocked, no timeout", live, stageCall, blocked, 0, 0, base,
			"the broker is blocking publishes (low on disk): a disk alarm is raised; nothing can be published until it clears (rabbitmqctl status shows the alarms); nothing was sent: base"},
		{"other failure", live, stageCall, nil, 1, 1, base, "base"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &callState{stage: tc.stage, blocked: tc.blocked}
			st.sends.sent.Store(tc.sent)
			st.sends.confirmed.Store(tc.confirmed)
			got := st.explain(tc.ctx, "request /a/b", "--timeout", 5*time.Millisecond, tc.err).Error()
			if !strings.HasPrefix(got, tc.want) {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
	if err := (&callState{}).explain(expired, "push /a/b", "--timeout", time.Second, nil); err != nil {
		t.Errorf("nil error explained as %v", err)
	}
}

// interruptSignal is the cause signal.NotifyContext gives.
type interruptSignal struct{}

func (interruptSignal) Error() string        { return "interrupt signal received" }
func (interruptSignal) Is(target error) bool { return target == context.Canceled }
