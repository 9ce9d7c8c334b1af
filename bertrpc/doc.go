// Package bertrpc is an Ernie-compatible BERT-RPC server.
//
// Clients speak BERT-RPC over TCP: 4-byte big-endian length-prefixed BERT
// packets (BERPs). A call {call, Module, Function, Args} is answered with
// {reply, Result} or {error, {Type, Code, Class, Detail, Backtrace}}; a cast
// {cast, Module, Function, Args} is answered with {noreply} at once and run
// afterwards. An {info, priority, [low]} (or {info, priority, low}) BERP
// before a request puts that request in the low-priority queue; other info
// BERPs are accepted and ignored.
//
// # Design
//
// A module is served in one of three ways, chosen by its [ModuleConfig]:
//
//   - native: Go functions compiled into the binary and registered in a
//     [Registry] ([WithNative]); see package nat for an example module.
//   - external: worker processes started from a command line, Count of them,
//     speaking Ernie's external protocol unchanged: the command gets
//     " --procline xxx…" appended (padding to 150 characters) and runs under
//     /bin/sh -c; requests and replies are BERPs on file descriptors 3 (to
//     the worker) and 4 (from the worker); stdin and stdout stay free; each
//     worker has one request at a time. Handlers written for Ernie's Ruby
//     library (Ernie.expose(:ext, Ext)) run as they are. The worker gets the
//     request re-encoded with the specification's tags only (what modern
//     Erlang clients write, NEW_FLOAT_EXT and UTF-8 atoms, the Ruby bert
//     gem cannot read); a reply that is not BERT is not forwarded: the
//     client gets a WorkerError and the worker is restarted.
//   - fabric: calls forwarded to Warren services through a [Fabric]:
//     {call, simple, echo, [X]} becomes a request to /simple/echo with X as
//     JSON ([ArgsToJSON], [JSONToTerm]). With [WithTracerProvider] each
//     such call has a span, the parent of the fabric request's.
//
// Shadowing: a native and an external module of the same name (native first
// in the config) are tried in order. The native function is used when it is
// registered with the call's arity and, if Function_pred exists with that
// arity, only when the predicate returns true for the arguments; otherwise
// the external module serves the call.
//
// External requests wait in two queues per module; a free worker always
// takes from the high queue first. Native and fabric calls run at once.
//
// Errors follow the BERT-RPC specification: protocol errors (code 1: no
// header, 2: no data or too large, 0: malformed BERT or request), server
// errors (1: no such module, 2: no such function, 0: timeouts, crashed
// workers, halting), user errors (handler failures, class chosen by the
// handler) and proxy errors (fabric failures). A bad request never affects
// other connections.
//
// The server answers Ernie's administrative calls on the module __admin__:
// stats (Ernie's key=value lines, see [Server.Stats]), reload_handlers
// (restart workers with fresh code once idle) and halt.
//
// The access log ([Config.AccessLog]) has Ernie's line format and is
// reopened when the file is moved or deleted.
//
// # Connections
//
// Ernie closes the connection after each reply, and its clients open one
// connection per call. This server keeps the connection open instead, so
// one connection can carry many requests (answered in order); clients that
// close after the reply see no difference.
//
// # Limits
//
// Ernie bounds nothing; this server bounds what one client can hold
// ([Config]): open connections ([Config.MaxConnections]: over it the
// longest-idle connection is closed, or, when all have a call in hand, the
// new one is refused with a server BusyError), pending casts
// ([Config.MaxPendingCasts]: a cast over it is answered with a BusyError
// instead of {noreply}, and not run), the time a frame may take once begun
// ([Config.FrameTimeout]) and between requests ([Config.IdleTimeout]). Out
// of file descriptors, the server closes its longest-idle connection to
// accept the next one, and otherwise backs off and keeps serving. A
// frame's buffer grows with the data that arrives, not with the length its
// header announces. Fabric calls refuse integers over [MaxIntDigits].
//
// # Delivery guarantees
//
// A call is answered exactly once: with its result, or with an error when
// the handler fails, the worker crashes (it is restarted), the call's
// timeout expires ([Config.CallTimeout]; Ernie had none) or the server is
// halting. A cast is acknowledged before it runs; if it fails nobody is
// told. Casts have no timeout, as in Ernie, unless [Config.CastTimeout]
// sets one.
//
// # Shutdown
//
// [Server.Run] returns when its context ends or after [Server.Halt] (or
// __admin__:halt): it stops accepting, waits for the requests in hand (at
// most the drain timeout, [WithDrainTimeout]), closes idle connections and
// stops the workers by closing their fd 3, killing them if they do not exit.
// Run waits for native handlers to return, so handlers must honour ctx.
package bertrpc
