package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/dlq"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// deadQueue declares a dead-letter queue of the test's own, deleted at the
// end, so that tests on a shared broker see exactly their letters.
func deadQueue(t *testing.T, tr transport.Transport, name string) {
	t.Helper()
	_, err := tr.DeclareQueue(t.Context(), transport.Queue{Name: name})
	must(t, err)
	t.Cleanup(func() { tr.DeleteQueue(context.Background(), name) })
}

// letter publishes an agent-style dead letter with this id and path to
// queue, first sent to exchange/key.
func letter(t *testing.T, tr transport.Transport, queue, id, path, exchange, key string) {
	t.Helper()
	msg := transport.Message{Type: wire.TypePush, MessageID: id, Body: []byte(`1`), Headers: map[string]any{
		wire.HeaderPath: path, wire.HeaderReason: wire.CodeHandler,
		"warren-original-exchange": exchange, "warren-original-routing-key": key,
	}}
	must(t, tr.Publish(t.Context(), transport.DefaultExchange, queue, msg, transport.PublishOptions{Confirm: true}))
}

func ids(ls []dlq.Letter) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.MessageID)
	}
	return out
}

// TestReplayVisitsEachLetterOnce replays letters whose destination
// dead-letters them again at once: each is replayed once, and the replay
// ends promptly instead of chasing them round until its context ends.
func TestReplayVisitsEachLetterOnce(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		tr := connect(t)
		actor := fabrictest.Actor()
		dead, dlx, ttl := actor+".dead", actor+".dlx", actor+".ttl"
		deadQueue(t, tr, dead)
		must(t, tr.DeclareExchange(t.Context(), transport.Exchange{Name: dlx, Kind: transport.Fanout, AutoDelete: true}))
		must(t, tr.Bind(t.Context(), transport.Binding{Exchange: dlx, Queue: dead}))
		_, err := tr.DeclareQueue(t.Context(), transport.Queue{Name: ttl, MessageTTL: 5 * time.Millisecond, DeadLetterExchange: dlx})
		must(t, err)
		t.Cleanup(func() { tr.DeleteQueue(context.Background(), ttl) })
		const n = 12
		var want []string
		for i := range n {
			id := fmt.Sprintf("%s-%02d", actor, i)
			want = append(want, id)
			letter(t, tr, dead, id, "/"+actor+"/x", transport.DefaultExchange, ttl)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		start := time.Now()
		got, err := dlq.Replay(ctx, tr, nil, dlq.Queue(dead), dlq.Hold(2))
		took := time.Since(start)
		if err != nil || got != n {
			t.Fatalf("replayed %d, %v; want %d", got, err, n)
		}
		if took > 5*time.Second {
			t.Fatalf("replay took %v", took)
		}
		t.Logf("replayed %d letters that die again at once in %v", n, took)
		// Each died again and is back, once.
		testenv.WaitFor(t, 10*time.Second, func() error {
			ls, err := dlq.List(ctx, tr, 0, nil, dlq.Queue(dead))
			if err != nil {
				return err
			}
			got := ids(ls)
			slices.Sort(got)
			if !slices.Equal(got, want) {
				return fmt.Errorf("queue holds %v", got)
			}
			for _, l := range ls {
				if l.Reason != "expired" || l.Queue != ttl {
					return fmt.Errorf("letter %+v did not die again in %s", l, ttl)
				}
			}
			return nil
		})
	})
}

// TestHoldLimit works on more letters than an operation may hold: matches
// beyond the limit are replayed and purged, listing and showing say when
// they stopped short, and letters left in place keep their order.
func TestHoldLimit(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		tr := connect(t)
		ctx := t.Context()
		actor := fabrictest.Actor()
		dead, target := actor+".dead", actor+".target"
		deadQueue(t, tr, dead)
		deadQueue(t, tr, target)
		var all []string
		for i := range 12 {
			id := fmt.Sprintf("%s-%02d", actor, i)
			all = append(all, id)
			path := "/" + actor + "/odd"
			if i%2 == 0 {
				path = "/" + actor + "/even"
			}
			letter(t, tr, dead, id, path, transport.DefaultExchange, target)
		}
		even := func(l dlq.Letter) bool { return strings.HasSuffix(l.Path, "/even") }
		odd := func(l dlq.Letter) bool { return !even(l) }
		q := dlq.Queue(dead)

		ls, err := dlq.List(ctx, tr, 0, nil, q, dlq.Hold(5))
		if !errors.Is(err, dlq.ErrIncomplete) || !slices.Equal(ids(ls), all[:5]) {
			t.Fatalf("list with hold 5: %v, %v", ids(ls), err)
		}
		t.Logf("list stopped short: %v", err)
		ls, err = dlq.List(ctx, tr, 0, nil, q, dlq.Hold(12))
		if err != nil || !slices.Equal(ids(ls), all) {
			t.Fatalf("list with hold 12: %v, %v", ids(ls), err)
		}
		// Filtered before the cap: the first two odd ones, though the first
		// letter is even.
		ls, err = dlq.List(ctx, tr, 2, odd, q, dlq.Hold(5))
		if err != nil || !slices.Equal(ids(ls), []string{all[1], all[3]}) {
			t.Fatalf("list 2 odd: %v, %v", ids(ls), err)
		}
		if _, err := dlq.Show(ctx, tr, all[11], q, dlq.Hold(5)); !errors.Is(err, dlq.ErrIncomplete) || errors.Is(err, dlq.ErrNotFound) {
			t.Fatalf("show beyond hold: %v", err)
		}
		if l, err := dlq.Show(ctx, tr, all[11], q); err != nil || l.MessageID != all[11] {
			t.Fatalf("show: %+v, %v", l, err)
		}
		if _, err := dlq.Show(ctx, tr, actor+"-none", q); !errors.Is(err, dlq.ErrNotFound) {
			t.Fatalf("show unknown: %v", err)
		}

		// Purging the even ones with room to hold 3 odd ones: 00 to 06 go,
		// then 07 is the fourth odd one and it stops.
		n, err := dlq.Purge(ctx, tr, even, q, dlq.Hold(3))
		if !errors.Is(err, dlq.ErrIncomplete) || n != 4 {
			t.Fatalf("purge even with hold 3: %d, %v", n, err)
		}
		left := []string{all[1], all[3], all[5], all[7], all[8], all[9], all[10], all[11]}
		ls, err = dlq.List(ctx, tr, 0, nil, q)
		if err != nil || !slices.Equal(ids(ls), left) {
			t.Fatalf("left after purge: %v, %v; want %v", ids(ls), err, left)
		}
		// Matches are settled as they go and do not count: holding the six odd
		// ones is enough to replay the two even ones among them.
		n, err = dlq.Replay(ctx, tr, even, q, dlq.Hold(6))
		if err != nil || n != 2 {
			t.Fatalf("replay even: %d, %v", n, err)
		}
		n, err = dlq.Purge(ctx, tr, nil, q, dlq.Hold(1))
		if err != nil || n != 6 {
			t.Fatalf("purge all with hold 1: %d, %v", n, err)
		}
		replayed, err := dlq.List(ctx, tr, 0, nil, dlq.Queue(target))
		if err != nil || !slices.Equal(ids(replayed), []string{all[8], all[10]}) {
			t.Fatalf("replayed: %v, %v", ids(replayed), err)
		}
		if _, err := dlq.List(ctx, tr, 0, nil, q, dlq.Hold(0)); err == nil || !strings.Contains(err.Error(), "hold 0") {
			t.Fatalf("hold 0: %v", err)
		}
	})
}

// queued returns the messages in queue, in order, leaving them there: it
// publishes a sentinel and reads up to it.
func queued(t *testing.T, tr transport.Transport, queue string) []transport.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ch, err := tr.Consume(ctx, queue, transport.ConsumeOptions{Prefetch: 100})
	must(t, err)
	defer func() {
		cancel()
		for range ch {
		}
	}()
	sentinel := "sentinel-" + fabrictest.Actor()
	must(t, tr.Publish(ctx, transport.DefaultExchange, queue, transport.Message{MessageID: sentinel}, transport.PublishOptions{Confirm: true}))
	var out []transport.Message
	for d := range ch {
		if d.MessageID == sentinel {
			_ = d.Ack()
			return out
		}
		out = append(out, d.Message)
	}
	t.Fatalf("%s: the sentinel did not come back", queue)
	return nil
}

// TestStopsEarlyTakeTheirMarker: Show finding its letter first and List
// reaching max leave nothing of theirs in the queue (their end marker used
// to stay there until its deadline, and later operations moved it along),
// nor do Replay and Purge by id.
func TestStopsEarlyTakeTheirMarker(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		tr := connect(t)
		actor := fabrictest.Actor()
		dead := actor + ".dead"
		deadQueue(t, tr, dead)
		target := actor + ".target"
		deadQueue(t, tr, target)
		for _, id := range []string{"a", "b", "c"} {
			letter(t, tr, dead, actor+"-"+id, "/x/y", transport.DefaultExchange, target)
		}
		l, err := dlq.Show(t.Context(), tr, actor+"-a", dlq.Queue(dead))
		must(t, err)
		if l.MessageID != actor+"-a" {
			t.Fatalf("show: %+v", l)
		}
		ls, err := dlq.List(t.Context(), tr, 1, nil, dlq.Queue(dead))
		must(t, err)
		if got := ids(ls); !slices.Equal(got, []string{actor + "-a"}) {
			t.Fatalf("list max 1: %v", got)
		}
		// Replay and purge by id leave no marker either.
		n, err := dlq.Replay(t.Context(), tr, func(l dlq.Letter) bool { return l.MessageID == actor+"-b" }, dlq.Queue(dead))
		must(t, err)
		if n != 1 {
			t.Fatalf("replayed %d", n)
		}
		n, err = dlq.Purge(t.Context(), tr, func(l dlq.Letter) bool { return l.MessageID == actor+"-c" }, dlq.Queue(dead))
		must(t, err)
		if n != 1 {
			t.Fatalf("purged %d", n)
		}
		var left []string
		for _, m := range queued(t, tr, dead) {
			left = append(left, m.Type+":"+m.MessageID)
		}
		want := []string{wire.TypePush + ":" + actor + "-a"}
		if !slices.Equal(left, want) {
			t.Fatalf("queue holds %v, want %v", left, want)
		}
	})
}
