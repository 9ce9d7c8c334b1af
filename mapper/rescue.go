package mapper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Bounds of a rescue (see rescue).
const (
	// rescueIdle ends a rescue that has received nothing for this long:
	// the queue is empty (a consumer gets what a queue holds at once).
	rescueIdle = time.Second
	// rescueMax ends a rescue that is still busy; what is left stays in
	// the queue, which is unused from then on and expires only after its
	// x-expires (wire.AgentQueueExpiry).
	rescueMax = time.Minute
	// rescuePrefetch bounds what a rescuing mapper holds unacknowledged.
	rescuePrefetch = 16
	// rescuePublishTimeout bounds each republish and dead letter.
	rescuePublishTimeout = 10 * time.Second
)

// DeadReasonAgentGone is the warren-dead-reason of a message that a mapper
// took from the queue of an agent the registry dropped and could not move
// to a shared queue: no queue is bound for its path on warren.service (its
// agents run with NoSharedQueues). Replay it once an agent is back.
const DeadReasonAgentGone = "agent_gone"

// rescueStats counts what one rescue did.
type rescueStats struct {
	moved, skipped, dead, pinned int
}

// startRescue registers the rescue of the queue of gone, which the caller
// runs after redispatching its own requests, and returns the channel closed
// when gone comes back; nil means no rescue. There is none in secure mode:
// messages there are sealed to the agent they were addressed to, which no
// other agent may open.
func (m *Mapper) startRescue(gone string) chan struct{} {
	if m.addressed {
		m.log.Info("agent gone: its queue is not drained in secure mode (its messages are sealed to it); they wait for it to return", "agent", gone, "queue", wire.AgentQueue(gone))
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.runCtx == nil || m.runCtx.Err() != nil || m.rescues[gone] != nil {
		return nil
	}
	stop := make(chan struct{})
	m.rescues[gone] = stop
	return stop
}

// stopRescue ends the rescue of an agent that came back: its queue is its
// own again.
func (m *Mapper) stopRescue(identity string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if stop := m.rescues[identity]; stop != nil {
		close(stop)
		delete(m.rescues, identity)
	}
}

// rescue moves what is left in the queue of the dropped agent gone to the
// shared queue of each message's path, so that work confirmed into that
// queue is not lost when the queue expires (RabbitMQ deletes an expired
// queue's messages without dead-lettering them).
//
// It consumes the queue (competing with any other mapper doing the same:
// each message is taken once) and, for each message, publishes a copy
// (mandatory, confirmed) to warren.service with the path as routing key,
// then acks the original; when that publish fails it requeues the original
// and stops. Its own requests that it re-sent to another agent, or that no
// caller waits for any more, it acks without moving. A message with no
// valid path, or whose path has no shared queue, is dead-lettered with a
// reason. It stops when the queue has been idle for rescueIdle, after
// rescueMax, when the agent comes back (stop is closed), when the mapper
// stops, or when the queue or the connection goes away.
func (m *Mapper) rescue(gone string, stop chan struct{}) {
	defer func() {
		m.mu.Lock()
		if m.rescues[gone] == stop {
			delete(m.rescues, gone)
		}
		m.mu.Unlock()
	}()
	select {
	case <-stop:
		return // back already
	default:
	}
	m.mu.Lock()
	idleFor := m.rescueIdleFor
	m.mu.Unlock()
	if idleFor == 0 {
		idleFor = rescueIdle
	}
	queue := wire.AgentQueue(gone)
	log := m.log.With("agent", gone, "queue", queue)
	ctx, cancel := context.WithCancel(m.runCtx)
	defer cancel() // requeues what was delivered and not taken
	ch, err := m.tr.Consume(ctx, queue, transport.ConsumeOptions{Prefetch: rescuePrefetch})
	if err != nil {
		if errors.Is(err, transport.ErrNotFound) {
			log.Debug("agent gone: no queue left to drain")
		} else if m.runCtx.Err() == nil {
			log.Warn("agent gone: cannot drain its queue", "err", err)
		}
		return
	}
	var st rescueStats
	why := "queue empty"
	defer func() {
		lvl := log.Debug
		if st.moved+st.dead > 0 {
			lvl = log.Info
		}
		lvl("agent gone: rescue of its queue ended", "why", why, "moved", st.moved, "dead_lettered", st.dead, "skipped", st.skipped, "left_pinned", st.pinned)
	}()
	// Pinned work goes back to the end of the queue (holding it unacked
	// would fill the prefetch window and stall the rescue); meeting one of
	// those again means everything else has been seen.
	cycled := map[string]bool{}
	idle := time.NewTimer(idleFor)
	defer idle.Stop()
	limit := time.NewTimer(rescueMax)
	defer limit.Stop()
	for {
		select {
		case <-m.runCtx.Done():
			why = "mapper stopping"
			return
		case <-stop:
			why = "agent came back"
			return
		case <-limit.C:
			why = "time limit reached; what is left stays in the queue"
			return
		case <-idle.C:
			return
		case d, ok := <-ch:
			if !ok {
				why = "queue or connection gone"
				return
			}
			if d.MessageID != "" && cycled[d.MessageID] {
				if err := d.Nack(true); err != nil {
					log.Debug("rescue: requeue failed; the broker requeues it", "err", err)
				}
				why = "only work pinned to the agent is left"
				return
			}
			own := m.ownCall(gone, d)
			if own != ownResent && own != ownDone && wire.String(d.Headers, wire.HeaderTags) != "" && !wire.Pinned(d.Headers) {
				// For agents with these tags: to a live one, when there
				// is one; else it waits for the gone agent like pinned work.
				switch ok, sent := m.forward(gone, d, log); {
				case !ok:
					why = "publish failed; the message is back in the queue"
					return
				case sent:
					st.moved++
					idle.Reset(idleFor)
					continue
				}
			}
			if own != ownResent && own != ownDone && (wire.Pinned(d.Headers) || own == ownWaits || wire.String(d.Headers, wire.HeaderTags) != "") {
				if !m.cycle(gone, d, log) {
					why = "publish failed; the message is back in the queue"
					return
				}
				st.pinned++
				if d.MessageID == "" {
					why = "pinned work without a message id left in the queue"
					return
				}
				cycled[d.MessageID] = true
				idle.Reset(idleFor)
				continue
			}
			if !m.rescueOne(gone, d, &st, log) {
				why = "publish failed; the message is back in the queue"
				return
			}
			idle.Reset(idleFor)
		}
	}
}

// rescueOne moves, skips or dead-letters one message of a dropped agent's
// queue. It returns false when the broker refused and the message was
// requeued: the rescue should stop.
func (m *Mapper) rescueOne(gone string, d *transport.Delivery, st *rescueStats, log *slog.Logger) bool {
	settle := func(ack, requeue bool) {
		var err error
		if ack {
			err = d.Ack()
		} else {
			err = d.Nack(requeue)
		}
		if err != nil {
			log.Warn("rescue: settle failed; the broker redelivers it", "err", err, "message_id", d.MessageID)
		}
	}
	switch m.ownCall(gone, d) {
	case ownResent, ownDone:
		st.skipped++
		log.Info("rescue: own request not moved: re-sent, or no caller waits for it", "correlation_id", d.CorrelationID)
		settle(true, false)
		return true
	}
	path := wire.String(d.Headers, wire.HeaderPath)
	if err := wire.CheckPath(path); err != nil {
		return m.rescueDeadLetter(gone, d, wire.CodeBadRequest, fmt.Sprintf("taken from the queue of dropped agent %s: header %s: %v", gone, wire.HeaderPath, err), st, log, settle)
	}
	msg := resendable(d) // already expired: the shared queue dead-letters it
	delete(msg.Headers, wire.HeaderTo)
	ctx, cancel := context.WithTimeout(m.runCtx, rescuePublishTimeout)
	defer cancel()
	err := m.tr.Publish(ctx, wire.ServiceExchange, path, msg, transport.PublishOptions{Mandatory: true})
	if errors.Is(err, transport.ErrUnroutable) {
		return m.rescueDeadLetter(gone, d, DeadReasonAgentGone, fmt.Sprintf("taken from the queue of dropped agent %s: no shared queue %s to move it to", gone, wire.ServiceQueue(path)), st, log, settle)
	}
	if err != nil {
		log.Warn("rescue: republish failed: requeued", "err", err, "message_id", d.MessageID, "service", path)
		settle(false, true)
		return false
	}
	st.moved++
	log.Info("rescue: moved to the shared queue", "service", path, "type", d.Type, "message_id", d.MessageID, "correlation_id", d.CorrelationID)
	settle(true, false)
	return true
}

// What a message in a dropped agent's queue is to this mapper.
const (
	notOwn    = iota // another caller's, or a push
	ownResent        // its own request, re-sent to another agent
	ownDone          // its own request that no caller waits for any more
	ownWaits         // its own request for this agent only (its selector picks no other): it waits for the agent or its deadline
)

// ownCall says whether d, in the queue of gone, is one of this mapper's
// requests, and what became of it. Its own requests whose selector chooses
// among any agents (not To or tags) and that no other agent could take are
// notOwn: moved to the shared queue, they take any agent's reply (resend
// cleared their sentTo).
func (m *Mapper) ownCall(gone string, d *transport.Delivery) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if d.ReplyTo == "" || d.ReplyTo != m.replyQ {
		return notOwn
	}
	w := m.pending[d.CorrelationID]
	switch {
	case w == nil:
		return ownDone
	case w.target != gone:
		return ownResent
	case w.sentTo != nil:
		return ownWaits
	}
	return notOwn
}

// rescueDeadLetter publishes a copy of d to the dead-letter exchange with a
// reason, then acks d; if that fails d is requeued and the rescue stops.
func (m *Mapper) rescueDeadLetter(gone string, d *transport.Delivery, reason, text string, st *rescueStats, log *slog.Logger, settle func(ack, requeue bool)) bool {
	ctx, cancel := context.WithTimeout(m.runCtx, rescuePublishTimeout)
	defer cancel()
	if err := wire.PublishDeadLetter(ctx, m.tr, d, reason, text, ""); err != nil {
		log.Warn("rescue: dead-letter publish failed: requeued", "err", err, "message_id", d.MessageID, "reason", reason)
		settle(false, true)
		return false
	}
	st.dead++
	log.Warn("rescue: dead-lettered", "reason", reason, "error", text, "message_id", d.MessageID)
	settle(true, false)
	return true
}

// pinnedTTL bounds how long work pinned to a dropped agent waits in its
// queue: expiring there, it is dead-lettered (reason expired: visible to
// warren dlq, and replayable), where the queue's own expiry, later, would
// delete it without a trace.
const pinnedTTL = wire.AgentQueueExpiry / 2

// cycle puts d, work pinned to the dropped agent gone, back at the end of
// gone's queue (confirmed), then acks it; on failure it requeues d and
// returns false.
func (m *Mapper) cycle(gone string, d *transport.Delivery, log *slog.Logger) bool {
	msg := resendable(d)
	if msg.Expiration <= 0 || msg.Expiration > pinnedTTL {
		msg.Expiration = pinnedTTL
	}
	ctx, cancel := context.WithTimeout(m.runCtx, rescuePublishTimeout)
	defer cancel()
	if err := m.tr.Publish(ctx, wire.RequestExchange, gone, msg, transport.PublishOptions{Mandatory: true}); err != nil {
		log.Warn("rescue: re-queueing pinned work failed: requeued", "err", err, "message_id", d.MessageID)
		if err := d.Nack(true); err != nil {
			log.Debug("rescue: requeue failed; the broker requeues it", "err", err)
		}
		return false
	}
	if err := d.Ack(); err != nil {
		log.Warn("rescue: ack failed; the broker redelivers it", "err", err, "message_id", d.MessageID)
	}
	return true
}

// forward sends d, work for agents with the tags of its warren-tags header
// taken from the queue of the dropped agent gone, to the least loaded live
// agent that has them and serves its path, then acks it. sent is false when
// there is none (d is untouched); ok is false when the publish failed (d is
// requeued).
func (m *Mapper) forward(gone string, d *transport.Delivery, log *slog.Logger) (ok, sent bool) {
	path := wire.String(d.Headers, wire.HeaderPath)
	tags := strings.Split(wire.String(d.Headers, wire.HeaderTags), ",")
	if wire.CheckPath(path) != nil {
		return true, false
	}
	// From the registry's index: no copy of every agent serving the path.
	picked, _ := m.reg.pick(path, Tagged(LeastLoaded(), tags...), map[string]bool{gone: true}, time.Now(), nil)
	if len(picked) == 0 {
		return true, false
	}
	to := picked[0].Identity
	msg := resendable(d)
	if d.ReplyTo != "" {
		// One of this mapper's own requests: take the new agent's reply
		// (told before the publish, which the reply may overtake).
		m.mu.Lock()
		if w := m.pending[d.CorrelationID]; w != nil && d.ReplyTo == m.replyQ && w.target == gone {
			w.target = to
			w.sentTo = append(w.sentTo, to)
			w.sent = time.Now()
		}
		m.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(m.runCtx, rescuePublishTimeout)
	defer cancel()
	if err := m.tr.Publish(ctx, wire.RequestExchange, to, msg, transport.PublishOptions{Mandatory: true}); err != nil {
		log.Warn("rescue: forwarding tagged work failed: requeued", "err", err, "message_id", d.MessageID, "to", to)
		if err := d.Nack(true); err != nil {
			log.Debug("rescue: requeue failed; the broker requeues it", "err", err)
		}
		return false, false
	}
	log.Info("rescue: tagged work sent to another agent with its tags", "service", path, "to", to, "message_id", d.MessageID)
	if err := d.Ack(); err != nil {
		log.Warn("rescue: ack failed; the broker redelivers it", "err", err, "message_id", d.MessageID)
	}
	return true, true
}

// resendable is d as a message to publish again: its own copy of the
// headers without a quorum queue's delivery count (the queue's, not the
// message's), and an expiration of what is left to its deadline.
func resendable(d *transport.Delivery) transport.Message {
	msg := d.Message
	msg.Headers = maps.Clone(d.Headers)
	delete(msg.Headers, "x-delivery-count")
	wire.RefreshExpiration(&msg)
	return msg
}
