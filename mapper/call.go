package mapper

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Reply is one agent's answer. Exactly one of Body and Err is set.
type Reply struct {
	Agent string
	Body  json.RawMessage // the result, JSON
	// Err is a *wire.RemoteError when the handler failed, or wraps
	// ErrTimeout when the agent did not answer in time.
	Err error
	// Stream reads a streamed result (AcceptStream), whole and checked,
	// of StreamSize bytes; nil otherwise. Close the Reply to remove it.
	Stream     io.ReadCloser
	StreamSize int64
}

// Decode unmarshals the result into v, or returns the reply's error.
func (r *Reply) Decode(v any) error {
	if r.Err != nil {
		return r.Err
	}
	return json.Unmarshal(r.Body, v)
}

// Results maps agent identities to their replies, for fan-out.
type Results map[string]*Reply

// Missing returns the identities of the agents that did not answer in
// time, sorted.
func (rs Results) Missing() []string {
	var out []string
	for id, r := range rs {
		if errors.Is(r.Err, ErrTimeout) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// CallOption tunes one Request, FanOut or Push.
type CallOption func(*call)

type call struct {
	sel        Selector
	tags       []string
	persistent bool
	park       bool
	retry      bool
	ttl        time.Duration
	progress   func(Progress) // OnProgress
	// progressIdle: ProgressTimeout.
	progressIdle time.Duration
	chunk        int // ChunkSize
	// acceptStream: AcceptStream.
	acceptStream bool
}

// TTL gives a push a time to live of its own, independent of the context
// that bounds the publish: an agent does not start it later, and a broker
// queue drops it (into warren.dead, reason expired) when nobody took it in
// time. For requests the context's deadline is the TTL.
func TTL(d time.Duration) CallOption { return func(c *call) { c.ttl = d } }

// withTTL applies the push TTL to msg, keeping an earlier context deadline.
func (c call) withTTL(msg *transport.Message) {
	if c.ttl <= 0 {
		return
	}
	dl := time.Now().Add(c.ttl)
	if cur, ok := wire.Deadline(msg.Headers); ok && cur.Before(dl) {
		return
	}
	wire.SetDeadline(msg, dl)
}

// Select picks targets with s instead of the default (least_loaded for
// Request and Push, all for FanOut).
func Select(s Selector) CallOption { return func(c *call) { c.sel = s } }

// To targets the agent with this identity.
func To(identity string) CallOption { return Select(Identity(identity)) }

// WithTags narrows the candidates to agents carrying every tag before the
// selector picks.
func WithTags(tags ...string) CallOption { return func(c *call) { c.tags = append(c.tags, tags...) } }

// Persistent publishes the request or push as a persistent message and
// waits for the broker's confirm, so once Push returns the work survives a
// broker restart in a durable queue (the queue of an agent with
// Config.Durable, any service's shared queue).
func Persistent() CallOption { return func(c *call) { c.persistent = true } }

// Park is Nanite's offline failsafe: when no live agent serves the path at
// all, the request or push is parked, durably, in the service's shared
// queue, and delivered when an agent for it appears (within the context's
// deadline, which travels as the message's expiration). Without Park the
// caller gets ErrNoAgent at once.
//
// Parked work goes to whichever agent for the path takes it first, so Park
// applies only to selectors that choose among the agents serving the path
// (least_loaded, random, round_robin, all, your own). A call for one agent
// (To, Identity) or for tagged agents (WithTags, Tagged) is never parked:
// it gets ErrNoAgent while no live agent fits, as does any call when live
// agents serve the path but the selector picks none of them. (A call for
// one agent is not parked in that agent's own queue either: that queue
// expires with its agent, losing what it holds.)
//
// Park declares a shared queue that does not exist yet as agents serving
// the path do: a quorum queue with the default delivery limit
// (wire.DeclareShared). A shared queue that exists is used whatever its
// type. Add Persistent for work that must survive a broker restart.
func Park() CallOption { return func(c *call) { c.park = true } }

// RetryOnConnectionLoss re-sends a Request whose connection to the broker
// dropped while it waited, once the mapper has reconnected, until the
// context ends. The handler may then run twice.
func RetryOnConnectionLoss() CallOption { return func(c *call) { c.retry = true } }

func (m *Mapper) options(def Selector, opts []CallOption) call {
	if len(opts) == 0 {
		return call{sel: def} // c below escapes to the options: no allocation here
	}
	c := call{sel: def}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if len(c.tags) > 0 {
		c.sel = Tagged(c.sel, c.tags...)
	}
	return c
}

// parks reports whether the call is parked after err, from prepare: it asked
// for Park, no live agent serves the path, and its selector does not name
// its agents (see Park).
func (c call) parks(err error) bool {
	if !c.park || err == nil {
		return false // before none, which escapes: no allocation per call
	}
	var none *noLiveAgent
	return errors.As(err, &none) && !targeted(c.sel)
}

// noLiveAgent is the ErrNoAgent of a path that no live agent serves (as
// opposed to one whose live agents the selector did not pick).
type noLiveAgent struct{ err error }

func (e *noLiveAgent) Error() string { return e.err.Error() }
func (e *noLiveAgent) Unwrap() error { return e.err }

// Request sends payload (marshalled as JSON; a json.RawMessage is sent as
// is) to one agent serving path, picked by the selector (least_loaded by
// default; when a selector returns several agents the first is used: use
// FanOut to ask them all), and waits for its result until ctx ends. The
// context's deadline travels with the request: an agent does not start it
// after that. A handler's failure returns a *wire.RemoteError. An agent that
// declines the request (agent.ErrDecline, or an inactive service) is
// skipped and the request goes to the next candidate.
func (m *Mapper) Request(ctx context.Context, path string, payload any, opts ...CallOption) (*Reply, error) {
	c := m.options(LeastLoaded(), opts)
	ctx = withProgress(ctx, c.progress, c.progressIdle)
	ctx = withAcceptStream(ctx, c.acceptStream)
	declined := map[string]bool{}
	var skip map[string]bool // declined, or unroutable (their queue is gone); made when needed
	var one [1]AgentInfo     // prepare's pick, without an allocation
	for {
		targets, body, err := m.prepare(ctx, path, payload, c, skip, one[:0])
		if c.parks(err) && len(declined) == 0 {
			return m.parkRequest(ctx, path, payload, c)
		}
		if err != nil {
			if len(declined) > 0 && errors.Is(err, ErrNoAgent) {
				return nil, fmt.Errorf("%w: every agent declined: %w", err, &wire.RemoteError{Path: path, Code: wire.CodeDeclined, Message: "declined"})
			}
			return nil, err
		}
		r, err := m.ask(ctx, path, targets[0], body, c.sel, c.persistent, false)
		if errors.Is(err, transport.ErrConnectionLost) && c.retry && ctx.Err() == nil {
			continue
		}
		if errors.Is(err, transport.ErrUnroutable) && ctx.Err() == nil {
			// The agent's queue is gone (a stale or forged heartbeat,
			// an agent long dead): it is dropped; try the next one.
			skip = skipAgent(skip, targets[0].Identity)
			continue
		}
		if err != nil {
			return nil, err
		}
		if r.Err != nil && errors.Is(r.Err, errDeclined) {
			declined[targets[0].Identity] = true
			skip = skipAgent(skip, targets[0].Identity)
			continue
		}
		if r.Err != nil {
			return r, r.Err
		}
		return r, nil
	}
}

// errDeclined matches, with errors.Is, a reply's error from an agent that
// declined (any agent).
var errDeclined error = &wire.RemoteError{Code: wire.CodeDeclined}

// skipAgent adds id to skip, made when nil.
func skipAgent(skip map[string]bool, id string) map[string]bool {
	if skip == nil {
		skip = map[string]bool{}
	}
	skip[id] = true
	return skip
}

// FanOut sends payload to every agent the selector picks (all by default)
// and gathers a reply per agent identity until each answered or ctx ends.
// Agents that did not answer in time have a Reply whose Err wraps
// ErrTimeout; Results.Missing names them. The error is non-nil only when
// nothing could be sent.
func (m *Mapper) FanOut(ctx context.Context, path string, payload any, opts ...CallOption) (Results, error) {
	c := m.options(All(), opts)
	ctx = withProgress(ctx, serialised(c.progress), c.progressIdle)
	targets, body, err := m.prepare(ctx, path, payload, c, nil, nil)
	if err != nil {
		return nil, err
	}
	type answer struct {
		id string
		r  *Reply
	}
	answers := make(chan answer, len(targets))
	for _, t := range targets {
		go func() {
			r, err := m.ask(ctx, path, t, body, nil, c.persistent, true)
			if err != nil {
				r = &Reply{Agent: t.Identity, Err: err}
			}
			answers <- answer{t.Identity, r}
		}()
	}
	rs := make(Results, len(targets))
	for range targets {
		a := <-answers
		rs[a.id] = a.r
	}
	return rs, nil
}

// Push sends payload to the agents the selector picks (least_loaded by
// default) without waiting for a result. It returns once the broker has
// routed the message to each agent's queue.
func (m *Mapper) Push(ctx context.Context, path string, payload any, opts ...CallOption) error {
	c := m.options(LeastLoaded(), opts)
	skip := map[string]bool{} // unroutable: their queue is gone
	for {
		done, err := m.push(ctx, path, payload, c, skip)
		if done {
			return err
		}
	}
}

// push is one attempt of Push. It is not done when its one target was
// unroutable (that agent is dropped and added to skip): Push tries the
// next. Several targets are sent to each; those unroutable are dropped
// and named in the error.
func (m *Mapper) push(ctx context.Context, path string, payload any, c call, skip map[string]bool) (done bool, _ error) {
	targets, body, err := m.prepare(ctx, path, payload, c, skip, nil)
	if c.parks(err) {
		body, err := m.encode(path, payload)
		if err != nil {
			return true, err
		}
		msg := m.message(ctx, wire.TypePush, path, body)
		msg.Persistent = true
		c.withTTL(&msg)
		return true, m.park(ctx, path, msg)
	}
	if err != nil {
		return true, err
	}
	var gone []string
	for _, t := range targets {
		msg := m.message(ctx, wire.TypePush, path, body)
		pin(&msg, c.sel, len(targets) > 1) // several: one copy per agent
		msg.Persistent = c.persistent
		c.withTTL(&msg)
		m.address(&msg, t.Identity)
		err := m.publishOne(ctx, wire.RequestExchange, t.Identity, msg)
		if errors.Is(err, transport.ErrUnroutable) && ctx.Err() == nil {
			m.unroutable(t.Identity, err)
			skip[t.Identity] = true
			gone = append(gone, t.Identity)
			continue
		}
		if err != nil {
			return true, fmt.Errorf("mapper: push %s to %s: %w", path, t.Identity, err)
		}
	}
	switch {
	case len(gone) == 0:
		return true, nil
	case len(targets) == 1:
		return false, nil
	}
	return true, fmt.Errorf("mapper: push %s to %s: %w: their queues are gone (dropped); sent to the %d others", path, strings.Join(gone, ", "), transport.ErrUnroutable, len(targets)-len(gone))
}

// unroutable drops agent id when a message to it was unroutable: its queue
// no longer exists, whatever its heartbeats say (an agent long dead, a
// stale or forged heartbeat). It comes back with its next heartbeat.
func (m *Mapper) unroutable(id string, err error) {
	if errors.Is(err, transport.ErrUnroutable) {
		m.lose(id, "a message to it was unroutable: its queue does not exist")
	}
}

// prepare validates the call, encodes the payload and picks the targets
// (appended to dst: see registry.pick). Agents in skip are not candidates.
func (m *Mapper) prepare(ctx context.Context, path string, payload any, c call, skip map[string]bool, dst []AgentInfo) ([]AgentInfo, []byte, error) {
	if err := wire.CheckPath(path); err != nil {
		return nil, nil, err
	}
	select {
	case <-m.ready: // the common case, without locking the three channels
	default:
		select {
		case <-m.ready:
		case <-m.stopped:
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("mapper: %s: %w", path, ctx.Err())
		}
	}
	select {
	case <-m.stopped:
		return nil, nil, ErrNotRunning
	default:
	}
	m.mu.Lock()
	up := m.up
	m.mu.Unlock()
	select {
	case <-up:
	default:
		// Only a session that is down is a lost connection: with ctx
		// done too, select would pick at random.
		select {
		case <-up:
		case <-m.stopped:
			return nil, nil, ErrNotRunning
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("mapper: %s: waiting for the broker: %w: %w", path, transport.ErrConnectionLost, ctx.Err())
		}
	}
	body, err := m.encode(path, payload)
	if err != nil {
		return nil, nil, err
	}
	if err := m.candidates(ctx, path); err != nil {
		if ctx.Err() == nil {
			err = &noLiveAgent{err}
		}
		return nil, nil, err
	}
	targets, cands := m.reg.pick(path, c.sel, skip, time.Now(), dst)
	if len(targets) == 0 {
		switch {
		case cands > 0:
			return nil, nil, fmt.Errorf("%w %s: none of %d live agents fits the selector", ErrNoAgent, path, cands)
		case len(skip) == 0: // the last one went since candidates
			return nil, nil, &noLiveAgent{fmt.Errorf("%w %s", ErrNoAgent, path)}
		}
		return nil, nil, fmt.Errorf("%w %s", ErrNoAgent, path)
	}
	if len(targets) > m.cfg.MaxFanOut {
		return nil, nil, fmt.Errorf("%w %s: %d agents, limit %d", ErrFanOutLimit, path, len(targets), m.cfg.MaxFanOut)
	}
	return targets, body, nil
}

// announceQuiet is how long a new mapper waits after the last agent joined
// before it trusts its registry to be complete: agents answer an announce
// within a round trip.
const announceQuiet = 100 * time.Millisecond

// candidates returns when a live agent serves path. A mapper that has just
// started first lets the agents answering its announce come in (until none
// has joined for announceQuiet), and waits up to AnnounceWait for one that
// serves path.
func (m *Mapper) candidates(ctx context.Context, path string) error {
	settled := m.readyAt.Add(m.cfg.AnnounceWait)
	for {
		now := time.Now()
		var until time.Time
		if now.Before(settled) {
			quiet := time.Unix(0, max(m.readyAt.UnixNano(), m.lastJoin.Load())).Add(announceQuiet)
			if now.Before(quiet) {
				until = quiet
			}
		}
		if until.IsZero() {
			if m.reg.has(path, now) {
				return nil
			}
			if !now.Before(settled) {
				return fmt.Errorf("%w %s", ErrNoAgent, path)
			}
			until = settled
		}
		m.mu.Lock()
		joined := m.joined
		m.mu.Unlock()
		t := time.NewTimer(time.Until(until))
		select {
		case <-joined:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w %s: %w", ErrNoAgent, path, ctx.Err())
		}
		t.Stop()
	}
}

// encode marshals payload and checks it against the limits.
func (m *Mapper) encode(path string, payload any) ([]byte, error) {
	body, err := encode(payload)
	if err != nil {
		return nil, fmt.Errorf("mapper: %s: payload: %w", path, err)
	}
	if len(body) > m.cfg.MaxMessageSize {
		return nil, fmt.Errorf("%w: %s: %d bytes, limit %d", ErrTooLarge, path, len(body), m.cfg.MaxMessageSize)
	}
	if err := wire.CheckDepth(body, m.cfg.MaxDepth); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrTooLarge, path, err)
	}
	return body, nil
}

func encode(payload any) ([]byte, error) {
	switch p := payload.(type) {
	case json.RawMessage:
		if !json.Valid(p) {
			return nil, errors.New("json.RawMessage is not valid JSON")
		}
		return p, nil
	case nil:
		return []byte("null"), nil
	}
	return json.Marshal(payload)
}

// message builds a request or push with the deadline of ctx.
func (m *Mapper) message(ctx context.Context, typ, path string, body []byte) transport.Message {
	dl, _ := ctx.Deadline()
	return wire.NewRequest(typ, path, m.cfg.Identity, newID(), body, dl)
}

// ask sends one request to one agent and waits for its reply.
// With a selector (a Request, not a leg of a fan-out), the request may be
// re-sent to another agent that selector picks if t leaves or expires
// before answering (see redispatch).
//
// A request that is not Persistent, to an agent whose own queue is classic
// (its heartbeat says so: wire.NoNack), is published mandatory without a
// publisher confirm: such a queue does not nack, the reply proves
// delivery, a basic.return (its queue is gone) fails it at once as
// ErrUnroutable does (see onReturn), and a lost connection fails it with
// every other waiting call. Any other request keeps the confirm and
// publishOne's retry of a nack.
func (m *Mapper) ask(ctx context.Context, path string, t AgentInfo, body []byte, sel Selector, persistent, fanOut bool) (*Reply, error) {
	msg := m.message(ctx, wire.TypeRequest, path, body)
	pin(&msg, sel, fanOut)
	m.address(&msg, t.Identity)
	msg.Persistent = persistent
	unconfirmed := !persistent && wire.NoNack(t.QueueType) && m.returns.Load()
	return m.await(ctx, path, t.Identity, msg, sel, wire.RequestExchange, t.Identity, unconfirmed)
}

// await publishes a request and waits for its reply; unconfirmed, without
// waiting for a publisher confirm (see ask).
func (m *Mapper) await(ctx context.Context, path, target string, msg transport.Message, sel Selector, exchange, key string, unconfirmed bool) (*Reply, error) {
	msg.CorrelationID = msg.MessageID
	w := &waiter{ch: make(chan struct{}, 1), path: path, target: target, sel: sel, unconfirmed: unconfirmed}
	if target != "" {
		w.first[0] = target
		w.sentTo = w.first[:]
	}
	watchProgress(ctx, w, &msg)
	watchResult(ctx, &msg)
	// Reading the reply queue and registering happen under one lock, so a
	// connection loss either fails this waiter (failPending) or is seen
	// here as no reply queue.
	m.mu.Lock()
	msg.ReplyTo = m.replyQ
	w.msg = msg
	w.sent = time.Now()
	if msg.ReplyTo != "" {
		m.pending[msg.CorrelationID] = w
	}
	m.mu.Unlock()
	if msg.ReplyTo == "" {
		return nil, fmt.Errorf("mapper: request %s to %s: %w", path, target, transport.ErrConnectionLost)
	}
	forget := func() {
		m.mu.Lock()
		delete(m.pending, msg.CorrelationID)
		m.mu.Unlock()
	}
	var err error
	if unconfirmed {
		err = m.tr.Publish(ctx, exchange, key, msg, transport.PublishOptions{Mandatory: true, Unconfirmed: true})
	} else {
		err = m.publishOne(ctx, exchange, key, msg)
	}
	if err != nil {
		forget()
		if target != "" {
			m.unroutable(target, err)
		}
		return nil, fmt.Errorf("mapper: request %s to %s: %w", path, target, err)
	}
	m.awaitProgress(ctx, w)
	select {
	case <-w.ch:
		r := w.reply
		if w.returned {
			// As the error of a confirmed publish above.
			m.unroutable(target, r.Err)
			return nil, fmt.Errorf("mapper: request %s to %s: %w", path, target, r.Err)
		}
		if r.Agent == "" {
			r.Agent = target
		}
		if r.Err != nil && (errors.Is(r.Err, ErrNotRunning) || errors.Is(r.Err, transport.ErrConnectionLost)) {
			return nil, fmt.Errorf("mapper: request %s to %s: %w", path, target, r.Err)
		}
		return r, nil
	case <-ctx.Done():
		forget()
		return nil, fmt.Errorf("request %s to %s: %w: %w", path, target, ErrTimeout, ctx.Err())
	}
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// waiter is a request waiting for its reply.
type waiter struct {
	// ch is signalled, once, when reply is set (answer): a chan of
	// struct{} is one allocation, a chan of pointers two.
	ch     chan struct{} // buffered 1
	reply  *Reply
	path   string
	target string // the agent it was sent to last; "" for a shared queue
	// sentTo lists every agent it was addressed to: only their replies
	// are taken, unless it is (or may be) in a shared queue (nil).
	sentTo []string
	first  [1]string // sentTo's first, allocated with the waiter
	// foreign is the first reply from another agent (the first good one,
	// if any), kept in case the request turns out to be in a shared queue:
	// another mapper may have moved it there first (see rescue).
	foreign *Reply
	msg     transport.Message
	sel     Selector  // a Request's selector; nil for a fan-out leg or a parked request
	sent    time.Time // when it was sent to target (see probeAgents)
	// unconfirmed: it was published to target without a confirm, so a
	// return of it (onReturn) may come; returned: one came and answered
	// it (guarded by the mapper's mu until answered).
	unconfirmed, returned bool
	// progress queues progress for the callback; nil when not asked for.
	progress *progressQueue
	// A stream's (Stream): credit says stored changed (the chunks its
	// agent has stored, guarded by the mapper's mu); nil for others.
	credit chan struct{}
	stored int64
}

// answer gives w its reply. A waiter is answered once: by whoever takes
// it out of the mapper's pending, under its mu.
func (w *waiter) answer(r *Reply) {
	w.reply = r
	w.ch <- struct{}{}
}

// keep remembers a reply that w does not accept (yet).
func (w *waiter) keep(r *Reply) {
	if w.foreign == nil || (w.foreign.Err != nil && r.Err == nil) {
		w.foreign = r
	}
}

// anyAgent makes w take any agent's reply from now on, and answers it with
// a reply it kept, if any. The caller holds m.mu.
func (m *Mapper) anyAgent(w *waiter) {
	w.sentTo = nil
	if w.foreign != nil {
		delete(m.pending, w.msg.CorrelationID)
		w.answer(w.foreign)
	}
}

// accepts reports whether a reply signed by agent may answer w: one of the
// agents it was addressed to, or any when it went to a shared queue.
func (w *waiter) accepts(agent string) bool {
	return w.sentTo == nil || slices.Contains(w.sentTo, agent)
}

// redispatch handles the requests pending on an agent that left or expired:
// a Request goes to another live agent that serves its path and that its
// selector picks (it may then run twice; the caller gets the first result
// only), a fan-out leg fails at once naming the agent. Then what is left in
// the agent's queue is rescued (see rescue); a Request that no agent could
// take meanwhile may be among it, so it takes any agent's reply from then on.
//
// grace delays all of that for an agent that left gracefully: it answered
// everything it took before it unregistered, but its last replies travel
// on another queue than its unregister and may arrive after it. Re-sending
// at once would run those requests a second time.
func (m *Mapper) redispatch(gone string, grace time.Duration) {
	stop := m.startRescue(gone)
	if grace <= 0 {
		m.redispatchNow(gone, stop)
		return
	}
	m.bg.Go(func() {
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-t.C:
		case <-m.runCtx.Done():
		}
		if slices.ContainsFunc(m.reg.live("", time.Now()), func(a AgentInfo) bool { return a.Identity == gone }) {
			m.stopRescue(gone) // it came back: its queue and its requests are its own again
			return
		}
		m.redispatchNow(gone, stop)
	})
}

// leftGrace is how long a mapper waits for the last replies of an agent
// that unregistered before it re-sends what is still pending on it.
const leftGrace = time.Second

func (m *Mapper) redispatchNow(gone string, stop chan struct{}) {
	m.mu.Lock()
	var moved []*waiter
	for id, w := range m.pending {
		if w.target != gone {
			continue
		}
		if w.sel == nil {
			delete(m.pending, id)
			w.answer(&Reply{Agent: gone, Err: fmt.Errorf("request %s to %s: %w: the agent left or is gone", w.path, gone, ErrTimeout)})
			continue
		}
		moved = append(moved, w)
	}
	m.mu.Unlock()
	if len(moved) == 0 && stop == nil {
		return
	}
	m.bg.Go(func() {
		for _, w := range moved {
			m.resend(w, gone, stop != nil)
		}
		if stop != nil {
			m.rescue(gone, stop)
		}
	})
}

// resend sends w, pending on the agent gone, to another agent its selector
// picks. When there is none, it waits for gone to return or for its
// deadline; with rescued, gone's queue is being moved to the shared queue,
// so any agent's reply is taken.
func (m *Mapper) resend(w *waiter, gone string, rescued bool) {
	// The caller's choice still holds (To, tags, ...), among the others.
	picked, _ := m.reg.pick(w.path, w.sel, map[string]bool{gone: true}, time.Now(), nil)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pending[w.msg.CorrelationID] != w || w.target != gone {
		return // answered meanwhile
	}
	if w.foreign != nil && !m.addressed && !targeted(w.sel) {
		// Another mapper moved it from gone's queue to the shared queue
		// (see rescue), and another agent answered: that is its result.
		// Sending it again would only run it twice.
		m.anyAgent(w)
		return
	}
	if len(picked) == 0 {
		if rescued && !targeted(w.sel) {
			m.anyAgent(w)
		}
		return
	}
	next := picked[0]
	w.unconfirmed = false // re-sent with a confirm, by publishOne
	w.target = next.Identity
	w.sentTo = append(w.sentTo, next.Identity)
	w.sent = time.Now()
	msg := w.msg
	msg.Headers = maps.Clone(msg.Headers)
	m.address(&msg, next.Identity)
	wire.RefreshExpiration(&msg)
	m.mu.Unlock()
	m.log.Warn("agent gone: request sent to another agent", "service", w.path, "from_agent", gone, "agent", next.Identity, "correlation_id", msg.CorrelationID)
	err := m.publishOne(m.runCtx, wire.RequestExchange, next.Identity, msg)
	if err != nil {
		m.log.Warn("redispatch failed", "err", err, "correlation_id", msg.CorrelationID)
	}
	m.mu.Lock() // resend's deferred Unlock
	if err != nil {
		if m.pending[w.msg.CorrelationID] == w && w.target == next.Identity {
			w.target = gone // the rescue moves its copy, if there is one
			if rescued && !targeted(w.sel) {
				m.anyAgent(w)
			}
		}
	}
}

// onReturn fails the request that a return names, if it still waits and
// was published to that agent without a confirm (see ask), as the
// confirmed publish would have failed: await then drops the agent when its
// queue is gone and Request tries the next one. A return is matched by
// correlation id, message id, exchange and agent; the table of waiting
// requests is what bounds what is matched (a return comes within a round
// trip of its publish, and none says when no more can come).
func (m *Mapper) onReturn(r transport.Return) {
	if r.Exchange != wire.RequestExchange || r.CorrelationID == "" {
		return
	}
	m.mu.Lock()
	w := m.pending[r.CorrelationID]
	if w == nil || !w.unconfirmed || w.target != r.Key || w.msg.MessageID != r.MessageID {
		m.mu.Unlock()
		return
	}
	delete(m.pending, r.CorrelationID)
	w.returned = true
	m.mu.Unlock()
	m.log.Debug("request returned by the broker", "agent", r.Key, "correlation_id", r.CorrelationID, "err", r.Err)
	w.answer(&Reply{Agent: r.Key, Err: r.Err})
}

// parkRequest parks a request in the service's shared queue and waits for
// the reply of whichever agent takes it.
func (m *Mapper) parkRequest(ctx context.Context, path string, payload any, c call) (*Reply, error) {
	body, err := m.encode(path, payload)
	if err != nil {
		return nil, err
	}
	msg := m.message(ctx, wire.TypeRequest, path, body)
	msg.Persistent = true
	refused, err := m.ensureServiceQueue(ctx, path)
	if err != nil {
		return nil, err
	}
	r, err := m.await(ctx, path, "", msg, nil, wire.ServiceExchange, path, false)
	if err != nil {
		return nil, noSharedQueue(path, refused, err)
	}
	if r.Err != nil {
		return r, r.Err
	}
	return r, nil
}

// park publishes msg to the service's shared queue, declaring it when no
// agent ever did.
func (m *Mapper) park(ctx context.Context, path string, msg transport.Message) error {
	refused, err := m.ensureServiceQueue(ctx, path)
	if err != nil {
		return err
	}
	if err := m.publishOne(ctx, wire.ServiceExchange, path, msg); err != nil {
		return noSharedQueue(path, refused, fmt.Errorf("mapper: park %s: %w", path, err))
	}
	m.log.Info("no agent: parked in the shared queue", "service", path, "message_id", msg.MessageID)
	return nil
}

// parkDeliveryLimit is the delivery limit of a shared queue a mapper
// declares: agents' default MaxDeliveries, so that agents declare it the
// same way.
const parkDeliveryLimit = 5

// ensureServiceQueue declares the shared queue of path as agents declare it
// (wire.DeclareShared: a quorum queue, with the agents' default delivery
// limit). A queue that exists is used as it is, whatever its type.
//
// A user that may not declare or bind service queues (warren setup's
// least-privilege mapper user: transport.ErrAccessRefused) can still park
// in a queue that an agent serving path declared and bound: refused is
// then true and the caller's mandatory publish finds out whether there is
// one (see noSharedQueue).
func (m *Mapper) ensureServiceQueue(ctx context.Context, path string) (refused bool, err error) {
	q := wire.ServiceQueue(path)
	err = wire.DeclareShared(ctx, m.tr, transport.Queue{Name: q, DeadLetterExchange: wire.DeadLetterExchange, DeliveryLimit: parkDeliveryLimit})
	switch {
	case errors.Is(err, transport.ErrAccessRefused):
		m.log.Debug("park: this user may not declare the shared queue: parking only if an agent declared it", "queue", q, "err", err)
		return true, nil
	case err != nil:
		return false, fmt.Errorf("mapper: park %s: %w", path, err)
	}
	err = m.tr.Bind(ctx, transport.Binding{Exchange: wire.ServiceExchange, Queue: q, Key: path})
	switch {
	case errors.Is(err, transport.ErrAccessRefused):
		m.log.Debug("park: this user may not bind the shared queue: parking only if an agent bound it", "queue", q, "err", err)
		return true, nil
	case err != nil:
		return false, fmt.Errorf("mapper: park %s: bind %s: %w", path, q, err)
	}
	return false, nil
}

// noSharedQueue turns the unroutable publish of a park whose queue this
// user was refused to declare (refused) into an error that says so and
// what to do; other errors are returned as they are. It wraps both
// transport.ErrAccessRefused and transport.ErrUnroutable.
func noSharedQueue(path string, refused bool, err error) error {
	if !refused || !errors.Is(err, transport.ErrUnroutable) {
		return err
	}
	return fmt.Errorf("mapper: park %s: no shared queue %s to park in, and this user may not create it (%w; publish: %w): "+
		"run an agent serving %s once (it creates the queue), or park as a user allowed to configure and bind it",
		path, wire.ServiceQueue(path), transport.ErrAccessRefused, transport.ErrUnroutable, path)
}

// address names the recipient in the warren-to header when the transport
// wants it (secure mode encrypts to it).
func (m *Mapper) address(msg *transport.Message, identity string) {
	if m.addressed {
		msg.Headers[wire.HeaderTo] = identity
	}
}

// pin marks msg for what a mapper draining the queue of its agent, should
// that agent be dropped, may do with it: nothing for work sent to one agent
// by identity or as one copy of a fan-out (warren-pinned), another agent
// with the same tags for work selected by tags (warren-tags), anything
// else goes to the service's shared queue.
func pin(msg *transport.Message, sel Selector, fanOut bool) {
	byID, tags := pinning(sel)
	switch {
	case fanOut || byID:
		msg.Headers[wire.HeaderPinned] = true
	case len(tags) > 0:
		joined := strings.Join(tags, ",")
		if slices.ContainsFunc(tags, func(t string) bool { return t == "" || strings.Contains(t, ",") }) {
			msg.Headers[wire.HeaderPinned] = true // not expressible as a list
		} else {
			msg.Headers[wire.HeaderTags] = joined
		}
	}
}

// publishOne publishes msg, mandatory, to the one queue that exchange and
// key route it to (an agent's own queue, a service's shared queue), and
// publishes it again when the broker nacks it: a nack from a single queue
// means it did not take the message (RabbitMQ nacks a quorum queue's
// publishes while its leader is being elected), so a second copy cannot
// run twice. It tries nackRetries times in all, pausing a little longer
// each time, within ctx; the transport publishes each retry on a fresh
// channel.
func (m *Mapper) publishOne(ctx context.Context, exchange, key string, msg transport.Message) error {
	var err error
	for attempt := range nackRetries {
		if err = m.tr.Publish(ctx, exchange, key, msg, transport.PublishOptions{Mandatory: true}); !errors.Is(err, transport.ErrNacked) {
			return err
		}
		if attempt+1 == nackRetries {
			break
		}
		m.log.Debug("publish nacked by the broker: publishing again", "exchange", exchange, "key", key, "attempt", attempt+1)
		t := time.NewTimer(time.Duration(attempt+1) * 50 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
	}
	return err
}

// nackRetries bounds publishOne's attempts.
const nackRetries = 4
