package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/simple"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/transport/mem"
)

type demoCmd struct {
	Broker string        `name:"broker" short:"b" env:"WARREN_BROKER" help:"Run on this RabbitMQ (amqp://...) instead of the embedded broker."`
	Ping   time.Duration `name:"ping" default:"200ms" help:"Agents' ping interval; the mapper drops an agent after 3 silent intervals."`
}

func (c *demoCmd) Help() string {
	return `Runs Nanite's walkthrough in one process, on the embedded broker unless
--broker names a RabbitMQ: agents fred and bob serve /simple/echo; a mapper
shows least_loaded dispatch (with the loads it chose by), fan-out with
selector all, random and round_robin; fred crashes and requests are still
served; the registry drops fred after the ping timeout and takes it back
when it returns.`
}

// demoAgent is one agent of the demo with a status the demo sets.
type demoAgent struct {
	name   string
	load   atomic.Uint64 // float64 bits
	tr     transport.Transport
	stop   context.CancelFunc
	done   chan error
	served atomic.Int64
}

func (d *demoAgent) setLoad(f float64) { d.load.Store(math.Float64bits(f)) }
func (d *demoAgent) loadNow() float64  { return math.Float64frombits(d.load.Load()) }

func (c *demoCmd) Run(g *Globals) error {
	if c.Ping < minPing || c.Ping > maxPing {
		return usageError{fmt.Errorf("--ping %v: want %v to %v", c.Ping, minPing, maxPing)}
	}
	ctx, cancel := context.WithTimeout(g.Context(), 50*time.Second)
	defer cancel()
	out := g.Out()
	start := time.Now()

	var connect func(name string) (transport.Transport, error)
	if c.Broker == "" {
		b := mem.NewBroker()
		connect = func(string) (transport.Transport, error) { return b.Connect(), nil }
		fmt.Fprintln(out, "Warren demo on the embedded broker (no RabbitMQ needed).")
	} else {
		bf := brokerFlags{Broker: c.Broker}
		connect = func(name string) (transport.Transport, error) { return bf.dial(ctx, g, "demo "+name) }
		fmt.Fprintf(out, "Warren demo on %s.\n", amqp.RedactURL(c.Broker))
	}
	var closers []transport.Transport
	defer func() {
		for _, tr := range closers {
			tr.Close()
		}
	}()

	startAgent := func(name string, load float64) (*demoAgent, error) {
		tr, err := connect(name)
		if err != nil {
			return nil, err
		}
		closers = append(closers, tr)
		d := &demoAgent{name: name, tr: tr, done: make(chan error, 1)}
		d.setLoad(load)
		a, err := agent.New(tr, agent.Config{Identity: name, PingInterval: c.Ping, DrainTimeout: 5 * time.Second},
			agent.WithLogger(g.Logger()), agent.WithStatus(func() any { return d.loadNow() }))
		if err != nil {
			return nil, err
		}
		if err := a.Expose("simple", simple.Simple{Identity: name}); err != nil {
			return nil, err
		}
		actx, stop := context.WithCancel(ctx)
		d.stop = stop
		go func() { d.done <- a.Run(actx) }()
		select {
		case <-a.Ready():
		case err := <-d.done:
			return nil, fmt.Errorf("agent %s: %w", name, err)
		}
		return d, nil
	}

	if c.Broker != "" {
		if err := checkNoSimpleAgents(ctx, connect); err != nil {
			return err
		}
	}

	fmt.Fprintf(out, "\n1. Agents fred and bob start, each serving /simple/echo; they ping every %v.\n", c.Ping)
	fred, err := startAgent("fred", 0.20)
	if err != nil {
		return err
	}
	bob, err := startAgent("bob", 0.70)
	if err != nil {
		return err
	}

	tr, err := connect("mapper")
	if err != nil {
		return err
	}
	closers = append(closers, tr)
	var evMu sync.Mutex
	var evs []string
	joined := make(chan string, 16)
	m, err := mapper.New(tr, mapper.Config{Identity: "demo-mapper"}, mapper.WithLogger(g.Logger()),
		mapper.WithEvents(func(e mapper.Event) {
			st, _ := json.Marshal(e.Agent.Status)
			line := fmt.Sprintf("   [registry] agent %s %s (status %s) at +%v", e.Agent.Identity, e.Kind, st, time.Since(start).Round(time.Millisecond))
			evMu.Lock()
			evs = append(evs, line)
			evMu.Unlock()
			if e.Kind == mapper.AgentJoined {
				joined <- e.Agent.Identity
			}
		}))
	if err != nil {
		return err
	}
	mctx, stopMapper := context.WithCancel(ctx)
	mdone := make(chan error, 1)
	go func() { mdone <- m.Run(mctx) }()
	defer func() { stopMapper(); <-mdone }()
	// seen waits until the registry events named ("fred lost") have been
	// reported: they reach the event callback a moment after the registry
	// changed.
	seen := func(want ...string) error {
		return poll(ctx, "registry events", func() bool {
			evMu.Lock()
			defer evMu.Unlock()
			for _, w := range want {
				if !slices.ContainsFunc(evs, func(l string) bool { return strings.Contains(l, "agent "+w+" ") }) {
					return false
				}
			}
			return true
		})
	}
	// seenAny waits until one of the registry events named has been
	// reported.
	seenAny := func(want ...string) error {
		return poll(ctx, "registry events", func() bool {
			evMu.Lock()
			defer evMu.Unlock()
			return slices.ContainsFunc(want, func(w string) bool {
				return slices.ContainsFunc(evs, func(l string) bool { return strings.Contains(l, "agent "+w+" ") })
			})
		})
	}
	flush := func() {
		evMu.Lock()
		for _, l := range evs {
			fmt.Fprintln(out, escape(l))
		}
		evs = evs[:0]
		evMu.Unlock()
	}
	fmt.Fprintln(out, "   A mapper starts and asks every agent to announce itself.")
	if err := waitAgents(ctx, m, "fred", "bob"); err != nil {
		return err
	}
	if err := seen("fred joined", "bob joined"); err != nil {
		return err
	}
	flush()

	echo := func(sel mapper.Selector) (string, error) {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		r, err := m.Request(rctx, "/simple/echo", "hello nanite", mapper.Select(sel))
		if err != nil {
			return "", err
		}
		var s string
		if err := r.Decode(&s); err != nil {
			return "", err
		}
		return r.Agent, nil
	}

	fmt.Fprintln(out, "\n2. least_loaded (the default) picks the agent with the smallest status.")
	for _, round := range []struct{ fred, bob float64 }{{0.20, 0.70}, {0.90, 0.10}} {
		fred.setLoad(round.fred)
		bob.setLoad(round.bob)
		if err := waitStatus(ctx, m, map[string]float64{"fred": round.fred, "bob": round.bob}); err != nil {
			return err
		}
		who, err := echo(mapper.LeastLoaded())
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "   loads fred=%.2f bob=%.2f → /simple/echo \"hello nanite\" answered by %s\n", round.fred, round.bob, escape(who))
	}

	fmt.Fprintln(out, "\n3. Selector all: one request, a result per agent.")
	if err := c.fanOut(ctx, out, m); err != nil {
		return err
	}

	fmt.Fprintln(out, "\n4. Selector random, 10 requests:")
	if err := tally(out, 10, func() (string, error) { return echo(mapper.Random()) }); err != nil {
		return err
	}
	fmt.Fprintln(out, "   Selector round_robin, 6 requests:")
	rr := mapper.RoundRobin()
	var order []string
	for range 6 {
		who, err := echo(rr)
		if err != nil {
			return err
		}
		order = append(order, who)
	}
	fmt.Fprintf(out, "   %s\n", escape(strings.Join(order, " → ")))

	fmt.Fprintln(out, "\n5. fred crashes: its connection drops without unregistering. Requests are still served.")
	fred.setLoad(0.05) // least_loaded would still prefer fred while the registry lists it
	if err := waitStatus(ctx, m, map[string]float64{"fred": 0.05}); err != nil {
		return err
	}
	crashed := time.Now()
	fred.tr.Close()
	<-fred.done
	t0 := time.Now()
	who, err := echo(mapper.LeastLoaded())
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "   /simple/echo answered by %s after %v (sent to fred, re-sent to bob when the mapper dropped fred)\n", escape(who), time.Since(t0).Round(time.Millisecond))
	if err := waitGone(ctx, m, "fred"); err != nil {
		return err
	}
	// The mapper drops fred as lost (its queue has no consumer: the
	// broker knows at once) or, with the demo's 200ms pings, as expired
	// when its ping timeout comes first: whichever is reported.
	if err := seenAny("fred lost", "fred expired"); err != nil {
		return err
	}
	flush()
	fmt.Fprintf(out, "   the registry dropped fred %v after the crash; live agents: %v\n", time.Since(crashed).Round(time.Millisecond), names(m.Agents()))
	for range 3 {
		who, err := echo(mapper.LeastLoaded())
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "   /simple/echo answered by %s\n", escape(who))
	}

	fmt.Fprintln(out, "\n6. fred returns with the same identity and rejoins.")
	for len(joined) > 0 {
		<-joined
	}
	if fred, err = startAgent("fred", 0.05); err != nil {
		return err
	}
	if err := waitAgents(ctx, m, "fred", "bob"); err != nil {
		return err
	}
	if err := seen("fred joined"); err != nil {
		return err
	}
	flush()
	who, err = echo(mapper.LeastLoaded())
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "   least_loaded → answered by %s\n", escape(who))
	if err := c.fanOut(ctx, out, m); err != nil {
		return err
	}

	fmt.Fprintln(out, "\n7. Both agents stop gracefully: they finish their work and unregister.")
	for _, d := range []*demoAgent{fred, bob} {
		d.stop()
		if err := <-d.done; err != nil {
			return fmt.Errorf("agent %s: %w", d.name, err)
		}
	}
	if err := waitGone(ctx, m, "fred", "bob"); err != nil {
		return err
	}
	if err := seen("fred left", "bob left"); err != nil {
		return err
	}
	flush()
	rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = m.Request(rctx, "/simple/echo", "anyone?")
	rcancel()
	fmt.Fprintf(out, "   a request now fails clearly: %v\n", err)
	if !errors.Is(err, mapper.ErrNoAgent) {
		return fmt.Errorf("want no-agent error, got %v", err)
	}
	fmt.Fprintf(out, "\nDone in %v.\n", time.Since(start).Round(time.Millisecond))
	return nil
}

func (c *demoCmd) fanOut(ctx context.Context, out io.Writer, m *mapper.Mapper) error {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rs, err := m.FanOut(rctx, "/simple/echo", "hello nanite")
	if err != nil {
		return err
	}
	res := map[string]any{}
	for id, r := range rs {
		res[id] = replyJSON(r)
	}
	b, _ := json.Marshal(res)
	fmt.Fprintf(out, "   /simple/echo \"hello nanite\" with selector all → %s\n", escapeJSON(b))
	return nil
}

func tally(out io.Writer, n int, f func() (string, error)) error {
	count := map[string]int{}
	for range n {
		who, err := f()
		if err != nil {
			return err
		}
		count[who]++
	}
	var parts []string
	for _, id := range slices.Sorted(func(yield func(string) bool) {
		for k := range count {
			if !yield(k) {
				return
			}
		}
	}) {
		parts = append(parts, fmt.Sprintf("%s×%d", id, count[id]))
	}
	fmt.Fprintf(out, "   %s\n", escape(strings.Join(parts, " ")))
	return nil
}

func names(as []mapper.AgentInfo) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.Identity)
	}
	return out
}

// poll calls cond every 10ms until it is true or ctx ends.
func poll(ctx context.Context, what string, cond func() bool) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("demo: waiting for %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

func waitAgents(ctx context.Context, m *mapper.Mapper, ids ...string) error {
	return poll(ctx, "agents "+strings.Join(ids, ", "), func() bool {
		live := names(m.Agents())
		for _, id := range ids {
			if !slices.Contains(live, id) {
				return false
			}
		}
		return true
	})
}

func waitGone(ctx context.Context, m *mapper.Mapper, ids ...string) error {
	return poll(ctx, "agents to leave", func() bool {
		live := names(m.Agents())
		for _, id := range ids {
			if slices.Contains(live, id) {
				return false
			}
		}
		return true
	})
}

// waitStatus waits until the registry shows the statuses given (the next
// pings carry them).
func waitStatus(ctx context.Context, m *mapper.Mapper, want map[string]float64) error {
	return poll(ctx, "statuses", func() bool {
		n := 0
		for _, a := range m.Agents() {
			if w, ok := want[a.Identity]; ok {
				if f, ok := a.Status.(float64); ok && f == w {
					n++
				}
			}
		}
		return n == len(want)
	})
}

// checkNoSimpleAgents refuses to run the demo on a broker where agents
// already serve /simple/echo (warren agent's built-in actors) or are named
// fred or bob: the demo's selections would pick them, and agents sharing
// an identity share its queue and its registry record.
func checkNoSimpleAgents(ctx context.Context, connect func(string) (transport.Transport, error)) error {
	tr, err := connect("probe")
	if err != nil {
		return err
	}
	defer tr.Close()
	m, err := mapper.New(tr, mapper.Config{})
	if err != nil {
		return err
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(mctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-m.Ready():
	case err := <-done:
		done <- err
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
	// Agents answer the mapper's announce within a round trip.
	t := time.NewTimer(500 * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	var clash []string
	for _, a := range m.Agents() {
		if a.Identity == "fred" || a.Identity == "bob" || slices.Contains(a.Services, "/simple/echo") {
			clash = append(clash, a.Identity)
		}
	}
	if len(clash) > 0 {
		slices.Sort(clash)
		return fmt.Errorf("this broker already runs agents serving /simple/echo or named fred or bob (%s): "+
			"the demo's own fred and bob would mix with them. Stop them, or give the demo a vhost of its own "+
			"(rabbitmqctl add_vhost demo; rabbitmqctl set_permissions -p demo guest '.*' '.*' '.*'; --broker amqp://guest:guest@127.0.0.1:5672/demo)",
			strings.Join(clash, ", "))
	}
	return nil
}
