package secure

import (
	"container/heap"
	"sync"
	"time"
)

// replayWindow remembers the (signer, message id) of authenticated messages
// for the replay window, in bounded memory. When it is full it forgets the
// entry signed longest ago and raises its floor to that entry's timestamp:
// from then on any message signed at or before the floor is refused, so
// forgetting never lets a replay through.
//
// Forgetting by signing time, not by arrival, keeps the floor as low as the
// bound allows: every entry remembered was signed after the floor, and the
// floor is the timestamp of the newest message forgotten. (Forgetting by
// arrival would keep a late message's entry while forgetting newer ones,
// raising the floor above entries it still holds.) The floor still trails
// the clock by about size / accepted rate: under a load above size per
// MaxAge, messages that are late by more than that are refused.
type replayWindow struct {
	mu    sync.Mutex
	max   int
	byTS  replayHeap // oldest signing time first
	seen  map[string]*replayEntry
	floor int64 // Unix ms: messages signed at or before it are refused
	// belowFloor counts messages refused only because of the floor, which
	// a larger cache would have accepted.
	belowFloor int64
}

type replayEntry struct {
	key    string
	ts     int64
	inHand bool // handed on, not yet settled: a redelivery may be legitimate
	// holder is the consumer the message in hand was delivered on.
	holder *consumerLife
	// done is closed when the entry stops being in hand (settled,
	// forgotten), for a redelivery waiting on it.
	done  chan struct{}
	index int // in the heap
}

// release ends the entry's time in hand. Called with the window's lock held.
func (e *replayEntry) release() {
	if e.inHand {
		e.inHand = false
		close(e.done)
	}
}

// consumerLife is one Consume call of the secure transport: dead is closed
// once its inner consumer has ended (its channel closed or its connection
// lost), when the broker requeues what it held unsettled.
type consumerLife struct {
	dead chan struct{}
}

func newConsumerLife() *consumerLife { return &consumerLife{dead: make(chan struct{})} }

func (c *consumerLife) isDead() bool {
	if c == nil {
		return true // no consumer to wait for
	}
	select {
	case <-c.dead:
		return true
	default:
		return false
	}
}

// replayHeap is a min-heap of entries by timestamp (container/heap).
type replayHeap []*replayEntry

func (h replayHeap) Len() int           { return len(h) }
func (h replayHeap) Less(i, j int) bool { return h[i].ts < h[j].ts }
func (h replayHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *replayHeap) Push(x any) {
	e := x.(*replayEntry)
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *replayHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}

func newReplayWindow(size int) *replayWindow {
	return &replayWindow{max: size, seen: map[string]*replayEntry{}}
}

// admission is the verdict of replayWindow.admit.
type admission int

const (
	admitted admission = iota
	admitReplayed
	admitBelowFloor
	// admitWait: a redelivered copy of a message in hand on another
	// consumer that is still alive. Wait for that consumer to end (the
	// copy is then the broker's redelivery) or the message to be settled
	// (the copy is then a replay), and ask again.
	admitWait
)

// admit records key (signed at ts, Unix ms), delivered on consumer by,
// unless it was seen. oldest is now minus the window: entries older than
// it are purged.
//
// A message seen before is admitted again only as the broker's redelivery
// of a first delivery that was never settled: flagged redelivered, while
// the first is in hand, on another consumer than the one holding it, once
// that consumer has ended (the broker redelivers what a consumer held
// only when its channel is gone). A redelivered copy on the consumer
// holding the first delivery is a replay (an attacker can get the flag
// set by taking a copy and requeueing it). On another consumer that is
// still alive, admit returns admitWait and two channels: the holder's
// end and the message's settlement, either of which may change the answer.
func (w *replayWindow) admit(key string, ts int64, redelivered, autoAck bool, oldest int64, by *consumerLife) (admission, <-chan struct{}, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.byTS) > 0 && w.byTS[0].ts < oldest {
		w.drop(heap.Pop(&w.byTS).(*replayEntry))
	}
	if ent, ok := w.seen[key]; ok {
		if !redelivered || !ent.inHand || ent.holder == by {
			return admitReplayed, nil, nil
		}
		if !ent.holder.isDead() {
			return admitWait, ent.holder.dead, ent.done
		}
		// The consumer that held it ended: this is its redelivery. From
		// now on this consumer holds it.
		ent.holder = by
		if autoAck {
			ent.release()
		}
		return admitted, nil, nil
	}
	if ts <= w.floor {
		w.belowFloor++
		return admitBelowFloor, nil, nil
	}
	ent := &replayEntry{key: key, ts: ts, inHand: !autoAck, holder: by, done: make(chan struct{})}
	if autoAck {
		close(ent.done)
	}
	heap.Push(&w.byTS, ent)
	w.seen[key] = ent
	for len(w.byTS) > w.max {
		old := heap.Pop(&w.byTS).(*replayEntry)
		w.drop(old)
		w.floor = max(w.floor, old.ts)
	}
	return admitted, nil, nil
}

// drop forgets an entry popped from the heap. Called with the lock held.
func (w *replayWindow) drop(ent *replayEntry) {
	delete(w.seen, ent.key)
	ent.release()
}

// settled records how a handed-on message, delivered on consumer by, was
// settled: acked or rejected (done: a copy arriving later is a replay), or
// requeued (forgotten: the broker will deliver it again). A requeue is
// recorded before the broker is told, since it may redeliver at once, to
// the same consumer. A settlement from a consumer that no longer holds the
// message (its redelivery is in hand on another) changes nothing.
func (w *replayWindow) settled(key string, requeued bool, by *consumerLife) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ent, ok := w.seen[key]
	if !ok || ent.holder != by {
		return
	}
	if requeued {
		heap.Remove(&w.byTS, ent.index)
		w.drop(ent)
		return
	}
	ent.release()
}

func (w *replayWindow) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.byTS)
}

// stats returns the floor (Unix ms, 0 when the cache never filled) and how
// many messages it refused.
func (w *replayWindow) stats() (floor, belowFloor int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.floor, w.belowFloor
}

// windowStart returns the Unix ms before which messages are too old.
func windowStart(now time.Time, window time.Duration) int64 {
	return now.Add(-window).UnixMilli()
}
