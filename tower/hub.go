package tower

import (
	"bytes"
	"sync"
)

// sseEvent is one server-sent event: a named HTML fragment.
type sseEvent struct {
	name string
	data []byte
}

// hub fans live updates out to the open pages. Each page has a small
// buffer; a page too slow to take an update misses it, and since updates
// are whole fragments the next one makes up for it. The latest fragment of
// each name is kept, so a page that opens gets everything at once.
type hub struct {
	mu     sync.Mutex
	subs   map[chan sseEvent]struct{}
	last   map[string][]byte
	order  []string // names in the order first sent
	closed bool
	joined chan struct{} // a page opened (coalesced)
}

func newHub() *hub {
	return &hub{subs: map[chan sseEvent]struct{}{}, last: map[string][]byte{}, joined: make(chan struct{}, 1)}
}

func (h *hub) clients() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// subscribe returns a channel of updates, primed with the latest of each,
// and a function that ends the subscription. The channel is closed when
// the hub is.
func (h *hub) subscribe() (<-chan sseEvent, func()) {
	ch := make(chan sseEvent, 16)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		close(ch)
		return ch, func() {}
	}
	for _, name := range h.order {
		ch <- sseEvent{name: name, data: h.last[name]}
	}
	h.subs[ch] = struct{}{}
	select {
	case h.joined <- struct{}{}:
	default:
	}
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if _, ok := h.subs[ch]; ok {
			delete(h.subs, ch)
			close(ch)
		}
	}
}

// send delivers e to every page.
func (h *hub) send(e sseEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sendLocked(e)
}

// sendChanged delivers e unless it is the same as the latest of its name.
func (h *hub) sendChanged(e sseEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if old, ok := h.last[e.name]; ok && bytes.Equal(old, e.data) {
		return
	}
	h.sendLocked(e)
}

func (h *hub) sendLocked(e sseEvent) {
	if h.closed {
		return
	}
	if _, ok := h.last[e.name]; !ok {
		h.order = append(h.order, e.name)
	}
	h.last[e.name] = e.data
	for ch := range h.subs {
		select {
		case ch <- e:
		default: // slow page: the next update makes up for it
		}
	}
}

func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	h.closed = true
	for ch := range h.subs {
		close(ch)
	}
	h.subs = map[chan sseEvent]struct{}{}
}
