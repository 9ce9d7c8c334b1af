// Package daemon is the Warren daemon: an agent, configured by one YAML
// file, whose services are plugins written in any language and run as
// worker processes (package worker).
//
//	cfg, err := daemon.Load("warren.yaml") // errors point at file:line
//	d, err := daemon.New(cfg, tr, daemon.WithLogger(log))
//	err = d.Run(ctx)                        // serves until ctx ends, then drains
//
// A service entry names a command, its methods and a worker count; the
// daemon serves /service/method for each method by sending the request to
// a free worker in JSON lines (docs/plugins.md) and its reply back to the
// caller. A worker that crashes, writes garbage or overruns the call's
// timeout is replaced, and that call fails with a clear error code
// (worker_crashed, worker_malformed, worker_timeout); it is never lost.
//
// A service may also be written in Go and compiled in ([Service],
// [WithGoServices]; daemonmain.Main builds a warren binary with them): a
// config entry `NAME: {go: true, config: ...}` serves its actor's methods.
//
// # Control
//
// The daemon's agent also serves /daemon.IDENTITY/status (a [Status]:
// time, pid, uptime, services, plugins, calls in flight and handled),
// /daemon.IDENTITY/reload and /daemon.IDENTITY/stop ([ControlPath]);
// `warren daemon status|reload|stop` call them by the daemon's identity. Run refuses to start when a daemon with the same
// identity answers.
//
// # Reload
//
// [Daemon.Reload] applies a new config without failing a request: the
// workers of kept services restart after the calls they have in hand;
// removed services are advertised inactive, declined from then on (so
// mappers pass them to other agents), and their workers stop once their
// calls in hand finished; added services are served by a second agent,
// <identity>.<n>, because an agent's services are fixed once it runs (the
// daemon's own identity gets them at its next restart). In secure mode an
// agent's identity is its certificate's, so a reload that adds services is
// refused there: restart the daemon instead. Keys that only a restart
// applies (identity, broker, tags, ...) are reported in
// ReloadResult.NeedsRestart and keep their old values.
package daemon
