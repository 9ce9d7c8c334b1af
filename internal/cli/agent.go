package cli

import (
	"fmt"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/simple"
)

type agentCmd struct {
	brokerFlags
	Token    string        `name:"token" short:"t" help:"Agent identity (default: generated)."`
	Tags     []string      `name:"tag" help:"Tag the agent (repeatable)."`
	Ping     time.Duration `name:"ping" default:"15s" help:"Ping (heartbeat) interval."`
	Prefetch int           `name:"prefetch" default:"64" help:"Requests worked on at once, per queue."`
	Drain    time.Duration `name:"drain-timeout" default:"30s" help:"On SIGTERM, how long to finish requests in hand before requeueing them."`
}

func (c *agentCmd) Help() string {
	return `Runs an agent serving the example actor: /simple/echo, /simple/load,
/simple/sleep, /simple/whoami and /simple/fail. SIGINT or SIGTERM drains it:
it stops taking work, finishes what is in hand, unregisters and exits 0.`
}

func (c *agentCmd) Run(g *Globals) error {
	ctx := g.Context()
	tr, certID, err := c.dialAs(ctx, g, "agent")
	if err != nil {
		return err
	}
	defer tr.Close()
	if certID != "" {
		if c.Token != "" && c.Token != certID {
			return usageError{fmt.Errorf("--token %q differs from the certificate's identity %q", c.Token, certID)}
		}
		c.Token = certID
	}
	a, err := agent.New(tr, agent.Config{
		Identity: c.Token, Tags: c.Tags, PingInterval: c.Ping, Prefetch: c.Prefetch, DrainTimeout: c.Drain,
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
