// Package agent runs Warren agents: daemons that host actors and serve their
// methods as services named /actor/method.
//
//	a, _ := agent.New(tr, agent.Config{Identity: "fred"})
//	a.Handle("/simple/echo", agent.HandlerFunc(echo)) // or a.Expose("simple", Simple{})
//	err := a.Run(ctx)
//
// # Design
//
// An agent consumes its own queue (warren.agent.ID, for requests a mapper
// addressed to it) and the shared queue of each service it serves
// (competing consumers, for callers that need no mapper), and pings its
// status to every mapper every PingInterval. The status is the 1-minute load
// average unless WithStatus gives another comparable value. A mapper that
// starts asks every agent to announce itself, and the agent pings at once.
// docs/protocol.md describes every byte.
//
// # Delivery guarantees
//
// A request is acknowledged only after its handler returned and its reply
// was handed to the broker; an agent that dies before that leaves the
// request to be redelivered. A handler may therefore run twice for one
// request; the caller receives one result. A request whose deadline passed
// is not started, even when it passed while the request waited for its
// service's concurrency limit. Bad input (unknown message type, missing path, a body
// that is not JSON or does not decode, an unknown path, a panicking
// handler) gets an error reply when the sender waits for one, and is
// otherwise dead-lettered to warren.dlx with the reason in the
// warren-dead-reason header. The agent keeps serving.
//
// # Progress
//
// A handler reports intermediate results with Progress(ctx, key, value);
// a caller that asked for them (mapper.OnProgress) receives each, in
// order, before the result. Others receive none.
//
// # Streams
//
// A streamed request (mapper.Stream) arrives in chunks in the agent's own
// queue; the agent stores them in a file (WithStreams) and runs the handler
// once the data is whole and checked, with Request.Stream reading it. A
// broken stream is answered with code stream_broken without running the
// handler. A handler may also return a *StreamResult, which goes to a
// caller that takes streamed results (mapper.AcceptStream) in chunks.
//
// # Shutdown
//
// When Run's context ends the agent pings with every service inactive, so
// that mappers stop selecting it (it stays registered, so they do not
// re-send its work in hand elsewhere), and stops taking work from the
// shared queues. What still reaches its own queue is passed on, as a
// declined request or push, except pushes sent to it only (by identity, a
// fan-out copy, or by tags), which it runs. It lets the requests in hand finish (up to
// DrainTimeout; then their contexts are cancelled and they are requeued,
// not lost), pinging meanwhile, acks them, unregisters and returns nil.
package agent
