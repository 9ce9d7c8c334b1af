package events

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Streamed events (PublishStream): data of any size goes to
// warren.events in chunks, all with the event's key, so that every
// subscription queue bound to it gets each chunk. The subscriber that
// receives chunk 0 (the head: the event's payload) assembles the stream;
// every subscriber of the queue that receives a data chunk forwards it,
// confirmed, to the stream's collection queue and acks it, so that chunks
// spread over the consumers of a group queue all reach the assembler. The
// assembler writes them at their offsets to a file, checks their number,
// size and SHA-256, and only then runs the handler, once, with
// Event.Stream reading the file; it acks the head and deletes the
// collection queue after the handler. It holds the head and the chunks
// unacked meanwhile: when it dies they are redelivered, and the
// subscriber that gets the head next takes over. A stream whose chunks
// stop coming for the idle timeout is dead-lettered (its head, reason
// stream_broken) and removed.

// DefaultChunkSize is the size of a streamed event's chunks unless
// StreamConfig.ChunkSize or ChunkSize says otherwise.
const DefaultChunkSize = 256 << 10

// MaxStreamChunks is the most data chunks a streamed event has: its
// assembler holds them unacked (an AMQP prefetch is at most 65535), so
// that another can take over when it dies. With the default chunk size
// that is 16 GiB.
const MaxStreamChunks = 65534

// StreamConfig tunes streamed events.
type StreamConfig struct {
	// ChunkSize is the size of the chunks PublishStream sends, from 1
	// byte to the message size limit; 0 is DefaultChunkSize.
	ChunkSize int `yaml:"chunk_size"`
	// Dir holds the files of streams being assembled; "" is os.TempDir().
	Dir string `yaml:"dir"`
	// MaxSize dead-letters a stream larger than this many bytes; 0 means
	// 16 GiB.
	MaxSize int64 `yaml:"max_size"`
	// IdleTimeout dead-letters a stream (reason stream_broken) when no
	// chunk of it came for this long: its publisher died, or a chunk was
	// lost. 0 means 1m. The collection queues expire after 5 times as
	// long unused.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
}

func (c StreamConfig) withDefaults() StreamConfig {
	if c.ChunkSize == 0 {
		c.ChunkSize = DefaultChunkSize
	}
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

// ChunkSize sets the size of one PublishStream's chunks.
func ChunkSize(n int) PublishOption { return func(p *publish) { p.chunk = n } }

// PublishStream publishes an event with key whose data r reads, of any
// size, with payload (marshalled as Publish does: a file name, say) as
// its JSON payload. The data goes in chunks (StreamConfig.ChunkSize), each
// confirmed by the broker before the next is read, so the publisher's
// memory stays bounded; subscribers assemble it in a file and run the
// handler once on the whole, checked data (Event.Stream). It returns once
// the last chunk is confirmed. A publisher that stops midway (an error
// from r, ctx, a crash) leaves a stream that subscribers dead-letter
// (reason stream_broken) after their idle timeout. The options are
// Publish's, and ChunkSize.
func (b *Bus) PublishStream(ctx context.Context, key string, payload any, r io.Reader, opts ...PublishOption) error {
	p, body, err := b.prepare(ctx, key, payload, opts)
	if err != nil {
		return err
	}
	size := b.cfg.Streams.ChunkSize
	if p.chunk != 0 {
		size = p.chunk
	}
	id := newID()
	head := wire.NewEventHead(b.cfg.Identity, id, body, p.ttl)
	head.Persistent = p.persistent
	err = b.tr.Publish(ctx, wire.EventExchange, key, head, transport.PublishOptions{Confirm: true, Mandatory: p.mandatory})
	if errors.Is(err, transport.ErrUnroutable) {
		return fmt.Errorf("events: publish %s: %w", key, ErrNoSubscriber)
	}
	if err != nil {
		return fmt.Errorf("events: publish %s: head: %w", key, err)
	}
	// One chunk is read ahead: the last one carries the sums.
	h := sha256.New()
	cur, next := make([]byte, size), make([]byte, size)
	n, rerr := io.ReadFull(r, cur)
	var seq, off int64 = 1, 0
	for {
		if rerr != nil && rerr != io.EOF && !errors.Is(rerr, io.ErrUnexpectedEOF) {
			return fmt.Errorf("events: publish %s: read: %w (subscribers dead-letter the stream)", key, rerr)
		}
		last := rerr != nil
		var m int
		var nerr error
		if !last {
			m, nerr = io.ReadFull(r, next)
			if m == 0 && nerr == io.EOF {
				last = true
			}
		}
		if seq > MaxStreamChunks {
			return fmt.Errorf("events: publish %s: more than %d chunks: raise the chunk size (subscribers dead-letter the stream)", key, MaxStreamChunks)
		}
		// A copy: the embedded broker keeps the body it is given.
		msg := wire.NewEventChunk(b.cfg.Identity, id, seq, off, bytes.Clone(cur[:n]))
		msg.Persistent = p.persistent
		h.Write(cur[:n])
		if last {
			wire.SetEventStreamEnd(&msg, wire.Stream{ID: id, Chunks: seq + 1, Size: off + int64(n), SHA256: h.Sum(nil)})
		}
		if err := b.tr.Publish(ctx, wire.EventExchange, key, msg, transport.PublishOptions{Confirm: true}); err != nil {
			return fmt.Errorf("events: publish %s: chunk %d: %w (subscribers dead-letter the stream)", key, seq, err)
		}
		if last {
			return nil
		}
		off += int64(n)
		seq++
		cur, next = next, cur
		n, rerr = m, nerr
	}
}

// forwarded records the collection queues a subscription's consumer
// declared, so that it declares each once.
type forwarded struct {
	mu       sync.Mutex
	declared map[string]time.Time // collection queue: when declared
}

// chunk takes a chunk of a streamed event from the subscription's queue:
// the head starts an assembly; a data chunk is forwarded to its
// collection queue and acked.
func (s *Subscription) chunk(d *transport.Delivery) {
	c, err := wire.ReadEventChunk(d)
	if err == nil {
		err = wire.CheckEventKey(d.RoutingKey)
	}
	if err == nil && c.Seq == 0 {
		err = s.checkBody(d.Body)
	}
	if err != nil {
		s.deadLetter(d, wire.CodeBadRequest, err.Error())
		return
	}
	if c.Seq == 0 {
		s.startAssembly(d, c)
		return
	}
	s.forward(d, c)
}

// streamSetupTimeout bounds a declaration or a forward.
const streamSetupTimeout = 30 * time.Second

// collectionQueue declares the collection queue of stream id.
func (s *Subscription) collectionQueue(ctx context.Context, id string) (string, error) {
	name := wire.EventStreamQueue(s.Queue(), id)
	cfg := s.b.cfg.Streams
	q := transport.Queue{Name: name, Durable: s.o.durable, Expires: 5 * cfg.IdleTimeout}
	if _, err := s.b.tr.DeclareQueue(ctx, q); err != nil {
		return "", fmt.Errorf("declare collection queue %s: %w", name, err)
	}
	return name, nil
}

// forward publishes data chunk d, confirmed, to its collection queue and
// acks it; it requeues d when it cannot.
func (s *Subscription) forward(d *transport.Delivery, c wire.EventChunk) {
	ctx, cancel := context.WithTimeout(s.stopCtx, streamSetupTimeout)
	defer cancel()
	name := wire.EventStreamQueue(s.Queue(), c.Stream)
	s.fwd.mu.Lock()
	if s.fwd.declared == nil {
		s.fwd.declared = map[string]time.Time{}
	}
	now := time.Now()
	idle := s.b.cfg.Streams.IdleTimeout
	for q, t := range s.fwd.declared {
		if now.Sub(t) > 4*idle {
			delete(s.fwd.declared, q)
		}
	}
	_, known := s.fwd.declared[name]
	s.fwd.mu.Unlock()
	if !known {
		if _, err := s.collectionQueue(ctx, c.Stream); err != nil {
			s.notForwarded(ctx, d, c, err)
			return
		}
		s.fwd.mu.Lock()
		s.fwd.declared[name] = now
		s.fwd.mu.Unlock()
	}
	err := s.b.tr.Publish(ctx, transport.DefaultExchange, name, wire.ForwardChunk(d, s.b.cfg.Identity), transport.PublishOptions{Confirm: true, Mandatory: true})
	switch {
	case errors.Is(err, transport.ErrUnroutable):
		// The stream was assembled and its queue deleted: a duplicate.
		s.b.log.Debug("chunk of a finished stream dropped", "stream", c.Stream, "chunk", c.Seq)
	case err != nil:
		s.notForwarded(ctx, d, c, err)
		return
	default:
		s.forwarded.Add(1)
	}
	s.settle(d, true, false)
}

// notForwarded settles chunk d that could not be forwarded: requeued
// when the connection or the subscription is going (another consumer, or
// this one later, forwards it), dead-lettered otherwise (a refusal would
// come back at each delivery): the stream then breaks.
func (s *Subscription) notForwarded(ctx context.Context, d *transport.Delivery, c wire.EventChunk, err error) {
	if ctx.Err() != nil || errors.Is(err, transport.ErrConnectionLost) || errors.Is(err, transport.ErrClosed) {
		s.b.log.Warn("stream chunk not forwarded: requeued", "stream", c.Stream, "chunk", c.Seq, "err", err)
		s.settle(d, false, true)
		return
	}
	s.deadLetter(d, wire.CodeStreamBroken, fmt.Sprintf("chunk %d not forwarded to its assembler: %v", c.Seq, err))
}

// assemblies are the streams a subscription is assembling, by id.
type assemblies struct {
	mu   sync.Mutex
	m    map[string]*struct{} // being assembled here: a token per assembly
	done map[string]time.Time // handled or broken here, and when
}

// Streams returns the number of streamed events the subscription is
// assembling, for tests and stats.
func (s *Subscription) Streams() int {
	s.asm.mu.Lock()
	defer s.asm.mu.Unlock()
	return len(s.asm.m)
}

// startAssembly assembles the stream whose head is d, in a goroutine of
// its own. A head of a stream handled (or broken) here a moment ago is a
// duplicate, acked and dropped; one of a stream being assembled here (a
// redelivery racing the end of the assembly that gave it back, or a
// duplicate) is requeued a second later.
func (s *Subscription) startAssembly(d *transport.Delivery, c wire.EventChunk) {
	now := time.Now()
	keep := 5 * s.b.cfg.Streams.IdleTimeout
	s.asm.mu.Lock()
	for id, t := range s.asm.done {
		if now.Sub(t) > keep {
			delete(s.asm.done, id)
		}
	}
	if _, dup := s.asm.done[c.Stream]; dup {
		s.asm.mu.Unlock()
		s.b.log.Info("head of a streamed event handled already: dropped", "stream", c.Stream)
		s.settle(d, true, false)
		return
	}
	s.inflight.Add(1)
	if s.asm.m[c.Stream] != nil {
		s.asm.mu.Unlock()
		go func() {
			defer s.inflight.Done()
			s.later(d)
		}()
		return
	}
	if s.asm.m == nil {
		s.asm.m, s.asm.done = map[string]*struct{}{}, map[string]time.Time{}
	}
	tok := new(struct{})
	s.asm.m[c.Stream] = tok
	s.asm.mu.Unlock()
	var once sync.Once
	release := func(done bool) {
		once.Do(func() {
			s.asm.mu.Lock()
			if s.asm.m[c.Stream] == tok {
				delete(s.asm.m, c.Stream)
			}
			if done {
				s.asm.done[c.Stream] = time.Now()
			}
			s.asm.mu.Unlock()
		})
	}
	go func() {
		defer s.inflight.Done()
		defer release(false)
		s.assemble(d, c, release)
	}()
}

// later requeues head d a second from now (or at Close): for another
// subscriber, or this one once it is free.
func (s *Subscription) later(d *transport.Delivery) {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.stop:
	}
	s.settle(d, false, true)
}

// errBusy: another subscriber assembles the stream (a duplicated head).
var errBusy = errors.New("another subscriber assembles this stream")

// assembly is one stream being received.
type assembly struct {
	file   *os.File
	hash   hash.Hash
	hashed int64          // the data up to here is in hash
	seen   map[int64]bool // data chunks stored
	size   int64          // bytes stored
	extent int64          // the end of the furthest chunk
	end    *wire.Stream
}

// assemble collects the stream whose head is d, runs the handler on it
// and settles the head: acked after the handler, dead-lettered when the
// stream broke, requeued when the subscription closes.
//
// release(true) records the stream as done with here (handled or broken),
// release(false) only as no longer assembled; it is called before the
// head is requeued, so that its redelivery here is not taken for a
// duplicate.
func (s *Subscription) assemble(d *transport.Delivery, c wire.EventChunk, release func(done bool)) {
	log := s.b.log.With("stream", c.Stream, "key", d.RoutingKey)
	if !c.Deadline.IsZero() && !time.Now().Before(c.Deadline) {
		s.deadLetter(d, wire.CodeExpired, "deadline passed before the subscriber started the event")
		return
	}
	cfg := s.b.cfg.Streams
	f, err := os.CreateTemp(cfg.Dir, "warren-event-*")
	if err != nil {
		// Another subscriber may have room: give it back, not at once.
		log.Error("cannot store a streamed event: requeued", "err", err)
		release(false)
		s.later(d)
		return
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	ctx, cancel := context.WithCancel(s.stopCtx)
	defer cancel()
	sctx, scancel := context.WithTimeout(ctx, streamSetupTimeout)
	name, err := s.collectionQueue(sctx, c.Stream)
	var chunks <-chan *transport.Delivery
	if err == nil {
		chunks, err = s.b.tr.Consume(ctx, name, transport.ConsumeOptions{Prefetch: MaxStreamChunks + 1, Exclusive: true})
		if errors.Is(err, transport.ErrPrecondition) {
			err = errBusy
		}
	}
	scancel()
	if err != nil {
		// Another subscriber may take it: give it back, not at once.
		log.Warn("cannot assemble a streamed event: requeued", "err", err)
		release(false)
		s.later(d)
		return
	}
	a := &assembly{file: f, hash: sha256.New(), seen: map[int64]bool{}}
	// deleteQueue removes the collection queue once the stream is done
	// with (handled or broken): not when the subscription closes, so
	// that another subscriber takes over.
	deleteQueue := func() {
		release(true)
		cancel()
		dctx, dcancel := context.WithTimeout(context.Background(), streamSetupTimeout)
		defer dcancel()
		if err := s.b.tr.DeleteQueue(dctx, name); err != nil {
			log.Warn("collection queue not deleted: it expires", "queue", name, "err", err)
		}
	}
	idle := time.NewTimer(cfg.IdleTimeout)
	defer idle.Stop()
	for a.end == nil || int64(len(a.seen)) < a.end.Chunks-1 {
		select {
		case <-s.stop:
			s.settle(d, false, true) // another subscriber takes over
			return
		case <-idle.C:
			s.broken(d, deleteQueue, fmt.Sprintf("no chunk for %v: the publisher stopped, or a chunk was lost (%s)", cfg.IdleTimeout, a.missing()))
			return
		case cd, ok := <-chunks:
			if !ok {
				// The connection was lost: the head goes back too.
				s.settle(d, false, true)
				return
			}
			if err := a.store(cd, c.Stream, cfg.MaxSize); err != nil {
				s.broken(d, deleteQueue, err.Error())
				return
			}
			idle.Reset(cfg.IdleTimeout)
		}
	}
	if err := a.check(); err != nil {
		s.broken(d, deleteQueue, err.Error())
		return
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		s.broken(d, deleteQueue, err.Error())
		return
	}
	select {
	case s.sem <- struct{}{}:
	case <-s.stop:
		s.settle(d, false, true)
		return
	}
	defer func() { <-s.sem }()
	ev := &Event{
		Key: d.RoutingKey, Payload: d.Body, From: d.AppID, ID: c.Stream,
		Time: d.Timestamp, Redelivered: d.Redelivered, Deadline: c.Deadline, Headers: d.Headers,
		Stream: f, StreamSize: a.size,
	}
	// A retry: the chunks go back to the collection queue (the consumer
	// ends) before the head goes back to the subscription queue.
	requeue := func() {
		cancel()
		release(false)
	}
	if s.finish(d, c.Deadline, ev, requeue) {
		deleteQueue()
	}
}

// broken dead-letters the head d of a broken stream with the reason and
// deletes its collection queue.
func (s *Subscription) broken(d *transport.Delivery, deleteQueue func(), why string) {
	deleteQueue()
	s.deadLetter(d, wire.CodeStreamBroken, why)
}

// store writes chunk cd of stream id at its offset; a chunk seen before
// is dropped. Its delivery is not acked: the collection queue is deleted
// when the stream is done with, and its chunks go back to the queue for
// another subscriber when this one dies.
func (a *assembly) store(cd *transport.Delivery, id string, maxSize int64) error {
	c, err := wire.ReadEventChunk(cd)
	switch {
	case err != nil:
		return err
	case c.Stream != id || c.Seq == 0:
		return fmt.Errorf("chunk %d of stream %q in the queue of stream %s", c.Seq, c.Stream, id)
	case a.seen[c.Seq]:
		return nil // a duplicate
	case a.end != nil && c.Seq >= a.end.Chunks:
		return fmt.Errorf("chunk %d beyond the last, %d", c.Seq, a.end.Chunks-1)
	case c.Offset+int64(len(cd.Body)) > maxSize:
		return fmt.Errorf("stream larger than %d bytes", maxSize)
	}
	if c.End != nil {
		if a.end != nil || a.extent > c.End.Size {
			return fmt.Errorf("chunk %d says the stream ends at %d bytes, chunk data reaches %d", c.Seq, c.End.Size, a.extent)
		}
		for seq := range a.seen {
			if seq >= c.End.Chunks {
				return fmt.Errorf("chunk %d beyond the last, %d", seq, c.End.Chunks-1)
			}
		}
		a.end = c.End
	}
	if _, err := a.file.WriteAt(cd.Body, c.Offset); err != nil {
		return fmt.Errorf("store chunk %d: %w", c.Seq, err)
	}
	if c.Offset == a.hashed {
		a.hash.Write(cd.Body)
		a.hashed += int64(len(cd.Body))
	}
	a.seen[c.Seq] = true
	a.size += int64(len(cd.Body))
	a.extent = max(a.extent, c.Offset+int64(len(cd.Body)))
	return nil
}

// missing says which chunks a broken stream lacks.
func (a *assembly) missing() string {
	if a.end == nil {
		return fmt.Sprintf("%d data chunks came, not the last", len(a.seen))
	}
	for seq := int64(1); seq < a.end.Chunks; seq++ {
		if !a.seen[seq] {
			return fmt.Sprintf("chunk %d of %d missing", seq, a.end.Chunks-1)
		}
	}
	return "complete"
}

// check compares the stored data with the last chunk's sums; chunks that
// came out of order are hashed from the file.
func (a *assembly) check() error {
	if a.size != a.end.Size || a.extent != a.end.Size {
		return fmt.Errorf("%d bytes stored, the stream says %d", a.size, a.end.Size)
	}
	if a.hashed < a.size {
		if _, err := io.Copy(a.hash, io.NewSectionReader(a.file, a.hashed, a.size-a.hashed)); err != nil {
			return fmt.Errorf("read the stored stream: %w", err)
		}
	}
	if !bytes.Equal(a.hash.Sum(nil), a.end.SHA256) {
		return errors.New("SHA-256 does not match")
	}
	return nil
}
