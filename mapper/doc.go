// Package mapper dispatches requests to Warren agents.
//
// A Mapper keeps a live registry of agents from their heartbeats and picks
// targets with a Selector: LeastLoaded (the default), All (fan-out),
// Random, RoundRobin, Identity, Tagged, or any SelectorFunc over the agents'
// status and tags. Any number of mappers run at once, all hot: each hears
// every heartbeat and has its own reply queue.
//
//	m, _ := mapper.New(tr, mapper.Config{})
//	go m.Run(ctx)
//	r, err := m.Request(ctx, "/simple/echo", "hi")
//	rs, err := m.FanOut(ctx, "/simple/echo", "hi")
//	err = m.Push(ctx, "/simple/echo", "hi", mapper.Select(mapper.RoundRobin()))
//
// # Design
//
// A mapper that starts publishes an announce request, so agents ping at once
// and Request works within a round trip rather than a ping interval; for
// AnnounceWait after Run is ready, "no agent" waits for agents to answer.
// An agent silent for the ping timeout (three of its ping intervals unless
// Config.PingTimeout says otherwise) is dropped from dispatch and taken back
// when it pings again; an agent that unregisters is dropped at once. So is
// an agent the broker shows gone: while a request waits on it, the mapper
// asks the broker (Transport.InspectQueue) whether the agent's queue still
// has a consumer; a killed agent's connection, and with it its consumer,
// goes at once, so its requests are re-sent within about a second whatever
// the ping interval and however young the mapper. A request or push that
// finds an agent's queue gone (unroutable: a stale or forged heartbeat)
// drops that agent and goes to the next one.
//
// The registry is indexed by service path (and by path and tag), each
// index kept sorted by identity and by status as heartbeats arrive, so the
// built-in selectors pick an agent in place, in well under a microsecond at
// 10,000 agents, without copying the others; a custom Selector gets a copy
// of the candidates, in identity order, made only for it (see Selector and
// docs/scaling.md).
//
// # Delivery guarantees
//
// Context deadlines are the timeouts, and travel with each request as its
// expiration and warren-deadline header, so agents do not start expired
// work. A caller receives each result at most once: replies are matched by
// correlation id, and late or duplicate replies are discarded (counted by
// LateReplies). When the agent a Request was sent to leaves or expires
// before answering, the request is re-sent to another live agent serving
// the path; it may then run twice, and the caller gets the first result.
// Requests and pushes are published mandatory: an agent queue that no longer
// exists is an error, not a silent loss. A reply is taken only from an agent
// the request was addressed to (its app_id; signed in secure
// mode); others are discarded and counted (ForeignReplies), except, outside
// secure mode, for a Request whose selector does not name its agents: a
// live agent serving the path may answer it once a rescue moved it to the
// shared queue.
//
// When the registry drops an agent, the mapper also drains what is left in
// the agent's queue (which RabbitMQ would delete, messages and all, when it
// expires) into the shared queue of each message's path, so that confirmed
// pushes are not lost; a message whose path has no shared queue is
// dead-lettered with reason DeadReasonAgentGone. Its own requests that it
// re-sent, or that wait for that agent only (To, tags), stay out of it. Any
// number of mappers drain at once, each message moved once; a drain stops
// when the queue is idle for a second, after a minute, when the agent comes
// back, or when the mapper stops. There is no drain in secure mode, where
// messages are sealed to their agent.
//
// # Progress
//
// OnProgress asks the agent for the progress its handler reports
// (agent.Progress) and hands each to a callback, in order, before Request
// or FanOut returns.
//
// # Streams
//
// Stream sends data of any size to one agent in chunks, paced by the
// agent's credits, with a checksum; PushStream does so as a push,
// returning once the agent holds the data; AcceptStream takes a result
// streamed the same way (Reply.Stream) (docs/streams.md).
//
// # Shutdown
//
// When Run's context ends, pending calls fail with ErrNotRunning and Run
// returns nil. The mapper never closes the transport it was given.
package mapper
