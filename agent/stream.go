package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Streamed requests (mapper.Stream): the caller sends the data in chunks
// to this agent's own queue, then the request that closes the stream.
// The agent writes the chunks, in order, to a file of its own (memory
// stays bounded whatever the size), checks their number, size and
// SHA-256 when the request comes, and only then runs the handler, with
// Request.Stream reading the file. A stream with a chunk missing, out of
// place, beyond the size limit or not matching its checksum is answered
// with code stream_broken and never reaches a handler; one whose sender
// went silent is removed, file and all, after its idle timeout.

// StreamConfig tunes how an agent receives streamed requests.
type StreamConfig struct {
	// Dir holds the files of streams being received; "" is os.TempDir().
	Dir string
	// MaxSize refuses a stream larger than this many bytes; 0 means 16 GiB.
	MaxSize int64
	// IdleTimeout abandons a stream (its file is removed) when no chunk
	// came for this long before the request that closes it; it also
	// bounds how long a chunk waits for the one before it. 0 means 1m.
	IdleTimeout time.Duration
}

// WithStreams tunes streamed requests.
func WithStreams(c StreamConfig) Option { return func(o *options) { o.stream = c } }

// creditEvery is how many chunks the agent stores between two credits
// to the sender; the sender keeps at most mapper's window in flight.
const creditEvery = 4

// streamTable holds the streams being received.
type streamTable struct {
	cfg StreamConfig
	mu  sync.Mutex
	m   map[string]*assembly
}

// assembly is one stream being received.
type assembly struct {
	id      string
	mu      sync.Mutex
	changed chan struct{} // closed and replaced when next or err changes
	file    *os.File
	hash    hash.Hash
	next    int64 // the chunk expected next
	size    int64
	err     error
	closing bool // the closing request has it: no idle timeout
	waiting int  // chunks or requests waiting in await: they say what is missing
	idle    *time.Timer
}

func (t *streamTable) config() StreamConfig {
	c := t.cfg
	if c.Dir == "" {
		c.Dir = os.TempDir()
	}
	if c.MaxSize <= 0 {
		c.MaxSize = 16 << 30
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = time.Minute
	}
	return c
}

// get returns the assembly of stream id, creating it when create.
func (t *streamTable) get(id string, create bool) (*assembly, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.m[id]; s != nil || !create {
		return s, nil
	}
	c := t.config()
	f, err := os.CreateTemp(c.Dir, "warren-stream-*")
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", id, err)
	}
	s := &assembly{id: id, changed: make(chan struct{}), file: f, hash: sha256.New()}
	s.idle = time.AfterFunc(c.IdleTimeout, func() {
		t.abandon(s, fmt.Errorf("no chunk for %v: abandoned", c.IdleTimeout))
	})
	if t.m == nil {
		t.m = map[string]*assembly{}
	}
	t.m[id] = s
	return s, nil
}

// abandon removes s after its sender went silent, unless the closing
// request has it.
func (t *streamTable) abandon(s *assembly, why error) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	if s.waiting > 0 {
		// A chunk or the request waits for a chunk: it fails the stream
		// saying which, and the next timeout removes it.
		s.idle.Reset(t.config().IdleTimeout)
		s.mu.Unlock()
		return
	}
	s.fail(why)
	s.mu.Unlock()
	t.remove(s)
}

// remove forgets s and deletes its file.
func (t *streamTable) remove(s *assembly) {
	t.mu.Lock()
	if t.m[s.id] == s {
		delete(t.m, s.id)
	}
	t.mu.Unlock()
	s.idle.Stop()
	s.file.Close()
	os.Remove(s.file.Name())
}

// removeAll removes every stream being received, when the agent stops.
func (t *streamTable) removeAll() {
	t.mu.Lock()
	all := make([]*assembly, 0, len(t.m))
	for _, s := range t.m {
		all = append(all, s)
	}
	t.mu.Unlock()
	for _, s := range all {
		t.remove(s)
	}
}

// Streams returns the number of streams being received, for tests and
// stats.
func (a *Agent) Streams() int {
	a.streams.mu.Lock()
	defer a.streams.mu.Unlock()
	return len(a.streams.m)
}

// fail records the first error of s. The caller holds s.mu.
func (s *assembly) fail(err error) {
	if s.err == nil {
		s.err = err
		close(s.changed)
		s.changed = make(chan struct{})
	}
}

// await waits, holding s.mu on return, until cond holds, s failed, or
// wait passed (then it fails s with missing).
func (s *assembly) await(wait time.Duration, cond func() bool, missing func() error) {
	deadline := time.Now().Add(wait)
	s.waiting++
	defer func() { s.waiting-- }()
	for !cond() && s.err == nil {
		ch := s.changed
		s.mu.Unlock()
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-ch:
		case <-t.C:
		}
		t.Stop()
		s.mu.Lock()
		if !cond() && s.err == nil && !time.Now().Before(deadline) {
			s.fail(missing())
		}
	}
}

// chunk stores one chunk of a stream and acks it. Deliveries are served
// concurrently, so a chunk waits (up to the idle timeout) for the one
// before it; a chunk seen before (redelivered) is acked and dropped.
func (a *Agent) chunk(ctx context.Context, d *transport.Delivery) {
	c, err := wire.ReadChunk(d)
	if err != nil {
		a.log.Warn("bad chunk", "err", err)
		a.streamFailed(ctx, d, err)
		return
	}
	cfg := a.streams.config()
	s, err := a.streams.get(c.Stream, true)
	if err != nil {
		a.log.Error("cannot store a stream", "err", err)
		a.streamFailed(ctx, d, err)
		return
	}
	s.mu.Lock()
	s.await(cfg.IdleTimeout, func() bool { return c.Seq <= s.next }, func() error {
		return fmt.Errorf("chunk %d missing (chunk %d came)", s.next, c.Seq)
	})
	switch {
	case s.err != nil:
		err = s.err
	case c.Seq < s.next:
		s.mu.Unlock()
		a.settle(d, true, false) // a duplicate: stored already
		return
	case s.size+int64(len(d.Body)) > cfg.MaxSize:
		s.fail(fmt.Errorf("stream larger than %d bytes", cfg.MaxSize))
		err = s.err
	default:
		if _, werr := s.file.Write(d.Body); werr != nil {
			s.fail(fmt.Errorf("store chunk %d: %w", c.Seq, werr))
			err = s.err
			break
		}
		s.hash.Write(d.Body)
		s.size += int64(len(d.Body))
		s.next++
		close(s.changed)
		s.changed = make(chan struct{})
		s.idle.Reset(cfg.IdleTimeout)
	}
	stored := s.next
	s.mu.Unlock()
	if err != nil {
		a.streamFailed(ctx, d, err)
		return
	}
	if stored%creditEvery == 0 && d.ReplyTo != "" {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if perr := a.tr.Publish(pctx, transport.DefaultExchange, d.ReplyTo, wire.NewCredit(d, a.cfg.Identity, a.recipient(d), stored), transport.PublishOptions{}); perr != nil {
			a.log.Warn("stream credit not sent", "err", perr, "stream", c.Stream)
		}
		cancel()
	}
	a.settle(d, true, false)
}

// streamFailed tells the sender of chunk d that its stream is broken (an
// error reply to the stream, which ends its wait) and acks d.
func (a *Agent) streamFailed(ctx context.Context, d *transport.Delivery, err error) {
	if d.ReplyTo == "" {
		a.deadLetter(ctx, d, &Request{Path: wire.String(d.Headers, wire.HeaderPath)}, wire.CodeStreamBroken, err.Error())
		return
	}
	a.reply(ctx, d, wire.ErrorReply(d, a.cfg.Identity, a.recipient(d), wire.CodeStreamBroken, err.Error()))
}

// errUnknownStream: the closing request came, but no chunk of its stream
// did (this agent restarted, or the stream was abandoned).
var errUnknownStream = errors.New("no chunk of this stream came (the agent restarted, or the stream was abandoned)")

// attachStream waits for the stream req closes to be whole, checks it,
// and gives it to req (Request.Stream). done removes its file.
func (a *Agent) attachStream(req *Request, st wire.Stream) (done func(), err error) {
	// Deliveries are served concurrently: the request may be here
	// before its chunks.
	s, err := a.streams.get(st.ID, true)
	if err != nil {
		return nil, err
	}
	cfg := a.streams.config()
	s.mu.Lock()
	wait := cfg.IdleTimeout
	if !req.Deadline.IsZero() {
		wait = min(wait, time.Until(req.Deadline))
	}
	s.await(wait, func() bool { return s.next >= st.Chunks }, func() error {
		if s.next == 0 {
			return errUnknownStream
		}
		return fmt.Errorf("chunk %d of %d missing", s.next, st.Chunks)
	})
	s.closing = s.err == nil
	switch {
	case s.err != nil:
		err = s.err
	case s.next != st.Chunks:
		err = fmt.Errorf("%d chunks stored, the request says %d", s.next, st.Chunks)
	case s.size != st.Size:
		err = fmt.Errorf("%d bytes stored, the request says %d", s.size, st.Size)
	case !bytes.Equal(s.hash.Sum(nil), st.SHA256):
		err = errors.New("SHA-256 does not match")
	}
	s.mu.Unlock()
	if err != nil {
		a.streams.remove(s)
		return nil, err
	}
	s.idle.Stop()
	if _, err := s.file.Seek(0, 0); err != nil {
		a.streams.remove(s)
		return nil, err
	}
	req.Stream, req.StreamSize = s.file, s.size
	return func() { a.streams.remove(s) }, nil
}

// held tells the sender of streamed push d that the agent holds its whole,
// checked data, and returns d without its reply queue: a push. When the
// notice cannot be sent the sender fails on its own (its timeout), and
// the handler still runs: the push is here.
func (a *Agent) held(ctx context.Context, log *slog.Logger, d *transport.Delivery) *transport.Delivery {
	pctx := a.replyContext(ctx)
	if err := a.tr.Publish(pctx, transport.DefaultExchange, d.ReplyTo, wire.StreamHeld(d, a.cfg.Identity, a.recipient(d)), transport.PublishOptions{}); err != nil {
		log.Warn("streamed push: the notice that it is held was not sent", "err", err)
	}
	p := *d
	p.ReplyTo = ""
	return &p
}
