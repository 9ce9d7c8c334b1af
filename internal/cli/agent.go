package cli

import (
	"errors"
	"fmt"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/simple"
	"github.com/warrenrpc/warren/metrics"
	"github.com/warrenrpc/warren/wire"
)

type agentCmd struct {
	brokerFlags
	Token    string        `name:"token" short:"t" help:"Agent identity (default: generated)."`
	Tags     []string      `name:"tag" help:"Tag the agent (repeatable)."`
	Ping     time.Duration `name:"ping" default:"15s" help:"Ping (heartbeat) interval, 100ms to 1h: mappers drop an agent silent for three."`
	Prefetch int           `name:"prefetch" default:"64" help:"Requests worked on at once, per queue."`
	Drain    time.Duration `name:"drain-timeout" default:"30s" help:"On SIGTERM, how long to finish requests in hand before requeueing them."`
	Durable  bool          `name:"durable" help:"Make the agent's own queue a durable quorum queue: requests addressed to it survive a broker restart (send them with --persistent), and one that keeps crashing the agent is dead-lettered after --max-deliveries."`
	MaxDeliv int           `name:"max-deliveries" default:"5" help:"How often one message is delivered (with --durable) or declined and passed on, before it is dead-lettered with reason delivery_limit."`
	IDWait   time.Duration `name:"identity-wait" default:"30s" help:"When the agent's queue already has a consumer (another agent with this --token, or the broker not yet rid of this agent's previous connection), wait this long for it to go, then exit 1."`
	Metrics  string        `name:"metrics-addr" placeholder:"HOST:PORT" help:"Serve Prometheus metrics on http://HOST:PORT/metrics (requests, errors, latency, dead letters, reconnects; no authentication: bind a private address)."`
}

func (c *agentCmd) Help() string {
	return `Runs an agent serving the example actor: /simple/echo, /simple/load,
/simple/sleep, /simple/whoami, /simple/digest and /simple/fail. SIGINT or
SIGTERM drains it: it stops taking work, finishes what is in hand (up to --drain-timeout),
unregisters and exits 0. With --durable its queue is a quorum queue whose
requests survive a broker restart (send them with --persistent).

One agent per identity: the agent consumes its queue warren.agent.TOKEN
alone. A second agent with the same --token logs an error, waits
--identity-wait for the first to go, then exits 1. An agent restarted with
or without --durable (or with another --max-deliveries) replaces its old
queue when that is empty and unused, and otherwise exits 1 saying how many
messages it holds and what to do.`
}

// The bounds of --ping: the protocol allows pings down to
// wire.MinPingInterval (10ms, for tests); from the command line, where the
// default is 15s, a ping below 100ms is a mistake.
const (
	minPing = 100 * time.Millisecond
	maxPing = wire.MaxPingInterval
)

func (c *agentCmd) Run(g *Globals) error {
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"--ping", c.Ping}, {"--drain-timeout", c.Drain}, {"--identity-wait", c.IDWait}} {
		if d.v <= 0 {
			return usageError{fmt.Errorf("%s %v: want a positive duration", d.flag, d.v)}
		}
	}
	if c.Ping < minPing || c.Ping > maxPing {
		// Each ping is a publish to every mapper: below this the agent
		// spends its time pinging (1ns logged 22,000 warnings a second).
		return usageError{fmt.Errorf("--ping %v: want %v to %v", c.Ping, minPing, maxPing)}
	}
	if c.Token != "" {
		if err := wire.CheckIdentity(c.Token); err != nil {
			return usageError{fmt.Errorf("--token: %w", err)}
		}
	}
	if c.Prefetch < 1 || c.MaxDeliv < 1 {
		return usageError{errors.New("--prefetch and --max-deliveries must be at least 1")}
	}
	ctx := g.Context()
	tr, certID, plain, err := c.dialAMQP(ctx, g, "agent")
	if err != nil {
		return err
	}
	defer tr.Close()
	if c.Metrics != "" {
		reg := newMetricsRegistry()
		if tr, err = metrics.Agent(tr, reg); err != nil {
			return err
		}
		if err := metrics.Connection(plain, reg); err != nil {
			return err
		}
		ms, err := serveMetrics(g, c.Metrics, reg)
		if err != nil {
			return err
		}
		defer ms.stop()
	}
	if certID != "" {
		if c.Token != "" && c.Token != certID {
			return usageError{fmt.Errorf("--token %q differs from the certificate's identity %q", c.Token, certID)}
		}
		c.Token = certID
	}
	a, err := agent.New(tr, agent.Config{
		Identity: c.Token, Tags: c.Tags, PingInterval: c.Ping, Prefetch: c.Prefetch, DrainTimeout: c.Drain,
		Durable: c.Durable, MaxDeliveries: c.MaxDeliv, IdentityWait: c.IDWait,
	}, agent.WithLogger(g.Logger()))
	if err != nil {
		return usageError{err}
	}
	if err := a.Expose("simple", simple.Simple{Identity: a.Identity()}); err != nil {
		return err
	}
	go func() {
		select {
		case <-a.Ready():
			g.Logger().Info("agent serving", "agent", a.Identity(), "services", a.Services())
		case <-ctx.Done():
		}
	}()
	return a.Run(ctx)
}
