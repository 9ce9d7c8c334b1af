package events_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenrpc/warren/events"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

var (
	newRand = testenv.NewRand
	sum     = testenv.SHA256
)

// got is what a streamed-event handler saw.
type got struct {
	sub     string // which subscriber
	payload string
	size    int64
	sha256  string
	id      string
}

// streamSink records the streamed events its handlers get.
type streamSink struct {
	mu  sync.Mutex
	got []got
}

func (k *streamSink) handler(name string) events.Handler {
	return func(_ context.Context, ev *events.Event) error {
		if ev.Stream == nil {
			return errors.New("not a stream")
		}
		h := sha256.New()
		n, err := io.Copy(h, ev.Stream)
		if err != nil {
			return err
		}
		if n != ev.StreamSize {
			return fmt.Errorf("read %d bytes of %d", n, ev.StreamSize)
		}
		k.mu.Lock()
		k.got = append(k.got, got{name, string(ev.Payload), n, hex.EncodeToString(h.Sum(nil)), ev.ID})
		k.mu.Unlock()
		return nil
	}
}

func (k *streamSink) all() []got {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]got(nil), k.got...)
}

func (k *streamSink) len() int { return len(k.all()) }

// streamBus is a bus whose streams are assembled in dir.
func streamBus(t *testing.T, connect fabrictest.Connect, host, dir string, idle time.Duration) *events.Bus {
	return newBus(t, connect, events.Config{Host: host, Streams: events.StreamConfig{Dir: dir, IdleTimeout: idle}})
}

func emptyDir(dir string) error {
	es, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(es) != 0 {
		return fmt.Errorf("%d files left in %s", len(es), dir)
	}
	return nil
}

// cleanedUp waits until the subscriptions assemble nothing, dir is empty,
// and the collection queue of stream id of each is gone.
func cleanedUp(t *testing.T, tr transport.Transport, dir, id string, subs ...*events.Subscription) {
	t.Helper()
	testenv.WaitFor(t, 30*time.Second, func() error {
		for _, s := range subs {
			if n := s.Streams(); n != 0 {
				return fmt.Errorf("%d streams being assembled", n)
			}
			q := wire.EventStreamQueue(s.Queue(), id)
			if _, err := tr.InspectQueue(t.Context(), q); !errors.Is(err, transport.ErrNotFound) {
				return fmt.Errorf("collection queue %s: %v, want not found", q, err)
			}
		}
		return emptyDir(dir)
	})
}

// TestStreamedEvent publishes a streamed event to a transient All
// subscriber, a One group of two subscribers (processes of their own:
// the chunks spread over both, the handler runs once), and a PerHost group
// on two hosts; each gets the whole data once, and nothing is left.
func TestStreamedEvent(t *testing.T) {
	const n = 3<<20 + 11
	const chunk = 64 << 10
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		key := fabrictest.Actor() + ".big"
		dir := t.TempDir()
		var all, one, host streamSink
		sAll := subscribe(t, streamBus(t, connect, "h1", dir, 0), key, all.handler("all"))
		group := fabrictest.Actor()
		sOne1 := subscribe(t, streamBus(t, connect, "h1", dir, 0), key, one.handler("one1"), events.One(group))
		sOne2 := subscribe(t, streamBus(t, connect, "h1", dir, 0), key, one.handler("one2"), events.One(group))
		hgroup := fabrictest.Actor()
		sH1a := subscribe(t, streamBus(t, connect, "h1", dir, 0), key, host.handler("h1"), events.PerHost(hgroup))
		sH1b := subscribe(t, streamBus(t, connect, "h1", dir, 0), key, host.handler("h1"), events.PerHost(hgroup))
		sH2 := subscribe(t, streamBus(t, connect, "h2", dir, 0), key, host.handler("h2"), events.PerHost(hgroup))
		pub := newBus(t, connect, events.Config{})
		must(t, pub.PublishStream(t.Context(), key, "f.dat", newRand(1, n), events.ChunkSize(chunk)))
		want := sum(newRand(1, n))
		waitLen(t, "all", 1, all.len)
		waitLen(t, "one", 1, one.len)
		waitLen(t, "host", 2, host.len)
		check := func(what string, g got) {
			t.Helper()
			if g.payload != `"f.dat"` || g.size != n || g.sha256 != want {
				t.Errorf("%s got %+v, want size %d sha256 %s", what, g, n, want)
			}
		}
		check("all", all.all()[0])
		check("one", one.all()[0])
		hs := host.all()
		check("host", hs[0])
		check("host", hs[1])
		if hs[0].sub == hs[1].sub {
			t.Errorf("PerHost: both on %s", hs[0].sub)
		}
		// The group's queue spread the chunks over both consumers, who
		// forwarded them to the one that assembled.
		f1, f2 := sOne1.Stats().Forwarded, sOne2.Stats().Forwarded
		if chunks := int64((n + chunk - 1) / chunk); f1+f2 != chunks || f1 == 0 || f2 == 0 {
			t.Errorf("One group forwarded %d and %d chunks, want %d in all, some each", f1, f2, chunks)
		}
		id := one.all()[0].id
		tr := connect(t)
		cleanedUp(t, tr, dir, id, sAll, sOne1, sOne2, sH1a, sH1b, sH2)
		// Nothing more: once per subscription.
		must(t, pub.Publish(t.Context(), key, "end"))
		waitLen(t, "all", 1, all.len)
		if one.len() != 1 || host.len() != 2 {
			t.Errorf("handled %d times in the group, %d per host: want 1, 2", one.len(), host.len())
		}
	})
}

// TestStreamedEventDurable: a streamed event published while the only
// subscriber of a durable group is down waits for it, chunks and all.
func TestStreamedEventDurable(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		key := fabrictest.Actor() + ".kept"
		group := fabrictest.Actor()
		dir := t.TempDir()
		var k streamSink
		s, err := streamBus(t, connect, "", dir, 0).Subscribe(t.Context(), key, k.handler("first"), events.One(group), events.Durable())
		must(t, err)
		must(t, s.Close())
		pub := newBus(t, connect, events.Config{})
		const n = 1<<20 + 3
		must(t, pub.PublishStream(t.Context(), key, "while down", newRand(2, n), events.ChunkSize(32<<10), events.Persistent()))
		again := subscribe(t, streamBus(t, connect, "", dir, 0), key, k.handler("again"), events.One(group), events.Durable())
		waitLen(t, "after the restart", 1, k.len)
		if g := k.all()[0]; g.sub != "again" || g.size != n || g.sha256 != sum(newRand(2, n)) || g.payload != `"while down"` {
			t.Fatalf("got %+v", g)
		}
		cleanedUp(t, connect(t), dir, k.all()[0].id, again)
	})
}

// rawStream publishes chunks of stream id by hand: seqs (0 is the head),
// with parts as data chunk bodies, the last one closing the stream with
// end when not nil.
type rawStream struct {
	t   *testing.T
	tr  transport.Transport
	key string
	id  string
}

func (r rawStream) head() {
	r.t.Helper()
	must(r.t, r.tr.Publish(r.t.Context(), wire.EventExchange, r.key, wire.NewEventHead("raw", r.id, []byte(`"raw"`), 0), transport.PublishOptions{Confirm: true}))
}

func (r rawStream) chunk(seq, off int64, data string, end *wire.Stream) {
	r.t.Helper()
	msg := wire.NewEventChunk("raw", r.id, seq, off, []byte(data))
	if end != nil {
		wire.SetEventStreamEnd(&msg, *end)
	}
	must(r.t, r.tr.Publish(r.t.Context(), wire.EventExchange, r.key, msg, transport.PublishOptions{Confirm: true}))
}

func endOf(id, data string, chunks int64) *wire.Stream {
	s := sha256.Sum256([]byte(data))
	return &wire.Stream{ID: id, Chunks: chunks, Size: int64(len(data)), SHA256: s[:]}
}

// TestStreamedEventBroken: a publisher that stops after some chunks, one
// whose reader fails, and a checksum that does not match: each stream is
// dead-lettered (its head, reason stream_broken), its file and collection
// queue removed, and the handler never runs.
func TestStreamedEventBroken(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		dead := tapDead(t, connect)
		p := fabrictest.Actor()
		dir := t.TempDir()
		var k streamSink
		group := fabrictest.Actor()
		s1 := subscribe(t, streamBus(t, connect, "", dir, 300*time.Millisecond), p+".#", k.handler("a"), events.One(group))
		s2 := subscribe(t, streamBus(t, connect, "", dir, 300*time.Millisecond), p+".#", k.handler("b"), events.One(group))
		tr := connect(t)
		reason := func(key string) string {
			t.Helper()
			d := deadLetter(t, dead, key)
			if wire.String(d.Headers, wire.HeaderStream) == "" {
				t.Errorf("dead letter of %s is not the stream's head: %v", key, d.Headers)
			}
			return wire.String(d.Headers, wire.HeaderReason) + ": " + wire.String(d.Headers, wire.HeaderError)
		}

		// The publisher dies after two chunks.
		r := rawStream{t, tr, p + ".died", "died-" + p}
		r.head()
		r.chunk(1, 0, "hello ", nil)
		r.chunk(2, 6, "big ", nil)
		if why := reason(r.key); !strings.HasPrefix(why, wire.CodeStreamBroken+": ") || !strings.Contains(why, "publisher stopped") {
			t.Errorf("publisher died: %s", why)
		}
		cleanedUp(t, tr, dir, r.id, s1, s2)

		// PublishStream whose reader fails midway.
		pub := newBus(t, connect, events.Config{})
		err := pub.PublishStream(t.Context(), p+".failed", nil, io.MultiReader(newRand(3, 100<<10), failing{}), events.ChunkSize(16<<10))
		if err == nil || !strings.Contains(err.Error(), "disk gone") {
			t.Errorf("PublishStream with a failing reader: %v", err)
		}
		if why := reason(p + ".failed"); !strings.HasPrefix(why, wire.CodeStreamBroken) {
			t.Errorf("reader failed: %s", why)
		}

		// A checksum that does not match.
		r = rawStream{t, tr, p + ".sum", "sum-" + p}
		r.head()
		r.chunk(1, 0, "hello ", nil)
		end := endOf(r.id, "hello world", 3)
		end.SHA256[0] ^= 1
		r.chunk(2, 6, "world", end)
		if why := reason(r.key); !strings.Contains(why, "SHA-256") {
			t.Errorf("wrong checksum: %s", why)
		}
		cleanedUp(t, tr, dir, r.id, s1, s2)
		if n := k.len(); n != 0 {
			t.Errorf("the handler ran %d times on broken streams", n)
		}
	})
}

type failing struct{}

func (failing) Read([]byte) (int, error) { return 0, errors.New("disk gone") }

// TestStreamedEventDuplicates: chunks duplicated, out of order, and a
// head published twice: the handler runs once, on the right data.
func TestStreamedEventDuplicates(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		p := fabrictest.Actor()
		dir := t.TempDir()
		var k streamSink
		s := subscribe(t, streamBus(t, connect, "", dir, 0), p+".dup", k.handler("a"))
		tr := connect(t)
		r := rawStream{t, tr, p + ".dup", "dup-" + p}
		r.head()
		r.head()
		r.chunk(2, 6, "big ", nil)
		r.chunk(1, 0, "hello ", nil)
		r.chunk(2, 6, "big ", nil)
		r.chunk(1, 0, "hello ", nil)
		r.chunk(3, 10, "world", endOf(r.id, "hello big world", 4))
		waitLen(t, "handled", 1, k.len)
		if g := k.all()[0]; g.size != 15 || g.sha256 != sum(strings.NewReader("hello big world")) {
			t.Fatalf("got %+v", g)
		}
		cleanedUp(t, tr, dir, r.id, s)
		// A late duplicate of a chunk after the end changes nothing.
		r.chunk(1, 0, "hello ", nil)
		must(t, newBus(t, connect, events.Config{}).Publish(t.Context(), p+".dup", "after"))
		testenv.WaitFor(t, 20*time.Second, func() error {
			// "after" is not a stream: the handler refuses it.
			if st := s.Stats(); st.Handled != 1 || st.DeadLettered != 1 || st.Forwarded != 5 {
				return fmt.Errorf("stats %+v", st)
			}
			return nil
		})
		if n := k.len(); n != 1 {
			t.Errorf("the handler ran %d times", n)
		}
	})
}

// TestStreamedEventMemory publishes WARREN_STREAM_MIB MiB (default 64) as
// one streamed event to a subscriber in the same process and reports the
// time and the peak heap, which holds the publisher, the subscriber and
// (on mem) the broker: bounded by the chunks in flight, not the size.
func TestStreamedEventMemory(t *testing.T) {
	mib := testenv.StreamMiB(t)
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		key := fabrictest.Actor() + ".mem"
		dir := t.TempDir()
		var k streamSink
		s := subscribe(t, streamBus(t, connect, "", dir, 0), key, k.handler("a"), events.One(fabrictest.Actor()))
		pub := newBus(t, connect, events.Config{})
		stopHeap := testenv.HeapPeak()
		n := mib << 20
		start := time.Now()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
		defer cancel()
		err := pub.PublishStream(ctx, key, "big", newRand(7, n))
		if err == nil {
			testenv.WaitFor(t, 10*time.Minute, func() error {
				if k.len() != 1 {
					return errors.New("not handled yet")
				}
				return nil
			})
		}
		base, peak := stopHeap()
		must(t, err)
		if g := k.all()[0]; g.size != n {
			t.Fatalf("handled %d bytes of %d", g.size, n)
		}
		el := time.Since(start)
		grew := int64(peak) - int64(base)
		t.Logf("%d MiB in %v (%.1f MiB/s); heap in use %d MiB before, peak %d MiB (+%d MiB)",
			mib, el.Round(time.Millisecond), float64(mib)/el.Seconds(), base>>20, peak>>20, grew>>20)
		// The embedded broker keeps the chunks in memory until the handler
		// ran (another subscriber could take over): only RabbitMQ's side
		// is bounded.
		if grew > 64<<20 && !strings.HasSuffix(t.Name(), "/mem") {
			t.Errorf("heap grew by %d MiB streaming %d MiB: not bounded", grew>>20, mib)
		}
		cleanedUp(t, connect(t), dir, k.all()[0].id, s)
	})
}

// TestStreamedEventTakeover: the subscriber assembling a streamed event
// dies midway (its connection goes); the head and the chunks it held go
// back, and the other subscriber of the group assembles the stream and
// runs the handler once, on the whole data.
func TestStreamedEventTakeover(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		p := fabrictest.Actor()
		group := fabrictest.Actor()
		dir := t.TempDir()
		var k streamSink
		type sub struct {
			tr transport.Transport
			s  *events.Subscription
		}
		var subs []sub
		for _, name := range []string{"a", "b"} {
			tr := connect(t)
			b, err := events.New(tr, events.Config{Streams: events.StreamConfig{Dir: dir}}, events.WithLogger(testenv.Logger(t)))
			must(t, err)
			subs = append(subs, sub{tr, subscribe(t, b, p+".big", k.handler(name), events.One(group))})
		}
		pub := connect(t)
		r := rawStream{t, pub, p + ".big", "takeover-" + p}
		r.head()
		r.chunk(1, 0, "hello ", nil)
		r.chunk(2, 6, "big ", nil)
		// Wait for the assembler to hold both chunks.
		var assembler, survivor sub
		testenv.WaitFor(t, 20*time.Second, func() error {
			for i, s := range subs {
				if s.s.Streams() == 1 {
					assembler, survivor = s, subs[1-i]
				}
			}
			if assembler.s == nil {
				return errors.New("nobody assembles the stream yet")
			}
			if f := subs[0].s.Stats().Forwarded + subs[1].s.Stats().Forwarded; f != 2 {
				return fmt.Errorf("%d chunks forwarded", f)
			}
			q := wire.EventStreamQueue(assembler.s.Queue(), r.id)
			info, err := pub.InspectQueue(t.Context(), q)
			if err != nil || info.Messages != 0 || info.Consumers != 1 {
				return fmt.Errorf("collection queue %s: %+v %v: want both chunks taken", q, info, err)
			}
			return nil
		})
		must(t, assembler.tr.Close()) // the assembler's process dies
		r.chunk(3, 10, "world", endOf(r.id, "hello big world", 4))
		waitLen(t, "handled", 1, k.len)
		g := k.all()[0]
		if g.size != 15 || g.sha256 != sum(strings.NewReader("hello big world")) {
			t.Fatalf("got %+v", g)
		}
		if survivor.s.Stats().Handled != 1 {
			t.Errorf("the survivor handled %d", survivor.s.Stats().Handled)
		}
		cleanedUp(t, pub, dir, r.id, survivor.s)
	})
}

// TestStreamedEventRetry: a handler that asks for a retry gets the whole
// streamed event again (the chunks go back with the head), once.
func TestStreamedEventRetry(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		key := fabrictest.Actor() + ".retry"
		dir := t.TempDir()
		var k streamSink
		var tries atomic.Int64
		h := k.handler("a")
		s := subscribe(t, streamBus(t, connect, "", dir, 0), key, func(ctx context.Context, ev *events.Event) error {
			if tries.Add(1) == 1 {
				return fmt.Errorf("not yet: %w", events.ErrRetry)
			}
			return h(ctx, ev)
		})
		const n = 300<<10 + 1
		must(t, newBus(t, connect, events.Config{}).PublishStream(t.Context(), key, "r", newRand(5, n), events.ChunkSize(16<<10)))
		waitLen(t, "handled", 1, k.len)
		if g := k.all()[0]; g.size != n || g.sha256 != sum(newRand(5, n)) {
			t.Fatalf("got %+v", g)
		}
		if st := s.Stats(); st.Retried != 1 || st.Handled != 1 || tries.Load() != 2 {
			t.Errorf("stats %+v, %d tries", st, tries.Load())
		}
		cleanedUp(t, connect(t), dir, k.all()[0].id, s)
	})
}

// TestStreamedEventExpired: a streamed event whose TTL passes in the
// queue of a durable group nobody consumes: the broker dead-letters its
// head only; the data chunks, taken later, go to a collection queue that
// nobody assembles and that expires. The handler never runs.
func TestStreamedEventExpired(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		dead := tapDead(t, connect)
		key := fabrictest.Actor() + ".expired"
		group := fabrictest.Actor()
		dir := t.TempDir()
		var k streamSink
		s, err := streamBus(t, connect, "", dir, 200*time.Millisecond).Subscribe(t.Context(), key, k.handler("a"), events.One(group), events.Durable())
		must(t, err)
		queue := s.Queue()
		must(t, s.Close())
		must(t, newBus(t, connect, events.Config{}).PublishStream(t.Context(), key, "x", newRand(6, 40<<10), events.ChunkSize(16<<10), events.TTL(20*time.Millisecond), events.Persistent()))
		d := deadLetterBy(t, dead, func(d *transport.Delivery) bool { return d.RoutingKey == key })
		c, err := wire.ReadEventChunk(d)
		if err != nil || c.Seq != 0 || d.Headers["x-death"] == nil {
			t.Fatalf("dead letter: chunk %+v (%v), headers %v: want the head, expired by the broker", c, err, d.Headers)
		}
		s = subscribe(t, streamBus(t, connect, "", dir, 200*time.Millisecond), key, k.handler("a"), events.One(group), events.Durable())
		tr := connect(t)
		testenv.WaitFor(t, 30*time.Second, func() error {
			if f := s.Stats().Forwarded; f != 3 {
				return fmt.Errorf("%d chunks forwarded, want 3", f)
			}
			// A publish is not a use of the queue (an inspection would
			// keep it alive): unroutable once it expired.
			q := wire.EventStreamQueue(queue, c.Stream)
			err := tr.Publish(t.Context(), transport.DefaultExchange, q, transport.Message{}, transport.PublishOptions{Mandatory: true})
			if !errors.Is(err, transport.ErrUnroutable) {
				return fmt.Errorf("collection queue %s: publish %v, want it expired", q, err)
			}
			return nil
		})
		for {
			select {
			case d := <-dead:
				if d.RoutingKey == key {
					t.Errorf("another dead letter: %s %v", d.Type, d.Headers)
				}
				continue
			default:
			}
			break
		}
		if n := k.len(); n != 0 {
			t.Errorf("the handler ran %d times", n)
		}
		must(t, emptyDir(dir))
	})
}

// TestStreamedEventBadInput: a stream over the subscriber's size limit is
// broken at once; a chunk without its offset and a head that is not JSON
// are dead-lettered as bad_request. The handler never runs.
func TestStreamedEventBadInput(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		dead := tapDead(t, connect)
		p := fabrictest.Actor()
		dir := t.TempDir()
		var k streamSink
		b := newBus(t, connect, events.Config{Streams: events.StreamConfig{Dir: dir, MaxSize: 100}})
		s := subscribe(t, b, p+".#", k.handler("a"))
		pub := newBus(t, connect, events.Config{})
		must(t, pub.PublishStream(t.Context(), p+".big", nil, newRand(8, 1000), events.ChunkSize(64)))
		d := deadLetter(t, dead, p+".big")
		if why := wire.String(d.Headers, wire.HeaderReason) + ": " + wire.String(d.Headers, wire.HeaderError); why != wire.CodeStreamBroken+": stream larger than 100 bytes" {
			t.Errorf("too large: %s", why)
		}
		tr := connect(t)
		msg := wire.NewEventChunk("raw", "nooffset", 1, 0, []byte("x"))
		delete(msg.Headers, wire.HeaderStreamOffset)
		must(t, tr.Publish(t.Context(), wire.EventExchange, p+".nooffset", msg, transport.PublishOptions{Confirm: true}))
		if d := deadLetter(t, dead, p+".nooffset"); wire.String(d.Headers, wire.HeaderReason) != wire.CodeBadRequest {
			t.Errorf("chunk without offset: %v", d.Headers)
		}
		head := wire.NewEventHead("raw", "notjson", []byte("{"), 0)
		must(t, tr.Publish(t.Context(), wire.EventExchange, p+".notjson", head, transport.PublishOptions{Confirm: true}))
		if d := deadLetter(t, dead, p+".notjson"); wire.String(d.Headers, wire.HeaderReason) != wire.CodeBadRequest {
			t.Errorf("head not JSON: %v", d.Headers)
		}
		testenv.WaitFor(t, 20*time.Second, func() error {
			if n := s.Streams(); n != 0 {
				return fmt.Errorf("%d streams assembled", n)
			}
			return emptyDir(dir)
		})
		if n := k.len(); n != 0 {
			t.Errorf("the handler ran %d times", n)
		}
	})
}

// TestStreamedEventsAtOnce: 30 streamed events published at once to a
// lone subscriber: each is handled once, whole.
func TestStreamedEventsAtOnce(t *testing.T) {
	const streams = 30
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		key := fabrictest.Actor() + ".many"
		dir := t.TempDir()
		var k streamSink
		s := subscribe(t, streamBus(t, connect, "", dir, 0), key, k.handler("a"))
		errs := make(chan error, streams)
		for i := range streams {
			pub := newBus(t, connect, events.Config{})
			go func() {
				errs <- pub.PublishStream(t.Context(), key, i, newRand(byte(i), 64<<10+int64(i)), events.ChunkSize(4<<10))
			}()
		}
		for range streams {
			must(t, <-errs)
		}
		testenv.WaitFor(t, 2*time.Minute, func() error {
			if n := k.len(); n != streams {
				return fmt.Errorf("%d of %d handled", n, streams)
			}
			return nil
		})
		seen := map[string]bool{}
		for _, g := range k.all() {
			var i int
			if _, err := fmt.Sscan(g.payload, &i); err != nil || seen[g.payload] || g.sha256 != sum(newRand(byte(i), 64<<10+int64(i))) {
				t.Errorf("stream %s: %+v (%v)", g.payload, g, err)
			}
			seen[g.payload] = true
		}
		if s.Stats().DeadLettered != 0 {
			t.Errorf("stats %+v", s.Stats())
		}
		must(t, emptyDir(dir))
	})
}

// TestStreamedEventCannotStore: a subscriber that cannot create the file
// of a stream (its directory is gone) gives the event back, and the other
// subscriber of the group handles it.
func TestStreamedEventCannotStore(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		key := fabrictest.Actor() + ".nodir"
		group := fabrictest.Actor()
		dir := t.TempDir()
		var k streamSink
		subscribe(t, streamBus(t, connect, "", dir+"/gone", 0), key, k.handler("broken"), events.One(group))
		good := subscribe(t, streamBus(t, connect, "", dir, 0), key, k.handler("good"), events.One(group))
		const n = 200 << 10
		must(t, newBus(t, connect, events.Config{}).PublishStream(t.Context(), key, "f", newRand(9, n), events.ChunkSize(16<<10)))
		waitLen(t, "handled", 1, k.len)
		if g := k.all()[0]; g.sub != "good" || g.size != n || g.sha256 != sum(newRand(9, n)) {
			t.Fatalf("got %+v", g)
		}
		cleanedUp(t, connect(t), dir, k.all()[0].id, good)
	})
}
