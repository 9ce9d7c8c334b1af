package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/warrenrpc/warren/internal/backoff"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Run declares the agent's queues, registers with the mappers, serves until
// ctx ends, then drains: it stops taking work, finishes what is in hand
// (up to DrainTimeout), unregisters and returns nil.
//
// When the connection to the broker is lost (the transport reports
// ErrConnectionLost or a consumer ends without being asked), the agent
// re-declares its queues, consumes again and re-registers, with backoff and
// jitter, until ctx ends. Requests in hand when the connection dropped are
// redelivered by the broker. Run returns an error when the transport is
// closed under it or the broker refuses the topology, and ErrIdentityInUse
// when, at start, the agent's own queue keeps another consumer (another
// agent with this identity) for Config.IdentityWait. An own queue left
// with other arguments (Durable switched, another MaxDeliveries) is
// replaced when it is empty and unused; when it holds messages Run fails
// saying what to do.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	if a.running {
		a.mu.Unlock()
		return errors.New("agent: Run called twice")
	}
	if len(a.handlers) == 0 {
		a.mu.Unlock()
		return errors.New("agent: no handlers: call Handle or Expose before Run")
	}
	a.running = true
	a.mu.Unlock()
	a.started = time.Now()

	// handlerCtx is cancelled when the drain times out.
	handlerCtx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()
	// bg outlives ctx, for the drain's acks and the unregister.
	bg := context.WithoutCancel(ctx)

	bo := backoff.New()
	first := true
	startLosses := 0        // of the first session (see backoff.StartRetries)
	var inUse time.Time     // when the own queue was first found in use
	var inUseSaid time.Time // when that was last logged at Warn
	for {
		s, err := a.startSession(ctx, bg, handlerCtx)
		if err != nil && ctx.Err() != nil {
			// Stopped while (re)connecting: nothing of this session runs.
			if !first {
				a.drain(cancelHandlers)
			}
			break
		}
		if errors.Is(err, ErrIdentityInUse) {
			if inUse.IsZero() {
				inUse, inUseSaid = time.Now(), time.Time{}
			}
			if first && time.Since(inUse) >= a.cfg.IdentityWait {
				return fmt.Errorf("%w: %s kept another consumer for %v: is another agent %q running?",
					ErrIdentityInUse, wire.AgentQueue(a.cfg.Identity), a.cfg.IdentityWait, a.cfg.Identity)
			}
			// A wait that ends by itself (a mapper's move, a connection
			// the broker has not closed yet) is usual: said at Warn when
			// it begins and every inUseEvery, each retry at Debug.
			level := slog.LevelDebug
			if inUseSaid.IsZero() || time.Since(inUseSaid) >= inUseEvery {
				level, inUseSaid = slog.LevelWarn, time.Now()
			}
			a.log.Log(ctx, level, "the agent's queue is consumed by someone else: another agent with this identity, a mapper moving what a dropped agent left there, or this agent's previous connection not yet closed by the broker; waiting for it to go",
				"queue", wire.AgentQueue(a.cfg.Identity), "waited", time.Since(inUse).Round(time.Millisecond), "gives_up", giveUp(first, a.cfg.IdentityWait), "err", err)
			if !bo.Wait(ctx) {
				if !first {
					a.drain(cancelHandlers)
				}
				break
			}
			continue
		}
		inUse = time.Time{}
		if err != nil {
			if !retryable(err) || (first && startLosses == backoff.StartRetries) {
				if !first {
					a.drain(cancelHandlers)
				}
				return err
			}
			if first {
				startLosses++
				a.log.Warn("connection lost while starting; starting again", "err", err, "attempt", startLosses, "of", backoff.StartRetries)
			} else {
				a.log.Warn("cannot re-establish the session; retrying", "err", err)
			}
			a.staleOwn++ // it may have consumed before the loss
			if !bo.Wait(ctx) {
				break
			}
			continue
		}
		if first {
			a.log.Info("agent registered", "services", a.Services(), "tags", a.cfg.Tags)
			close(a.ready)
			first = false
		} else {
			a.log.Warn("session re-established: queues declared, consumers restored, registered")
		}
		bo.Reset()
		lost := a.serveSession(ctx, bg, s)
		if !lost {
			// ctx ended: tell the mappers to stop selecting this agent,
			// drain this session, then unregister. Unregistering only at
			// the end keeps mappers from re-sending the work in hand
			// elsewhere, which would run it twice.
			a.draining.Store(true)
			if err := a.beatWithin(bg, wire.TypePing); err != nil {
				a.log.Warn("draining ping failed", "err", err)
			}
			s.stopTaking()
			stopPings := a.pingWhileDraining(bg)
			// At the drain timeout the own queue is no longer read
			// before the handlers are cancelled: the requests they
			// requeue wait there for the mappers (which re-send what
			// they wait for when the agent unregisters), instead of
			// coming straight back to be passed on.
			a.drain(func() { s.stopOwn(); cancelHandlers() })
			s.stopOwn()
			stopPings()
			s.stop()
			uctx, cancel := context.WithTimeout(bg, 5*time.Second)
			if err := a.beat(uctx, wire.TypeUnregister); err != nil {
				a.log.Warn("unregister failed", "err", err)
			}
			cancel()
			break
		}
		a.log.Warn("connection lost: re-establishing the session")
		s.stop()
		// Its consumer may still count on the own queue (see declare).
		a.staleOwn++
		if !bo.Wait(ctx) {
			a.drain(cancelHandlers)
			break
		}
	}
	a.streams.removeAll() // what was received of streams nobody will close
	a.log.Info("agent stopped", "handled", a.handled.Load())
	return nil
}

// giveUp says when an agent waiting for its queue gives up: at start,
// after IdentityWait; after a reconnection, never.
func giveUp(first bool, wait time.Duration) string {
	if first {
		return "after " + wait.String()
	}
	return "never (reconnecting)"
}

// drain waits for the requests in hand, cancelling their contexts after the
// drain timeout.
func (a *Agent) drain(cancelHandlers func()) {
	done := make(chan struct{})
	go func() { a.inflight.Wait(); close(done) }()
	t := time.NewTimer(a.cfg.DrainTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		a.log.Warn("drain timeout: cancelling handlers; their requests are requeued")
		cancelHandlers()
		// A handler that ignores its context must not hold the agent
		// forever: its request is requeued when the consumers stop.
		grace := time.NewTimer(drainGrace)
		defer grace.Stop()
		select {
		case <-done:
		case <-grace.C:
			a.log.Error("handlers ignore cancellation: stopping without them", "grace", drainGrace)
		}
	}
}

// drainGrace is how long a stopping agent waits, after the drain timeout,
// for handlers to honour their cancelled context.
const drainGrace = 5 * time.Second

// inUseEvery is how often Run says again, at Warn, that it still waits
// for another consumer of the agent's queue to go.
const inUseEvery = 5 * time.Second

// pingWhileDraining keeps pinging (every service inactive) during the
// drain, so that mappers neither select the agent nor drop it as silent,
// which would make them re-send its requests in hand to another agent. The
// function returned stops the pings and waits for the last one.
func (a *Agent) pingWhileDraining(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(a.cfg.PingInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := a.beatWithin(ctx, wire.TypePing); err != nil && ctx.Err() == nil {
					a.log.Warn("draining ping failed", "err", err)
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

// serveSession pings and answers announces and discovery questions until ctx ends (false) or the
// session's connection is lost (true).
func (a *Agent) serveSession(ctx, bg context.Context, s *session) bool {
	ticker := time.NewTicker(a.cfg.PingInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-s.lost:
			return true
		case <-ticker.C:
			s.syncActive(bg)
			if err := a.beatWithin(ctx, wire.TypePing); err != nil {
				a.log.Warn("ping failed", "err", err)
				if retryable(err) {
					return true
				}
			}
		case d, ok := <-s.control:
			if !ok {
				return true
			}
			switch d.Type {
			case wire.TypeAnnounce:
				if err := a.beatWithin(ctx, wire.TypePing); err != nil {
					a.log.Warn("announce reply failed", "err", err)
				}
			case wire.TypeDiscover:
				a.discover(ctx, d) // discovery.go
			}
		}
	}
}

// retryable reports whether an error may go away by reconnecting.
func retryable(err error) bool {
	return errors.Is(err, transport.ErrConnectionLost)
}

// heartbeat returns this agent's heartbeat record.
func (a *Agent) heartbeat() wire.Heartbeat {
	inFlight, handled := a.inFlight.Load(), a.handled.Load()
	return wire.Heartbeat{
		InFlight:     &inFlight,
		Handled:      &handled,
		Identity:     a.cfg.Identity,
		Queue:        wire.AgentQueue(a.cfg.Identity),
		Services:     a.Services(),
		Tags:         a.cfg.Tags,
		Status:       a.status(),
		PingInterval: a.cfg.PingInterval.Milliseconds(),
		Inactive:     a.inactive(),
		Started:      a.started.UTC(),
		QueueType:    a.queueType(),
	}
}

// queueType is the type of the agent's own queue, as declared (see
// session.declare), for its heartbeat.
func (a *Agent) queueType() string {
	if a.cfg.Durable {
		return wire.QueueQuorum
	}
	return wire.QueueClassic
}

// inactive lists the services whose Active predicate is false: every
// service while the agent drains.
func (a *Agent) inactive() []string {
	if a.draining.Load() {
		return a.Services()
	}
	var out []string
	for _, p := range a.Services() {
		if !a.service(p).isActive() {
			out = append(out, p)
		}
	}
	return out
}

// beatWithin sends a heartbeat, giving up after a ping interval or when ctx
// ends, so that a broker outage does not hold up the serve loop.
func (a *Agent) beatWithin(ctx context.Context, typ string) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.PingInterval)
	defer cancel()
	return a.beat(ctx, typ)
}

func (a *Agent) beat(ctx context.Context, typ string) error {
	msg, err := wire.NewHeartbeat(typ, a.heartbeat())
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if err := a.tr.Publish(ctx, wire.HeartbeatExchange, "", msg, transport.PublishOptions{}); err != nil {
		return fmt.Errorf("agent: %s: %w", typ, err)
	}
	return nil
}
