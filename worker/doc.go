// Package worker runs external worker processes, in any language, and
// calls them one request at a time: Ernie's external modules, and the
// plugins of the Warren daemon.
//
//	p, err := worker.New(worker.Config{
//		Name: "echo", Command: []string{"python3", "echo.py"}, Workers: 2,
//		Protocol: worker.JSONLines{},
//	})
//	go p.Run(ctx)
//	res, err := p.Call(ctx, worker.Request{Method: "echo", Params: []byte(`"hi"`)})
//
// # Workers
//
// A [Pool] keeps Workers processes running. Each takes one request at a
// time; a call waits for a free worker. A worker that exits, writes
// something that is not a reply, or overruns the call's deadline is killed
// (its whole process group) and replaced, with exponential backoff when it
// dies within a second of starting. The call it had fails with a [*Error]
// whose code says why ([CodeCrashed], [CodeMalformed], [CodeTimeout]); it
// is never retried behind the caller's back, since the worker may have
// done part of the work. A plugin that keeps dying at start makes calls
// fail at once with [CodeUnavailable] and the tail of its standard error,
// instead of waiting for a worker that will not come.
//
// [Pool.Reconfigure] swaps the command, environment, count or timeout:
// idle workers restart at once, busy ones once they answered, so no call in
// hand is lost. [Pool.Run] stops the workers when its context ends,
// after the calls they have in hand.
//
// # Protocols
//
// [JSONLines] is one JSON object per line on the worker's stdin and stdout
// (docs/plugins.md). A worker's standard error is logged line by line,
// never read as a reply.
package worker
