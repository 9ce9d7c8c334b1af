package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime/debug"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// serve handles one delivery from start to settlement.
func (a *Agent) serve(ctx context.Context, d *transport.Delivery) {
	switch d.Type {
	case wire.TypeChunk:
		a.chunk(ctx, d) // a piece of a streamed request (stream.go)
		return
	case wire.TypeCredit:
		a.resultCredit(d) // a caller's credit for a streamed result (result.go)
		return
	}
	a.inFlight.Add(1)
	defer func() {
		a.inFlight.Add(-1)
		a.handled.Add(1)
	}()
	// Logger.With allocates even when nothing is logged: only when it is.
	log := a.log
	if log.Enabled(ctx, slog.LevelError) {
		log = log.With("message_id", d.MessageID, "correlation_id", d.CorrelationID)
	}
	req, code, err := a.parse(d)
	if err != nil {
		log.Warn("bad message", "err", err, "code", code, "routing_key", d.RoutingKey)
		a.fail(ctx, d, req, code, err.Error())
		return
	}
	if log != a.log {
		log = log.With("service", req.Path)
	}
	if st, ok, err := wire.ReadStream(d); ok {
		var done func()
		if err == nil {
			done, err = a.attachStream(req, st)
		}
		if err != nil {
			log.Warn("stream broken: handler not run", "err", err)
			a.fail(ctx, d, req, wire.CodeStreamBroken, err.Error())
			return
		}
		defer done()
	}
	if expired(req) {
		a.expire(ctx, log, d, req)
		return
	}
	svc := a.service(req.Path)
	if svc == nil {
		log.Warn("no such service")
		a.fail(ctx, d, req, wire.CodeNoSuchService, fmt.Sprintf("agent %s does not serve %s", a.cfg.Identity, req.Path))
		return
	}
	if d.Type == wire.TypePush && d.ReplyTo != "" && req.Stream != nil {
		// A streamed push (mapper.PushStream): its sender waits only
		// until the data is here, whole and checked; from now on it is a
		// push (failures are dead-lettered).
		d = a.held(ctx, log, d)
		req.Push = true
	}
	if a.passOn(ctx, log, svc, d, req) {
		return
	}
	// Waiting for the semaphore can take long: give up at the deadline,
	// and check the deadline and the service again once acquired. (A free
	// slot is taken without the timer: that is the common case.)
	select {
	case svc.sem <- struct{}{}:
	default:
		var deadline <-chan time.Time
		if !req.Deadline.IsZero() {
			t := time.NewTimer(time.Until(req.Deadline))
			defer t.Stop()
			deadline = t.C
		}
		select {
		case svc.sem <- struct{}{}:
		case <-deadline:
			a.expire(ctx, log, d, req)
			return
		case <-ctx.Done():
			a.settle(d, false, true)
			return
		}
		if expired(req) {
			<-svc.sem
			a.expire(ctx, log, d, req)
			return
		}
		if a.passOn(ctx, log, svc, d, req) {
			<-svc.sem
			return
		}
	}
	defer func() { <-svc.sem }()
	// The variadic arguments of a log call are allocated even when the
	// level is off: this is the hot path.
	debug := log.Enabled(ctx, slog.LevelDebug)
	if debug {
		log.Debug("handler started", "push", req.Push)
	}
	hctx := ctx
	if !req.Deadline.IsZero() {
		var cancel context.CancelFunc
		hctx, cancel = context.WithDeadline(ctx, req.Deadline)
		defer cancel()
	}
	hctx, flushProgress := a.withProgress(hctx, d)
	start := time.Now()
	result, herr := call(hctx, svc.h, req)
	svc.stats.record(time.Since(start), herr)
	flushProgress() // the progress goes before the reply
	if debug {
		log.Debug("handler returned", "push", req.Push, "err", herr)
	}
	if errors.Is(herr, ErrDecline) {
		log.Info("handler declined the request")
		a.decline(ctx, d, req)
		return
	}
	if ctx.Err() != nil && herr != nil {
		// The drain timed out under the handler: give the work back.
		log.Warn("handler cancelled by shutdown: requeued", "err", herr)
		a.settle(d, false, true)
		return
	}
	if herr != nil {
		var pe *panicError // escapes: declared only on failure
		if errors.As(herr, &pe) {
			log.Error("handler panicked", "panic", pe.err.Message, "stack", string(pe.stack))
		}
		code := codeOf(herr)
		log.Info("handler failed", "code", code, "err", herr)
		a.fail(ctx, d, req, code, messageOf(herr))
		return
	}
	if d.ReplyTo == "" {
		if sr, ok := result.(*StreamResult); ok {
			closeData(sr) // a push: nobody to stream it to
		}
		a.settle(d, true, false)
		return
	}
	if sr, ok := result.(*StreamResult); ok {
		a.replyStream(ctx, log, d, req, sr)
		return
	}
	body, err := encodeResult(result)
	if err != nil {
		a.fail(ctx, d, req, wire.CodeHandler, "result does not encode as JSON: "+err.Error())
		return
	}
	a.reply(ctx, d, wire.Reply(d, a.cfg.Identity, a.recipient(d), body))
}

// encodeResult marshals a handler's result as json.Marshal does. A
// json.RawMessage that Marshal would return unchanged (valid, with no byte
// that compacting or HTML escaping could change) is used as it is, without
// Marshal's copy.
func encodeResult(result any) ([]byte, error) {
	if raw, ok := result.(json.RawMessage); ok && len(raw) > 0 && marshalsAsIs(raw) && json.Valid(raw) {
		return raw, nil
	}
	return json.Marshal(result)
}

// marshalsAsIs reports whether b has none of the bytes json.Marshal's
// compacting and escaping of a RawMessage act on: whitespace, '<', '>',
// '&', and 0xE2, the first byte of U+2028 and U+2029.
func marshalsAsIs(b []byte) bool {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\n', '\r', '<', '>', '&', 0xE2:
			return false
		}
	}
	return true
}

// expired reports whether req's deadline has passed.
func expired(req *Request) bool {
	return !req.Deadline.IsZero() && !time.Now().Before(req.Deadline)
}

// expire fails a request whose deadline passed before its handler started.
func (a *Agent) expire(ctx context.Context, log *slog.Logger, d *transport.Delivery, req *Request) {
	log.Warn("deadline passed before start: not executed")
	a.fail(ctx, d, req, wire.CodeExpired, "deadline passed before the agent started the request")
}

// passOn declines req, and reports true, when its service is inactive or
// the agent is draining.
func (a *Agent) passOn(ctx context.Context, log *slog.Logger, svc *service, d *transport.Delivery, req *Request) bool {
	switch {
	case a.draining.Load() && d.ReplyTo == "" && onlyHere(d) != "":
		// Nobody waits to send it elsewhere, and only this agent (or
		// one with its tags) may run it: run it while draining.
		return false
	case a.draining.Load():
		log.Info("agent draining: passing the request on")
	case !svc.isActive():
		log.Info("service inactive: declining")
	default:
		return false
	}
	a.decline(ctx, d, req)
	return true
}

// panicError is a handler's panic; the stack is logged, not sent.
type panicError struct {
	err   *Error
	stack []byte
}

func (e *panicError) Error() string { return e.err.Error() }
func (e *panicError) Unwrap() error { return e.err }

// call runs the handler, turning a panic into an error.
func call(ctx context.Context, h Handler, req *Request) (res any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &panicError{&Error{Code: wire.CodePanic, Message: fmt.Sprintf("panic: %v", r)}, debug.Stack()}
		}
	}()
	return h.Serve(ctx, req)
}

// parse checks a delivery and builds the handler's request. On failure it
// returns the error code to report, and a request with what could be read.
func (a *Agent) parse(d *transport.Delivery) (*Request, string, error) {
	w, err := wire.ReadRequest(d)
	req := &Request{
		Path:        w.Path,
		Payload:     d.Body,
		ContentType: d.ContentType,
		From:        d.AppID,
		MessageID:   d.MessageID,
		Redelivered: d.Redelivered,
		Headers:     d.Headers,
		Push:        w.Push,
		Deadline:    w.Deadline,
	}
	if err != nil {
		return req, wire.CodeBadRequest, err
	}
	if len(d.Body) > a.cfg.MaxMessageSize {
		return req, wire.CodeBadRequest, fmt.Errorf("body of %d bytes is over the limit of %d", len(d.Body), a.cfg.MaxMessageSize)
	}
	if err := wire.CheckDepth(d.Body, a.cfg.MaxDepth); err != nil {
		return req, wire.CodeBadRequest, fmt.Errorf("body: %w", err)
	}
	if len(d.Body) > 0 && !json.Valid(d.Body) {
		return req, wire.CodeBadRequest, errors.New("body is not valid JSON")
	}
	return req, "", nil
}

// fail reports an error: as an error reply when the sender waits for one,
// else as a dead letter carrying the reason.
func (a *Agent) fail(ctx context.Context, d *transport.Delivery, req *Request, code, message string) {
	if d.ReplyTo != "" {
		a.reply(ctx, d, wire.ErrorReply(d, a.cfg.Identity, a.recipient(d), code, message))
		return
	}
	a.deadLetter(ctx, d, req, code, message)
}

// deadLetter publishes a copy of d to the dead-letter exchange with the
// reason, then acks d. If that publish fails or no queue takes it, d is
// rejected, which dead-letters it through the queue's own dead-letter
// exchange.
func (a *Agent) deadLetter(ctx context.Context, d *transport.Delivery, req *Request, code, message string) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := wire.PublishDeadLetter(pctx, a.tr, d, code, message, a.cfg.Identity); err != nil {
		a.log.Error("dead-letter publish failed: rejecting instead", "err", err, "reason", code)
		a.settle(d, false, false)
		return
	}
	a.log.Error("message dead-lettered", "reason", code, "error", message, "service", req.Path)
	a.settle(d, true, false)
}

// recipient is the warren-to of a reply to d: its sender, when the
// transport wants recipients named.
func (a *Agent) recipient(d *transport.Delivery) string {
	if a.addressed {
		return d.AppID
	}
	return ""
}

// reply sends msg, a reply built by wire, to d's reply-to queue, then acks
// d. When the reply cannot be sent, d is requeued so that the request is
// not lost.
func (a *Agent) reply(ctx context.Context, d *transport.Delivery, msg transport.Message) {
	pctx := a.replyContext(ctx)
	if err := a.tr.Publish(pctx, transport.DefaultExchange, d.ReplyTo, msg, transport.PublishOptions{}); err != nil {
		a.log.Warn("reply failed: requeueing the request", "err", err)
		a.settle(d, false, true)
		return
	}
	a.settle(d, true, false)
}

// replyTimeout bounds the publish of a reply.
const replyTimeout = 10 * time.Second

// replyCtx is a context for the replies of one second.
type replyCtx struct {
	parent context.Context
	ctx    context.Context
	cancel context.CancelFunc // called by its own deadline
	until  time.Time          // when the next reply needs a new one
}

// replyContext returns the context to publish a reply with: not cancelled
// with ctx (a handler that finished during shutdown still has its reply
// sent), and given up after replyTimeout to replyTimeout plus a second.
// The replies of one second share it, so that a reply costs no timer of
// its own: a context with a deadline is a runtime timer and five
// allocations, a tenth of an embedded round trip.
func (a *Agent) replyContext(ctx context.Context) context.Context {
	now := time.Now()
	if c := a.replyCtx.Load(); c != nil && c.parent == ctx && now.Before(c.until) {
		return c.ctx
	}
	c := &replyCtx{parent: ctx, until: now.Add(time.Second)}
	c.ctx, c.cancel = context.WithDeadline(context.WithoutCancel(ctx), c.until.Add(replyTimeout))
	a.replyCtx.Store(c)
	return c.ctx
}

func (a *Agent) settle(d *transport.Delivery, ack, requeue bool) {
	var err error
	if ack {
		err = d.Ack()
	} else {
		err = d.Nack(requeue)
	}
	if err != nil {
		a.log.Warn("settle failed; the broker will redeliver", "err", err, "ack", ack)
	}
}

// ErrDecline, returned by a handler, declines the request (Vincent's
// reject): it is passed on to another agent instead of failing. A request
// declined MaxDeliveries times is dead-lettered with reason
// delivery_limit.
var ErrDecline = errors.New("agent: request declined")

// attempts returns wire.HeaderAttempts of h clamped to 0..limit; a missing or
// non-integer header is 0.
func attempts(h map[string]any, limit int) int64 {
	n, _ := wire.Int(h, wire.HeaderAttempts)
	return min(max(n, 0), int64(limit))
}

// onlyHere says why d may not go to the service's shared queue, "" if it
// may: it was sent to this agent only (warren-pinned: by identity, or as
// one copy of a fan-out), or to agents with its tags (warren-tags).
func onlyHere(d *transport.Delivery) string {
	if wire.Pinned(d.Headers) {
		return "it was sent to this agent only"
	}
	if tags := wire.String(d.Headers, wire.HeaderTags); tags != "" {
		return "it was sent to agents tagged " + tags
	}
	return ""
}

// decline passes a request on. A request addressed to this agent by a
// waiting mapper gets a declined reply, and the mapper re-sends it to
// another agent. Work only this agent may run (onlyHere) is
// dead-lettered. Anything else is republished to the service's shared
// queue for another agent to take, counting attempts.
func (a *Agent) decline(ctx context.Context, d *transport.Delivery, req *Request) {
	if d.ReplyTo != "" && d.Exchange != wire.ServiceExchange {
		a.fail(ctx, d, req, wire.CodeDeclined, fmt.Sprintf("agent %s declined %s", a.cfg.Identity, req.Path))
		return
	}
	if why := onlyHere(d); why != "" {
		// The shared queue would give it to any agent: to one that ran
		// its own fan-out copy already, or without the tags.
		a.deadLetter(ctx, d, req, wire.CodeDeclined, fmt.Sprintf("declined by agent %s, and %s: not passed on", a.cfg.Identity, why))
		return
	}
	n := attempts(d.Headers, a.cfg.MaxDeliveries)
	if n+1 >= int64(a.cfg.MaxDeliveries) {
		a.deadLetter(ctx, d, req, wire.CodeDeliveryLimit, fmt.Sprintf("declined %d times", n+1))
		return
	}
	msg := d.Message
	msg.Headers = maps.Clone(d.Headers)
	if msg.Headers == nil {
		msg.Headers = map[string]any{}
	}
	msg.Headers[wire.HeaderAttempts] = n + 1
	msg.Headers[wire.HeaderPath] = req.Path
	delete(msg.Headers, wire.HeaderTo)
	wire.RefreshExpiration(&msg)
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := a.tr.Publish(pctx, wire.ServiceExchange, req.Path, msg, transport.PublishOptions{Mandatory: true}); err != nil {
		a.deadLetter(ctx, d, req, wire.CodeDeclined, "declined, and no shared queue to pass it on: "+err.Error())
		return
	}
	a.settle(d, true, false)
}
