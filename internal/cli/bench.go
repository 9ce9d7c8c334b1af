package cli

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/loadgen"
	"github.com/warrenrpc/warren/internal/rawrpc"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

// benchCmd is `warren bench`: a load generator for the fabric.
type benchCmd struct {
	Request benchRequestCmd `cmd:"" help:"Requests: each client sends its next request when the last reply came back."`
	Push    benchPushCmd    `cmd:"" help:"Pushes: each client sends its next push when the broker confirmed the last."`
}

// benchFlags are shared by bench request and bench push.
type benchFlags struct {
	brokerFlags
	Path     string        `arg:"" name:"path" default:"/bench/echo" help:"Service path (default /bench/echo, served by --agent)."`
	Clients  int           `name:"clients" short:"c" default:"64" help:"Calls in flight."`
	Duration time.Duration `name:"duration" short:"d" default:"10s" help:"How long to run (per variant and round with --baseline)."`
	Size     int           `name:"size" default:"100" help:"Payload: a JSON string of this many bytes."`
	Timeout  time.Duration `name:"timeout" default:"10s" help:"Deadline of each call."`
	Agent    *bool         `name:"agent" negatable:"" help:"Start an echo agent for the path in this process (default: only with --embedded or --baseline; otherwise the fabric's agents serve)."`
	Embedded bool          `name:"embedded" help:"Run on an embedded broker in this process instead of --broker."`
	JSON     bool          `name:"json" help:"Print the result as one JSON object."`
	Progress *bool         `name:"progress" negatable:"" help:"Show a progress line on stderr (default: when stderr is a terminal and not --json)."`
}

type benchRequestCmd struct {
	benchFlags
	Baseline bool `name:"baseline" help:"Also run a plain amqp091-go client and echo server (direct reply-to, and an exclusive reply queue) in the same rounds, in random order, and print Warren's ratio to each."`
	Rounds   int  `name:"rounds" default:"5" help:"Rounds with --baseline."`
}

type benchPushCmd struct {
	benchFlags
}

func (c *benchRequestCmd) Help() string {
	return `Measures the fabric under load: calls per second, latency quantiles, errors by
code, and the CPU time of this process and, when the broker runs on this
machine, of the broker. Against a live fabric:

  warren bench request /simple/echo --clients 64 --duration 10s --size 100

With --baseline it starts its own echo agent and, in the same randomised
rounds, a hand-written amqp091-go client and server in the two usual shapes,
and prints the medians and quartiles of Warren's per-round throughput ratio
(above 1: Warren is faster) and of the p50 latency ratio:

  warren bench request --baseline --rounds 10 --duration 5s --clients 64

See docs/benchmarks.md.`
}

func (c *benchRequestCmd) Run(g *Globals) error {
	if err := c.check(); err != nil {
		return err
	}
	if c.Baseline {
		if c.Embedded {
			return usageError{errors.New("--baseline compares with RabbitMQ: it cannot run with --embedded")}
		}
		if c.Rounds < 1 {
			return usageError{fmt.Errorf("--rounds %d: want at least 1", c.Rounds)}
		}
		if c.Agent != nil && !*c.Agent {
			return usageError{errors.New("--baseline needs its own agent, in this process as the raw server is: drop --no-agent")}
		}
		return c.baseline(g)
	}
	return c.single(g, "request", func(m *mapper.Mapper, body json.RawMessage) loadgen.Call {
		return func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, c.Timeout)
			defer cancel()
			_, err := m.Request(ctx, c.Path, body)
			return err
		}
	})
}

func (c *benchPushCmd) Run(g *Globals) error {
	if err := c.check(); err != nil {
		return err
	}
	return c.single(g, "push", func(m *mapper.Mapper, body json.RawMessage) loadgen.Call {
		return func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, c.Timeout)
			defer cancel()
			return m.Push(ctx, c.Path, body)
		}
	})
}

func (c *benchFlags) check() error {
	if err := wire.CheckPath(c.Path); err != nil {
		return usageError{err}
	}
	switch {
	case c.Clients < 1 || c.Clients > 100000:
		return usageError{fmt.Errorf("--clients %d: want 1 to 100000", c.Clients)}
	case c.Duration <= 0:
		return usageError{fmt.Errorf("--duration %v: want a positive duration", c.Duration)}
	case c.Size < 0 || c.Size > 64<<20:
		return usageError{fmt.Errorf("--size %d: want 0 to 64 MiB", c.Size)}
	case c.Timeout <= 0:
		return usageError{fmt.Errorf("--timeout %v: want a positive duration", c.Timeout)}
	}
	return nil
}

// payload is a JSON string of c.Size bytes between its quotes.
func (c *benchFlags) payload() json.RawMessage {
	b := make([]byte, c.Size+2)
	for i := range b {
		b[i] = 'x'
	}
	b[0], b[len(b)-1] = '"', '"'
	return b
}

// ownAgent reports whether to start an echo agent in this process.
func (c *benchFlags) ownAgent() bool {
	if c.Agent != nil {
		return *c.Agent
	}
	return c.Embedded
}

func (c *benchFlags) showProgress(g *Globals) bool {
	if c.Progress != nil {
		return *c.Progress
	}
	if c.JSON {
		return false
	}
	f, ok := g.ErrOut().(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// fabric is what a bench run calls through: a mapper, and an echo agent of
// its own when asked, each on its own connection.
type fabric struct {
	m     *mapper.Mapper
	agent *agent.Agent // the bench's own, or nil
	sent  atomic.Int64 // calls made through m, by this bench
	close func()
}

// drain waits, up to a bound, until the bench's own agent has handled every
// call sent: pushes still queued when it stops would be dead-lettered.
func (f *fabric) drain(ctx context.Context) {
	if f.agent == nil {
		return
	}
	// Calls that failed may never reach the agent: give up when it has
	// handled nothing new for two seconds.
	last, idle := f.agent.Handled(), time.Now()
	for h := last; h < f.sent.Load() && time.Since(idle) < 2*time.Second && ctx.Err() == nil; h = f.agent.Handled() {
		if h != last {
			last, idle = h, time.Now()
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// connector returns how to open connections: to the embedded broker or to
// --broker.
func (c *benchFlags) connector(g *Globals) (connect func(ctx context.Context, name string) (transport.Transport, error), done func()) {
	if c.Embedded {
		b := mem.NewBroker()
		return func(context.Context, string) (transport.Transport, error) { return b.Connect(), nil },
			func() { _ = b.Close() }
	}
	return func(ctx context.Context, name string) (transport.Transport, error) {
		return c.dial(ctx, g, name)
	}, func() {}
}

// start brings up the fabric for a run.
func (c *benchFlags) start(ctx context.Context, g *Globals) (*fabric, error) {
	connect, done := c.connector(g)
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
		done()
	}
	fail := func(err error) (*fabric, error) {
		closeAll()
		return nil, err
	}
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	closers = append(closers, stop)
	f := &fabric{}
	if c.ownAgent() {
		atr, err := connect(ctx, "bench agent")
		if err != nil {
			return fail(err)
		}
		closers = append(closers, func() { atr.Close() })
		id := "bench-" + randomSuffix()
		// NoSharedQueues: requests go to the agent's own queue, and the
		// run leaves no durable service queue behind. A constant status
		// spares a read of /proc/loadavg per ping.
		a, err := agent.New(atr, agent.Config{Identity: id, Prefetch: c.Clients, NoSharedQueues: true},
			agent.WithLogger(g.Logger()), agent.WithStatus(func() any { return 0 }))
		if err != nil {
			return fail(err)
		}
		if err := a.Handle(c.Path, agent.HandlerFunc(func(_ context.Context, r *agent.Request) (any, error) {
			return r.Payload, nil
		})); err != nil {
			return fail(err)
		}
		f.agent = a
		ran := make(chan error, 1)
		go func() { ran <- a.Run(runCtx) }()
		closers = append(closers, func() {
			stop()
			<-ran
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = atr.DeleteQueue(dctx, wire.AgentQueue(id))
		})
		select {
		case <-a.Ready():
		case err := <-ran:
			ran <- err
			return fail(fmt.Errorf("bench agent: %w", err))
		case <-ctx.Done():
			return fail(ctx.Err())
		}
	}
	mtr, err := connect(ctx, "bench")
	if err != nil {
		return fail(err)
	}
	closers = append(closers, func() { mtr.Close() })
	m, err := mapper.New(mtr, mapper.Config{}, mapper.WithLogger(g.Logger()))
	if err != nil {
		return fail(err)
	}
	mctx, mstop := context.WithCancel(runCtx)
	ran := make(chan error, 1)
	go func() { ran <- m.Run(mctx) }()
	closers = append(closers, func() { mstop(); <-ran })
	select {
	case <-m.Ready():
	case err := <-ran:
		ran <- err
		return fail(err)
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	// Wait until an agent serves the path (the mapper learns the fabric
	// from heartbeats), then warm up.
	body := c.payload()
	deadline := time.Now().Add(15 * time.Second)
	for {
		wctx, cancel := context.WithTimeout(ctx, c.Timeout)
		_, err := m.Request(wctx, c.Path, body)
		cancel()
		if err == nil {
			f.sent.Add(1)
		}
		if err == nil {
			break
		}
		if !errors.Is(err, mapper.ErrNoAgent) || time.Now().After(deadline) || ctx.Err() != nil {
			return fail(fmt.Errorf("bench: a first request to %s: %w", c.Path, err))
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
		}
	}
	f.m, f.close = m, closeAll
	return f, nil
}

// brokerCPU returns a reader of the local broker's CPU time, or nil when
// the broker is not on this machine or cannot be read.
func (c *benchFlags) brokerCPU() func() (time.Duration, bool) {
	if c.Embedded {
		return nil
	}
	u, err := url.Parse(c.Broker)
	if err != nil {
		return nil
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "5672"
		if u.Scheme == "amqps" {
			port = "5671"
		}
	}
	if ip := net.ParseIP(host); !(host == "localhost" || ip != nil && ip.IsLoopback()) {
		return nil
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil
	}
	pid, err := loadgen.ListenerPID(p)
	if err != nil {
		return nil
	}
	return func() (time.Duration, bool) {
		d, err := loadgen.ProcessCPU(pid)
		return d, err == nil
	}
}

// benchReport is the result of one run, as printed.
type benchReport struct {
	Workload  string         `json:"workload"`
	Path      string         `json:"path"`
	Broker    string         `json:"broker"`
	Clients   int            `json:"clients"`
	Size      int            `json:"size"`
	Result    loadgen.Result `json:"result"`
	BrokerCPU *time.Duration `json:"broker_cpu_ns,omitempty"`
}

func (c *benchFlags) brokerName() string {
	if c.Embedded {
		return "embedded"
	}
	return redactedBroker(c.Broker)
}

// single runs one workload once and prints its report.
func (c *benchFlags) single(g *Globals, workload string, makeCall func(*mapper.Mapper, json.RawMessage) loadgen.Call) error {
	ctx := g.Context()
	f, err := c.start(ctx, g)
	if err != nil {
		return err
	}
	defer f.close()
	call := makeCall(f.m, c.payload())
	rep, err := c.measure(g, workload, func(ctx context.Context) error {
		f.sent.Add(1)
		return call(ctx)
	})
	f.drain(ctx)
	if err != nil {
		return err
	}
	if c.JSON {
		return json.NewEncoder(g.Out()).Encode(rep)
	}
	printReport(g.Out(), rep)
	return failedRun(rep.Result)
}

// failedRun is an error when no call of the run succeeded: bench must not
// exit 0 having measured nothing.
func failedRun(r loadgen.Result) error {
	if r.Calls > 0 {
		return nil
	}
	return fmt.Errorf("bench: no call succeeded (errors by code: %v)", r.Errors)
}

// measure runs one timed workload with progress and broker CPU.
func (c *benchFlags) measure(g *Globals, label string, call loadgen.Call) (benchReport, error) {
	opts := loadgen.Options{Clients: c.Clients, Duration: c.Duration, Classify: mapper.ErrorCode}
	if c.showProgress(g) {
		opts.Progress = progressLine(g.ErrOut(), label, c.Duration)
		defer fmt.Fprint(g.ErrOut(), "\r\033[K")
	}
	bcpu := c.brokerCPU()
	var b0 time.Duration
	if bcpu != nil {
		b0, _ = bcpu()
	}
	r, err := loadgen.Run(g.Context(), opts, call)
	if err != nil {
		return benchReport{}, err
	}
	rep := benchReport{
		Workload: label, Path: c.Path, Broker: c.brokerName(),
		Clients: c.Clients, Size: c.Size, Result: r,
	}
	if bcpu != nil {
		if b1, ok := bcpu(); ok {
			d := b1 - b0
			rep.BrokerCPU = &d
		}
	}
	return rep, nil
}

// progressLine draws a bar, the calls so far and their rate.
func progressLine(w io.Writer, label string, total time.Duration) func(int64, time.Duration) {
	if label != "" {
		label += " "
	}
	return func(calls int64, elapsed time.Duration) {
		const width = 30
		done := min(width, int(float64(width)*elapsed.Seconds()/total.Seconds()))
		fmt.Fprintf(w, "\r\033[K%s[%s%s] %4.1fs %d calls, %.0f/s", label,
			strings.Repeat("=", done), strings.Repeat(" ", width-done),
			elapsed.Seconds(), calls, float64(calls)/elapsed.Seconds())
	}
}

func printReport(w io.Writer, rep benchReport) {
	r := rep.Result
	us := func(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/1e3) }
	fmt.Fprintf(w, "%s %s on %s: %d clients, %d-byte payload, %v\n", rep.Workload, rep.Path, rep.Broker, rep.Clients, rep.Size, r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "  calls/s   %.0f (%d calls)\n", r.Rate, r.Calls)
	fmt.Fprintf(w, "  latency   p50 %s  p90 %s  p99 %s  p99.9 %s\n", us(r.P50), us(r.P90), us(r.P99), us(r.P999))
	if len(r.Errors) == 0 {
		fmt.Fprintf(w, "  errors    none\n")
	} else {
		fmt.Fprintf(w, "  errors   ")
		for _, k := range sortedKeys(r.Errors) {
			fmt.Fprintf(w, " %s %d", escape(k), r.Errors[k]) // codes come from agents
		}
		fmt.Fprintln(w)
	}
	per := func(d time.Duration) string {
		if r.Calls == 0 {
			return ""
		}
		return fmt.Sprintf(", %.1f µs per call", float64(d)/1e3/float64(r.Calls))
	}
	fmt.Fprintf(w, "  cpu       this process %v%s\n", r.CPU.Round(time.Millisecond), per(r.CPU))
	if rep.BrokerCPU != nil {
		fmt.Fprintf(w, "            broker %v%s\n", rep.BrokerCPU.Round(time.Millisecond), per(*rep.BrokerCPU))
	}
}

func sortedKeys(m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// baselineReport is the result of --baseline.
type baselineReport struct {
	Rounds   int                          `json:"rounds"`
	Clients  int                          `json:"clients"`
	Size     int                          `json:"size"`
	Broker   string                       `json:"broker"`
	Runs     [][]benchReport              `json:"runs"` // by round, in the order run
	Rate     map[string]loadgen.Quartiles `json:"calls_per_s"`
	Ratio    map[string]loadgen.Quartiles `json:"throughput_ratio"`  // Warren / raw, per round
	P50Ratio map[string]loadgen.Quartiles `json:"p50_latency_ratio"` // Warren / raw, per round
}

// baseline runs Warren and the raw shapes in random order each round.
func (c *benchRequestCmd) baseline(g *Globals) error {
	ctx := g.Context()
	yes := true
	c.Agent = &yes
	f, err := c.start(ctx, g)
	if err != nil {
		return err
	}
	defer f.close()
	body := c.payload()
	raws := map[string]*rawrpc.Pair{}
	for _, shape := range []rawrpc.Shape{rawrpc.DirectReplyTo, rawrpc.ExclusiveQueue} {
		p, err := rawrpc.Start(c.Broker, c.Clients, shape, false)
		if err != nil {
			return fmt.Errorf("bench: raw baseline: %s", strings.ReplaceAll(err.Error(), c.Broker, redactedBroker(c.Broker)))
		}
		defer p.Close()
		raws["raw-"+shape.String()] = p
	}
	calls := map[string]loadgen.Call{
		"warren": func(ctx context.Context) error {
			f.sent.Add(1)
			ctx, cancel := context.WithTimeout(ctx, c.Timeout)
			defer cancel()
			_, err := f.m.Request(ctx, c.Path, body)
			return err
		},
	}
	for name, p := range raws {
		calls[name] = func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, c.Timeout)
			defer cancel()
			_, err := p.Call(ctx, body)
			return err
		}
	}
	names := sortedKeys(map[string]int64{"warren": 0, "raw-direct-reply-to": 0, "raw-exclusive-queue": 0})
	rep := baselineReport{Rounds: c.Rounds, Clients: c.Clients, Size: c.Size, Broker: c.brokerName(),
		Rate: map[string]loadgen.Quartiles{}, Ratio: map[string]loadgen.Quartiles{}, P50Ratio: map[string]loadgen.Quartiles{}}
	rates := map[string][]float64{}
	ratios, p50s := map[string][]float64{}, map[string][]float64{}
	for round := range c.Rounds {
		order := append([]string(nil), names...)
		rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		byName := map[string]benchReport{}
		var runs []benchReport
		for _, name := range order {
			r, err := c.measure(g, fmt.Sprintf("round %d/%d %s", round+1, c.Rounds, name), calls[name])
			if err != nil {
				return err
			}
			r.Workload = name
			if err := failedRun(r.Result); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			byName[name] = r
			runs = append(runs, r)
			rates[name] = append(rates[name], r.Result.Rate)
		}
		rep.Runs = append(rep.Runs, runs)
		w := byName["warren"].Result
		for _, name := range names {
			if name == "warren" {
				continue
			}
			raw := byName[name].Result
			ratios[name] = append(ratios[name], w.Rate/raw.Rate)
			p50s[name] = append(p50s[name], float64(w.P50)/float64(raw.P50))
		}
	}
	for name, xs := range rates {
		rep.Rate[name] = loadgen.Summarise(xs)
	}
	for name := range ratios {
		rep.Ratio[name] = loadgen.Summarise(ratios[name])
		rep.P50Ratio[name] = loadgen.Summarise(p50s[name])
	}
	if c.JSON {
		return json.NewEncoder(g.Out()).Encode(rep)
	}
	out := g.Out()
	fmt.Fprintf(out, "request %s on %s: %d clients, %d-byte payload, %d rounds of %v per variant, random order\n",
		c.Path, rep.Broker, c.Clients, c.Size, c.Rounds, c.Duration)
	for _, name := range names {
		q := rep.Rate[name]
		fmt.Fprintf(out, "  %-22s calls/s median %.0f (quartiles %.0f-%.0f)\n", name, q.Median, q.Q1, q.Q3)
	}
	for _, name := range names {
		if name == "warren" {
			continue
		}
		fmt.Fprintf(out, "  warren / %-20s throughput %v; p50 latency %v\n", name, rep.Ratio[name], rep.P50Ratio[name])
	}
	return nil
}

// redactedBroker is the broker URL as it may be shown.
func redactedBroker(raw string) string { return amqp.RedactURL(raw) }

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = crand.Read(b)
	return hex.EncodeToString(b)
}
