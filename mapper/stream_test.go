package mapper_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// stored is what the store handler answers.
type stored struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// storeAgent runs an agent serving /<actor>/store, which reads a streamed
// request to its end and answers its name, size and SHA-256.
func storeAgent(t *testing.T, connect fabrictest.Connect, id, actor string, cfg agent.StreamConfig, calls *atomic.Int64) *agent.Agent {
	t.Helper()
	a, err := agent.New(connect(t), agent.Config{Identity: id}, agent.WithLogger(testenv.Logger(t)), agent.WithStreams(cfg))
	must(t, err)
	must(t, a.Handle("/"+actor+"/store", agent.HandlerFunc(func(ctx context.Context, r *agent.Request) (any, error) {
		calls.Add(1)
		var name string
		if err := r.Decode(&name); err != nil {
			return nil, err
		}
		if r.Stream == nil {
			return nil, errors.New("not a stream")
		}
		h := sha256.New()
		n, err := io.Copy(h, r.Stream) // a handler that stores would copy to a file
		if err != nil {
			return nil, err
		}
		if n != r.StreamSize {
			return nil, fmt.Errorf("read %d bytes of %d", n, r.StreamSize)
		}
		return stored{name, n, hex.EncodeToString(h.Sum(nil))}, nil
	})))
	fabrictest.RunAgent(t, a)
	return a
}

var (
	newRand = testenv.NewRand
	sum     = testenv.SHA256
)

func emptyDir(t *testing.T, dir string) error {
	es, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(es) != 0 {
		return fmt.Errorf("%d files left in the stream dir", len(es))
	}
	return nil
}

// TestStream streams data of several sizes through a handler that reads
// it, and checks that nothing is left behind.
func TestStream(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		dir := t.TempDir()
		var calls atomic.Int64
		a := storeAgent(t, connect, actor+"-a", actor, agent.StreamConfig{Dir: dir}, &calls)
		m := fabrictest.RunMapper(t, connect(t), mapper.Config{})
		waitAgents(t, m, "/"+actor+"/store", 1)
		for _, n := range []int64{0, 1, 64 << 10, 5<<20 + 17} {
			r, err := m.Stream(t.Context(), "/"+actor+"/store", "f.dat", newRand(byte(n), n), mapper.ChunkSize(64<<10))
			must(t, err)
			var got stored
			must(t, r.Decode(&got))
			if want := (stored{"f.dat", n, sum(newRand(byte(n), n))}); got != want {
				t.Fatalf("stream of %d bytes: got %+v, want %+v", n, got, want)
			}
		}
		if a.Streams() != 0 {
			t.Errorf("%d streams left", a.Streams())
		}
		must(t, emptyDir(t, dir))
	})
}

// TestStreamBroken sends chunks by hand: a missing chunk, a duplicate, a
// wrong checksum, a stream the agent never saw, and one whose sender
// dies. Each broken one gets stream_broken and never reaches the handler;
// the duplicate is dropped; the abandoned one is cleaned up.
func TestStreamBroken(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		id := actor + "-a"
		dir := t.TempDir()
		var calls atomic.Int64
		a := storeAgent(t, connect, id, actor, agent.StreamConfig{Dir: dir, IdleTimeout: 500 * time.Millisecond}, &calls)
		c := connect(t)
		q, err := c.DeclareQueue(t.Context(), transport.Queue{Exclusive: true})
		must(t, err)
		replies, err := c.Consume(t.Context(), q, transport.ConsumeOptions{AutoAck: true})
		must(t, err)
		path := "/" + actor + "/store"
		send := func(stream string, chunks []int64, data [][]byte, final *wire.Stream) {
			t.Helper()
			for i, seq := range chunks {
				msg := wire.NewChunk(path, "raw", stream, seq, q, data[i])
				must(t, c.Publish(t.Context(), wire.RequestExchange, id, msg, transport.PublishOptions{Mandatory: true, Confirm: true}))
			}
			if final != nil {
				msg := wire.NewRequest(wire.TypeRequest, path, "raw", stream, []byte(`"x"`), time.Time{})
				msg.ReplyTo, msg.CorrelationID = q, stream
				wire.SetStream(&msg, *final)
				must(t, c.Publish(t.Context(), wire.RequestExchange, id, msg, transport.PublishOptions{Mandatory: true}))
			}
		}
		// reply waits for the reply (not a credit) to stream.
		reply := func(stream string) *transport.Delivery {
			t.Helper()
			timeout := time.After(20 * time.Second)
			for {
				select {
				case d := <-replies:
					if d.CorrelationID == stream && d.Type == wire.TypeReply {
						return d
					}
				case <-timeout:
					t.Fatalf("no reply to %s", stream)
				}
			}
		}
		code := func(d *transport.Delivery) string { return wire.String(d.Headers, wire.HeaderCode) }
		parts := [][]byte{[]byte("hello "), []byte("big "), []byte("world")}
		whole := wire.Stream{Chunks: 3, Size: 15, SHA256: func() []byte { s := sha256.Sum256([]byte("hello big world")); return s[:] }()}
		with := func(id string) *wire.Stream { s := whole; s.ID = id; return &s }

		send("missing", []int64{0, 2}, [][]byte{parts[0], parts[2]}, with("missing"))
		if d := reply("missing"); code(d) != wire.CodeStreamBroken || !bytes.Contains([]byte(wire.String(d.Headers, wire.HeaderError)), []byte("chunk 1")) {
			t.Errorf("missing chunk: %v", d.Headers)
		}
		send("dup", []int64{0, 0, 1, 2, 1}, [][]byte{parts[0], parts[0], parts[1], parts[2], parts[1]}, with("dup"))
		if d := reply("dup"); code(d) != "" || !bytes.Contains(d.Body, []byte(`"size":15`)) {
			t.Errorf("duplicates: %s %v", d.Body, d.Headers)
		}
		bad := with("sum")
		bad.SHA256 = make([]byte, 32)
		send("sum", []int64{0, 1, 2}, parts, bad)
		if d := reply("sum"); code(d) != wire.CodeStreamBroken || !bytes.Contains([]byte(wire.String(d.Headers, wire.HeaderError)), []byte("SHA-256")) {
			t.Errorf("wrong checksum: %v", d.Headers)
		}
		send("unknown", nil, nil, with("unknown"))
		if d := reply("unknown"); code(d) != wire.CodeStreamBroken {
			t.Errorf("unknown stream: %v", d.Headers)
		}
		send("abandoned", []int64{0}, parts[:1], nil) // the sender dies
		testenv.WaitFor(t, 20*time.Second, func() error {
			if n := a.Streams(); n != 0 {
				return fmt.Errorf("%d streams held", n)
			}
			return emptyDir(t, dir)
		})
		if n := calls.Load(); n != 1 {
			t.Errorf("the handler ran %d times, want 1 (the stream with duplicates)", n)
		}
	})
}

// TestStreamMemory streams WARREN_STREAM_MIB MiB (default 64) through the
// store handler and reports the peak heap of the process, which holds the
// caller, the agent and (on mem) the broker: bounded by the window, not
// by the size.
func TestStreamMemory(t *testing.T) {
	mib := testenv.StreamMiB(t)
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		var calls atomic.Int64
		storeAgent(t, connect, actor+"-a", actor, agent.StreamConfig{Dir: t.TempDir()}, &calls)
		m := fabrictest.RunMapper(t, connect(t), mapper.Config{})
		waitAgents(t, m, "/"+actor+"/store", 1)
		stopHeap := testenv.HeapPeak()
		n := mib << 20
		start := time.Now()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
		defer cancel()
		r, err := m.Stream(ctx, "/"+actor+"/store", "big", newRand(7, n))
		base, peak := stopHeap()
		must(t, err)
		var got stored
		must(t, r.Decode(&got))
		if got.Size != n {
			t.Fatalf("stored %d bytes of %d", got.Size, n)
		}
		el := time.Since(start)
		grew := int64(peak) - int64(base)
		t.Logf("%d MiB in %v (%.1f MiB/s); heap in use %d MiB before, peak %d MiB (+%d MiB)",
			mib, el.Round(time.Millisecond), float64(mib)/el.Seconds(), base>>20, peak>>20, grew>>20)
		if grew > 64<<20 {
			t.Errorf("heap grew by %d MiB streaming %d MiB: not bounded", grew>>20, mib)
		}
	})
}

// TestStreamAgentStops: an agent that stops removes the streams it was
// receiving.
func TestStreamAgentStops(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		dir := t.TempDir()
		var calls atomic.Int64
		a, err := agent.New(connect(t), agent.Config{Identity: actor + "-a"}, agent.WithLogger(testenv.Logger(t)), agent.WithStreams(agent.StreamConfig{Dir: dir}))
		must(t, err)
		must(t, a.Handle("/"+actor+"/store", agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) {
			calls.Add(1)
			return nil, nil
		})))
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		<-a.Ready()
		c := connect(t)
		msg := wire.NewChunk("/"+actor+"/store", "raw", "s1", 0, "", []byte("half"))
		must(t, c.Publish(t.Context(), wire.RequestExchange, actor+"-a", msg, transport.PublishOptions{Mandatory: true, Confirm: true}))
		testenv.WaitFor(t, 20*time.Second, func() error {
			if a.Streams() != 1 {
				return errors.New("the chunk is not stored yet")
			}
			return nil
		})
		cancel()
		must(t, <-done)
		if a.Streams() != 0 {
			t.Errorf("%d streams left after Run", a.Streams())
		}
		must(t, emptyDir(t, dir))
	})
}

// TestPushStream: PushStream returns once the agent holds the whole,
// checked data, while the handler (a push's) still runs; a streamed push
// whose checksum does not match fails with stream_broken and never
// reaches the handler; nothing is left behind.
func TestPushStream(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		id := actor + "-a"
		dir := t.TempDir()
		a, err := agent.New(connect(t), agent.Config{Identity: id}, agent.WithLogger(testenv.Logger(t)), agent.WithStreams(agent.StreamConfig{Dir: dir}))
		must(t, err)
		release := make(chan struct{})
		got := make(chan string, 2)
		must(t, a.Handle("/"+actor+"/keep", agent.HandlerFunc(func(ctx context.Context, r *agent.Request) (any, error) {
			<-release // PushStream returned before the handler ends
			var name string
			if err := r.Decode(&name); err != nil || r.Stream == nil || !r.Push {
				got <- fmt.Sprintf("bad push: %v %v %v", err, r.Stream != nil, r.Push)
				return nil, nil
			}
			got <- name + " " + sum(r.Stream)
			return nil, nil
		})))
		fabrictest.RunAgent(t, a)
		m := fabrictest.RunMapper(t, connect(t), mapper.Config{})
		waitAgents(t, m, "/"+actor+"/keep", 1)
		n := int64(3<<20 + 11)
		must(t, m.PushStream(t.Context(), "/"+actor+"/keep", "f.dat", newRand(3, n), mapper.ChunkSize(64<<10)))
		close(release)
		select {
		case s := <-got:
			if want := "f.dat " + sum(newRand(3, n)); s != want {
				t.Fatalf("handler got %q, want %q", s, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the handler did not run")
		}
		// A streamed push with a wrong checksum, by hand.
		c := connect(t)
		q, err := c.DeclareQueue(t.Context(), transport.Queue{Exclusive: true})
		must(t, err)
		replies, err := c.Consume(t.Context(), q, transport.ConsumeOptions{AutoAck: true})
		must(t, err)
		path := "/" + actor + "/keep"
		must(t, c.Publish(t.Context(), wire.RequestExchange, id, wire.NewChunk(path, "raw", "bad", 0, q, []byte("data")), transport.PublishOptions{Mandatory: true, Confirm: true}))
		msg := wire.NewRequest(wire.TypePush, path, "raw", "bad", []byte(`"x"`), time.Time{})
		msg.ReplyTo, msg.CorrelationID = q, "bad"
		wire.SetStream(&msg, wire.Stream{ID: "bad", Chunks: 1, Size: 4, SHA256: make([]byte, 32)})
		must(t, c.Publish(t.Context(), wire.RequestExchange, id, msg, transport.PublishOptions{Mandatory: true, Confirm: true}))
		timeout := time.After(20 * time.Second)
	wait:
		for {
			select {
			case d := <-replies:
				if d.Type != wire.TypeReply {
					continue
				}
				if code := wire.String(d.Headers, wire.HeaderCode); code != wire.CodeStreamBroken {
					t.Fatalf("wrong checksum: code %q, want %s", code, wire.CodeStreamBroken)
				}
				break wait
			case <-timeout:
				t.Fatal("no answer to a streamed push with a wrong checksum")
			}
		}
		testenv.WaitFor(t, 20*time.Second, func() error {
			if n := a.Streams(); n != 0 {
				return fmt.Errorf("%d streams held", n)
			}
			return emptyDir(t, dir)
		})
		select {
		case s := <-got:
			t.Errorf("the handler ran on a broken stream: %s", s)
		default:
		}
	})
}
