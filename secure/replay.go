package secure

import (
	"container/list"
	"sync"
	"time"
)

// replayWindow remembers the (signer, message id) of authenticated messages
// for the replay window, in bounded memory. When it is full it forgets the
// oldest entries and raises its floor to their timestamp: from then on any
// message signed at or before the floor is refused, so forgetting never
// lets a replay through.
type replayWindow struct {
	mu    sync.Mutex
	max   int
	order *list.List // insertion order, oldest at front
	seen  map[string]*list.Element
	floor int64 // Unix ms: messages signed at or before it are refused
}

type replayEntry struct {
	key    string
	ts     int64
	inHand bool // handed on, not yet settled: a redelivery is legitimate
}

func newReplayWindow(size int) *replayWindow {
	return &replayWindow{max: size, order: list.New(), seen: map[string]*list.Element{}}
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
	for e := w.order.Front(); e != nil && e.Value.(*replayEntry).ts < oldest; e = w.order.Front() {
		w.order.Remove(e)
		delete(w.seen, e.Value.(*replayEntry).key)
	}
	if e, ok := w.seen[key]; ok {
		ent := e.Value.(*replayEntry)
		if redelivered && ent.inHand {
			return admitted
		}
		return admitReplayed
	}
	if ts <= w.floor {
		return admitBelowFloor
	}
	w.seen[key] = w.order.PushBack(&replayEntry{key: key, ts: ts, inHand: !autoAck})
	for w.order.Len() > w.max {
		e := w.order.Front()
		ent := e.Value.(*replayEntry)
		w.order.Remove(e)
		delete(w.seen, ent.key)
		w.floor = max(w.floor, ent.ts)
	}
	return admitted
}

// settled records how a handed-on message was settled: acked or rejected
// (done: a copy arriving later is a replay), or requeued (forgotten: the
// broker will deliver it again).
func (w *replayWindow) settled(key string, requeued bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	e, ok := w.seen[key]
	if !ok {
		return
	}
	if requeued {
		w.order.Remove(e)
		delete(w.seen, key)
		return
	}
	e.Value.(*replayEntry).inHand = false
}

func (w *replayWindow) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.order.Len()
}

// windowStart returns the Unix ms before which messages are too old.
func windowStart(now time.Time, window time.Duration) int64 {
	return now.Add(-window).UnixMilli()
}
