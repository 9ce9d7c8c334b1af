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
	inHand bool // handed on, not yet settled: a redelivery is legitimate
	index  int  // in the heap
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
)

// admit records key (signed at ts, Unix ms) unless it was seen. A
// redelivered message whose first delivery was never settled is admitted
// again. oldest is now minus the window: entries older than it are purged.
func (w *replayWindow) admit(key string, ts int64, redelivered, autoAck bool, oldest int64) admission {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.byTS) > 0 && w.byTS[0].ts < oldest {
		delete(w.seen, heap.Pop(&w.byTS).(*replayEntry).key)
	}
	if ent, ok := w.seen[key]; ok {
		if redelivered && ent.inHand {
			return admitted
		}
		return admitReplayed
	}
	if ts <= w.floor {
		w.belowFloor++
		return admitBelowFloor
	}
	ent := &replayEntry{key: key, ts: ts, inHand: !autoAck}
	heap.Push(&w.byTS, ent)
	w.seen[key] = ent
	for len(w.byTS) > w.max {
		old := heap.Pop(&w.byTS).(*replayEntry)
		delete(w.seen, old.key)
		w.floor = max(w.floor, old.ts)
	}
	return admitted
}

// settled records how a handed-on message was settled: acked or rejected
// (done: a copy arriving later is a replay), or requeued (forgotten: the
// broker will deliver it again).
func (w *replayWindow) settled(key string, requeued bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ent, ok := w.seen[key]
	if !ok {
		return
	}
	if requeued {
		heap.Remove(&w.byTS, ent.index)
		delete(w.seen, key)
		return
	}
	ent.inHand = false
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
