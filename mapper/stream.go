package mapper

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// DefaultChunkSize is the size of a streamed request's chunks unless
// ChunkSize says otherwise.
const DefaultChunkSize = 256 << 10

// streamWindow is how many chunks a stream keeps in flight beyond those
// the agent reported stored (its credits): the flow control that bounds
// the broker's queue and the agent's memory, whatever the stream's size.
const streamWindow = 16

// ChunkSize sets the size of a streamed request's chunks (Stream), from
// 1 byte to 16 MiB; 0 is DefaultChunkSize.
func ChunkSize(n int) CallOption { return func(c *call) { c.chunk = n } }

// Stream sends the data r reads, of any size, to one agent serving path
// (picked by the selector, least_loaded by default), with meta as the
// request's JSON payload (a file name, say), and waits for the result.
// The data goes in chunks (ChunkSize), at most a window of them ahead of
// what the agent has stored, so memory stays bounded on both sides; the
// agent checks their order, number, size and SHA-256 and runs the handler
// only on the whole data (agent.Request.Stream). A broken stream (a chunk
// lost, the agent restarted, a checksum that does not match) fails with a
// *wire.RemoteError of code wire.CodeStreamBroken; the handler did not
// run. A stream is not re-sent to another agent: if its agent leaves, the
// call fails. r is read once, to its end.
func (m *Mapper) Stream(ctx context.Context, path string, meta any, r io.Reader, opts ...CallOption) (*Reply, error) {
	return m.stream(ctx, path, meta, r, false, opts)
}

// PushStream sends the data r reads, of any size, as a push to one agent
// serving path (picked by the selector, least_loaded by default), with
// meta as the push's JSON payload. It goes as Stream's data does, in
// chunks with flow control, and PushStream returns once the agent reports
// that it holds the whole data, its size and SHA-256 checked: the handler
// then runs on it (agent.Request.Stream, Request.Push true) without
// anyone waiting for its result; its failure is dead-lettered as a
// push's. A broken stream fails with a *wire.RemoteError of code
// wire.CodeStreamBroken, and the handler does not run. r is read once, to
// its end.
func (m *Mapper) PushStream(ctx context.Context, path string, meta any, r io.Reader, opts ...CallOption) error {
	_, err := m.stream(ctx, path, meta, r, true, opts)
	return err
}

// stream is Stream, or PushStream when push.
func (m *Mapper) stream(ctx context.Context, path string, meta any, r io.Reader, push bool, opts []CallOption) (*Reply, error) {
	c := m.options(LeastLoaded(), opts)
	if c.chunk < 0 || c.chunk > wire.DefaultMaxMessageSize {
		return nil, fmt.Errorf("mapper: chunk size %d: want 1 to %d", c.chunk, wire.DefaultMaxMessageSize)
	}
	size := c.chunk
	if size == 0 {
		size = DefaultChunkSize
	}
	if !push {
		ctx = withProgress(ctx, c.progress, c.progressIdle)
		ctx = withAcceptStream(ctx, c.acceptStream)
	}
	targets, body, err := m.prepare(ctx, path, meta, c, nil, nil)
	if err != nil {
		return nil, err
	}
	t := targets[0].Identity
	id := newID()
	typ := wire.TypeRequest
	if push {
		// A push with a reply queue: the agent answers once it holds the
		// data, then runs the handler as a push's.
		typ = wire.TypePush
	}
	final := m.message(ctx, typ, path, body)
	final.MessageID, final.CorrelationID = id, id
	final.Headers[wire.HeaderPinned] = true // the chunks are in this agent's queue only
	final.Persistent = c.persistent
	m.address(&final, t)
	w := &waiter{ch: make(chan struct{}, 1), path: path, target: t, sentTo: []string{t}, credit: make(chan struct{}, 1)}
	watchProgress(ctx, w, &final)
	watchResult(ctx, &final)
	m.mu.Lock()
	replyQ := m.replyQ
	final.ReplyTo = replyQ
	w.msg, w.sent = final, time.Now()
	if replyQ != "" {
		m.pending[id] = w
	}
	m.mu.Unlock()
	if replyQ == "" {
		return nil, fmt.Errorf("mapper: stream %s to %s: %w", path, t, transport.ErrConnectionLost)
	}
	forget := func() {
		m.mu.Lock()
		delete(m.pending, id)
		m.mu.Unlock()
	}
	// wait waits for room in the window; a reply (an error: the agent
	// gave up on the stream) or the end of ctx ends the stream.
	wait := func(sent int64) (*Reply, error) {
		for {
			m.mu.Lock()
			stored := w.stored
			m.mu.Unlock()
			if sent-stored < streamWindow {
				return nil, nil
			}
			select {
			case <-w.credit:
			case <-w.progressSignal():
				m.runProgress(w)
			case <-w.ch:
				return w.reply, nil
			case <-ctx.Done():
				forget()
				return nil, fmt.Errorf("stream %s to %s: %w: %w", path, t, ErrTimeout, ctx.Err())
			}
		}
	}
	h := sha256.New()
	buf := make([]byte, size)
	var seq, total int64
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if r, err := wait(seq); r != nil || err != nil {
				return m.streamReply(path, t, r, err)
			}
			// A copy: the embedded broker keeps the body it is given.
			msg := wire.NewChunk(path, m.cfg.Identity, id, seq, replyQ, bytes.Clone(buf[:n]))
			msg.Persistent = c.persistent
			m.address(&msg, t)
			if err := m.tr.Publish(ctx, wire.RequestExchange, t, msg, transport.PublishOptions{Confirm: true, Mandatory: true}); err != nil {
				forget()
				m.unroutable(t, err)
				return nil, fmt.Errorf("mapper: stream %s to %s: chunk %d: %w", path, t, seq, err)
			}
			h.Write(buf[:n])
			total += int64(n)
			seq++
		}
		if rerr == io.EOF || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			// The agent abandons the chunks after its idle timeout.
			forget()
			return nil, fmt.Errorf("mapper: stream %s: read: %w", path, rerr)
		}
	}
	wire.SetStream(&final, wire.Stream{ID: id, Chunks: seq, Size: total, SHA256: h.Sum(nil)})
	if err := m.tr.Publish(ctx, wire.RequestExchange, t, final, transport.PublishOptions{Mandatory: true}); err != nil {
		forget()
		m.unroutable(t, err)
		return nil, fmt.Errorf("mapper: stream %s to %s: %w", path, t, err)
	}
	m.awaitProgress(ctx, w)
	select {
	case <-w.ch:
		return m.streamReply(path, t, w.reply, nil)
	case <-ctx.Done():
		forget()
		return nil, fmt.Errorf("stream %s to %s: %w: %w", path, t, ErrTimeout, ctx.Err())
	}
}

// streamReply returns the outcome of a stream as Request would.
func (m *Mapper) streamReply(path, target string, r *Reply, err error) (*Reply, error) {
	if err != nil {
		return nil, err
	}
	if r.Agent == "" {
		r.Agent = target
	}
	if r.Err != nil && (errors.Is(r.Err, ErrNotRunning) || errors.Is(r.Err, transport.ErrConnectionLost)) {
		return nil, fmt.Errorf("mapper: stream %s to %s: %w", path, target, r.Err)
	}
	if r.Err != nil {
		return r, r.Err
	}
	return r, nil
}

// readCredit records how many chunks the agent of a stream has stored.
func (m *Mapper) readCredit(d *transport.Delivery) {
	n, err := wire.ReadCredit(d)
	if err != nil {
		m.log.Debug("malformed credit discarded", "correlation_id", d.CorrelationID, "err", err)
		return
	}
	m.mu.Lock()
	w := m.pending[d.CorrelationID]
	if w == nil || w.credit == nil || !w.accepts(d.AppID) {
		m.mu.Unlock()
		return
	}
	w.stored = max(w.stored, n)
	m.mu.Unlock()
	select {
	case w.credit <- struct{}{}:
	default:
	}
}
