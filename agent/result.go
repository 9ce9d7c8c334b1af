package agent

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// StreamResult, returned by a handler as its result, sends Data, of any
// size, to a caller that takes streamed results (mapper.AcceptStream), in
// chunks paced by the caller's credits and with a checksum, then Meta (a
// JSON value, such as a name) as the reply's body. A caller that does not
// take streams gets an error (code handler_error) instead. Data is read
// to its end and closed when it is an io.Closer.
type StreamResult struct {
	Data io.Reader
	Meta any
}

// resultChunk is the size of a streamed result's chunks.
const resultChunk = 256 << 10

// resultWindow is how many chunks of a result go beyond the caller's last
// credit.
const resultWindow = 16

// sender is a streamed result being sent: the caller's credits arrive on
// the agent's queue.
type sender struct {
	mu     sync.Mutex
	stored int64
	signal chan struct{} // buffered 1
}

// senders maps stream ids to the results being sent.
type senders struct {
	mu sync.Mutex
	m  map[string]*sender
}

func (ss *senders) add(id string) *sender {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.m == nil {
		ss.m = map[string]*sender{}
	}
	s := &sender{signal: make(chan struct{}, 1)}
	ss.m[id] = s
	return s
}

func (ss *senders) remove(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.m, id)
}

// resultCredit records a caller's credit for a streamed result, and acks
// it. A credit for no result being sent (late) is dropped.
func (a *Agent) resultCredit(d *transport.Delivery) {
	defer a.settle(d, true, false)
	n, err := wire.ReadCredit(d)
	if err != nil {
		a.log.Warn("bad credit", "err", err)
		return
	}
	a.sending.mu.Lock()
	s := a.sending.m[d.CorrelationID]
	a.sending.mu.Unlock()
	if s == nil {
		return
	}
	s.mu.Lock()
	s.stored = max(s.stored, n)
	s.mu.Unlock()
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

// replyStream sends sr to the caller of d: chunks, each confirmed before
// the next (so they arrive in order) and at most resultWindow beyond the
// caller's credits, then the reply with the stream's count, size and
// SHA-256 and Meta as body. A caller that stops crediting for the idle
// timeout has gone: the rest is dropped and d acked.
func (a *Agent) replyStream(ctx context.Context, log *slog.Logger, d *transport.Delivery, req *Request, sr *StreamResult) {
	defer closeData(sr)
	if !wire.AcceptsStream(d) {
		a.fail(ctx, d, req, wire.CodeHandler, "the result is a stream, and the caller does not take streamed results (mapper.AcceptStream)")
		return
	}
	if sr.Data == nil {
		a.fail(ctx, d, req, wire.CodeHandler, "StreamResult without Data")
		return
	}
	meta, err := json.Marshal(sr.Meta)
	if err != nil {
		a.fail(ctx, d, req, wire.CodeHandler, "stream meta does not encode as JSON: "+err.Error())
		return
	}
	id := d.CorrelationID
	if id == "" {
		id = d.MessageID
	}
	s := a.sending.add(id)
	defer a.sending.remove(id)
	idle := a.streams.config().IdleTimeout
	to := a.recipient(d)
	h := sha256.New()
	buf := make([]byte, resultChunk)
	var seq, size int64
	for {
		n, rerr := io.ReadFull(sr.Data, buf)
		if n > 0 {
			if !a.awaitCredit(ctx, s, seq, idle) {
				log.Warn("the caller of a streamed result stopped crediting: it has gone; the rest is dropped", "sent", seq)
				a.settle(d, true, false)
				return
			}
			msg := wire.NewResultChunk(d, a.cfg.Identity, to, seq, append([]byte(nil), buf[:n]...))
			pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			err := a.tr.Publish(pctx, transport.DefaultExchange, d.ReplyTo, msg, transport.PublishOptions{Confirm: true})
			cancel()
			if err != nil {
				log.Warn("streamed result: chunk not sent: requeueing the request", "err", err)
				a.settle(d, false, true)
				return
			}
			h.Write(buf[:n])
			size += int64(n)
			seq++
		}
		if rerr == io.EOF || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			a.fail(ctx, d, req, wire.CodeHandler, fmt.Sprintf("streamed result: read: %v", rerr))
			return
		}
	}
	msg := wire.Reply(d, a.cfg.Identity, to, meta)
	wire.SetStream(&msg, wire.Stream{ID: id, Chunks: seq, Size: size, SHA256: h.Sum(nil)})
	a.reply(ctx, d, msg)
}

// awaitCredit waits until sent is within the window of s's credits; false
// when the caller sent none for idle, or the agent stopped.
func (a *Agent) awaitCredit(ctx context.Context, s *sender, sent int64, idle time.Duration) bool {
	t := time.NewTimer(idle)
	defer t.Stop()
	for {
		s.mu.Lock()
		stored := s.stored
		s.mu.Unlock()
		if sent-stored < resultWindow {
			return true
		}
		select {
		case <-s.signal:
			t.Reset(idle)
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// closeData closes sr's Data when it is an io.Closer.
func closeData(sr *StreamResult) {
	if c, ok := sr.Data.(io.Closer); ok {
		c.Close()
	}
}
