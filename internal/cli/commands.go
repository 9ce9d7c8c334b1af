package cli

// commands lists the subcommands. One field per subcommand; each type lives
// in its own file and has a Run(*Globals) error method.
type commands struct {
	Demo      demoCmd      `cmd:"" help:"Run the Nanite walkthrough in one process: agents fred and bob, a mapper, every selector, an agent dying and returning."`
	Agent     agentCmd     `cmd:"" help:"Run an agent serving the example actor /simple/*."`
	Request   requestCmd   `cmd:"" help:"Send a request and print the result(s) as JSON."`
	Push      pushCmd      `cmd:"" help:"Send a push (no result)."`
	Publish   publishCmd   `cmd:"" help:"Publish an event to a topic key (confirmed by the broker)."`
	Subscribe subscribeCmd `cmd:"" help:"Tail the events matching a pattern as JSON lines."`
	Agents    agentsCmd    `cmd:"" help:"List the live agents: identity, services, status, tags, last heartbeat."`
	Services  servicesCmd  `cmd:"" help:"Discover the fabric's services in NATS micro's schema (ls, info, stats), with --json."`
	DLQ       dlqCmd       `cmd:"" name:"dlq" help:"Inspect, replay and purge dead letters (list, show, replay, purge)."`
	Setup     setupCmd     `cmd:"" help:"Create a vhost, Warren's exchanges and least-privilege agent and mapper users (idempotent)."`
	Bert      bertCmd      `cmd:"" help:"Run the Ernie-compatible BERT-RPC server, or talk to one (stats, reload-handlers, halt, bench)."`
	Daemon    daemonCmd    `cmd:"" help:"Run the Warren daemon: plugins in any language from one YAML config (start, stop, status, reload, config)."`
	Send      sendCmd      `cmd:"" help:"Send a message to a peer (HareDo's send); prints its id."`
	Call      callCmd      `cmd:"" help:"Send a message to a peer and print its reply (HareDo's call)."`
	Tower     towerCmd     `cmd:"" help:"Run the Control Tower: a live web page of the fabric (agents, services, send, dead letters) on 127.0.0.1:4000, with /metrics."`
	Console   consoleCmd   `cmd:"" help:"Drive the fabric by hand at a prompt (Nanite's mapper console): agents, services, request, push, watch."`
	Bench     benchCmd     `cmd:"" help:"Load the fabric and measure it: calls/s, latency quantiles, errors, CPU; --baseline compares with hand-written amqp091-go."`
	Version   versionCmd   `cmd:"" help:"Print Warren's version."`
}
