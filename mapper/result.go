package mapper

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"os"
	"sync"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// AcceptStream lets the agent stream the result (agent.StreamResult): its
// data arrives in chunks, paced by this mapper's credits, into a file, and
// Reply.Stream reads it once it is whole and its SHA-256 checked; the
// reply's Body is the handler's Meta. Close the Reply to remove the file.
// A stream that breaks is a *wire.RemoteError of code
// wire.CodeStreamBroken. It applies to Request and Stream, not to FanOut.
func AcceptStream() CallOption { return func(c *call) { c.acceptStream = true } }

// resultCreditEvery is how many chunks of a result the mapper stores
// between two credits to the agent.
const resultCreditEvery = 4

// resultIdle removes a streamed result's file when no chunk came for this
// long and nobody waits for it.
const resultIdle = time.Minute

type acceptKey struct{}

func withAcceptStream(ctx context.Context, accept bool) context.Context {
	if !accept {
		return ctx
	}
	return context.WithValue(ctx, acceptKey{}, true)
}

// watchResult marks msg as taking a streamed result when ctx says so.
func watchResult(ctx context.Context, msg *transport.Message) {
	if ok, _ := ctx.Value(acceptKey{}).(bool); ok {
		wire.AcceptStream(msg)
	}
}

// resultFile is a streamed result being received, keyed by correlation id
// in the mapper's results. Only the reply reader writes it.
type resultFile struct {
	file  *os.File
	hash  hash.Hash
	next  int64
	size  int64
	err   error
	agent string
	idle  *time.Timer
}

// results holds the streamed results being received.
type results struct {
	mu sync.Mutex
	m  map[string]*resultFile
}

func (rs *results) take(id string) *resultFile {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	f := rs.m[id]
	delete(rs.m, id)
	if f != nil {
		f.idle.Stop()
	}
	return f
}

// discard removes f's file.
func (f *resultFile) discard() {
	f.file.Close()
	os.Remove(f.file.Name())
}

// readResultChunk stores a chunk of a streamed result for its waiter, and
// credits the agent every few chunks. A chunk nobody waits for is dropped
// (and what was stored of its stream with it).
func (m *Mapper) readResultChunk(d *transport.Delivery) {
	c, err := wire.ReadChunk(d)
	if err != nil {
		m.log.Debug("malformed chunk discarded", "correlation_id", d.CorrelationID, "err", err)
		return
	}
	m.mu.Lock()
	w := m.pending[c.Stream]
	ok := w != nil && w.accepts(d.AppID) && w.msg.Headers[wire.HeaderAcceptStream] == true
	m.mu.Unlock()
	if !ok {
		if f := m.results.take(c.Stream); f != nil {
			f.discard()
		}
		return
	}
	m.results.mu.Lock()
	f := m.results.m[c.Stream]
	if f == nil {
		file, err := os.CreateTemp("", "warren-result-*")
		if err != nil {
			m.results.mu.Unlock()
			m.log.Error("cannot store a streamed result", "err", err)
			return
		}
		f = &resultFile{file: file, hash: sha256.New(), agent: d.AppID}
		id := c.Stream
		f.idle = time.AfterFunc(resultIdle, func() {
			if f := m.results.take(id); f != nil {
				f.discard()
			}
		})
		if m.results.m == nil {
			m.results.m = map[string]*resultFile{}
		}
		m.results.m[c.Stream] = f
	}
	m.results.mu.Unlock()
	f.idle.Reset(resultIdle)
	switch {
	case f.err != nil:
		return
	case c.Seq < f.next:
		return // a duplicate
	case c.Seq > f.next:
		f.err = fmt.Errorf("chunk %d missing (chunk %d came)", f.next, c.Seq)
		return
	}
	if _, err := f.file.Write(d.Body); err != nil {
		f.err = fmt.Errorf("store chunk %d: %w", c.Seq, err)
		return
	}
	f.hash.Write(d.Body)
	f.size += int64(len(d.Body))
	f.next++
	if f.next%resultCreditEvery == 0 {
		to := ""
		if m.addressed {
			to = d.AppID
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := m.tr.Publish(ctx, wire.RequestExchange, d.AppID, wire.NewStreamCredit(c.Stream, m.cfg.Identity, to, f.next), transport.PublishOptions{})
		cancel()
		if err != nil {
			m.log.Warn("credit for a streamed result not sent", "err", err, "agent", d.AppID)
		}
	}
}

// finishResult completes r, the reply that closes a streamed result (or
// any reply to a request that took one), with the stored data.
func (m *Mapper) finishResult(d *transport.Delivery, r *Reply, path string) {
	f := m.results.take(d.CorrelationID)
	st, isStream, err := wire.ReadStream(d)
	if r.Err != nil || !isStream {
		if f != nil {
			f.discard()
		}
		return
	}
	if f == nil {
		if err == nil && st.Chunks == 0 {
			file, ferr := os.CreateTemp("", "warren-result-*")
			if ferr != nil {
				err = ferr
			} else {
				f = &resultFile{file: file, hash: sha256.New(), idle: time.NewTimer(time.Hour)}
				f.idle.Stop()
			}
		} else if err == nil {
			err = errors.New("no chunk of the result came")
		}
	}
	switch {
	case err != nil:
	case f.err != nil:
		err = f.err
	case f.next != st.Chunks:
		err = fmt.Errorf("%d chunks came, the reply says %d", f.next, st.Chunks)
	case f.size != st.Size:
		err = fmt.Errorf("%d bytes came, the reply says %d", f.size, st.Size)
	case !bytes.Equal(f.hash.Sum(nil), st.SHA256):
		err = errors.New("SHA-256 does not match")
	}
	if err == nil {
		_, err = f.file.Seek(0, 0)
	}
	if err != nil {
		if f != nil {
			f.discard()
		}
		r.Body = nil
		r.Err = &wire.RemoteError{Agent: d.AppID, Path: path, Code: wire.CodeStreamBroken, Message: "streamed result: " + err.Error()}
		return
	}
	r.Stream, r.StreamSize = &resultReader{f.file}, st.Size
}

// resultReader reads a streamed result's file; Close removes it.
type resultReader struct{ f *os.File }

func (r *resultReader) Read(p []byte) (int, error) { return r.f.Read(p) }

func (r *resultReader) Close() error {
	err := r.f.Close()
	os.Remove(r.f.Name())
	return err
}

// Close releases what the reply holds: the file of a streamed result.
// It is safe on any Reply.
func (r *Reply) Close() error {
	if r == nil || r.Stream == nil {
		return nil
	}
	return r.Stream.Close()
}
