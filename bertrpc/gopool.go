package bertrpc

import (
	"sync"
	"sync/atomic"
)

// gopool runs functions on goroutines, reusing those whose function has
// returned. A new goroutine starts on a small stack that a connection's
// reader grows every time: with a connection per call that was about 6%
// of the server's CPU, and the goroutine's creation more. A function is handed to an idle goroutine
// when there is one, else to a new one; at most maxIdle wait idle, the
// others end, and the idle ones end when the pool stops.
type gopool struct {
	work    chan func()
	stopped chan struct{}
	stop    sync.Once
	idle    atomic.Int32
	maxIdle int32
}

func newGopool(maxIdle int32) *gopool {
	return &gopool{work: make(chan func()), stopped: make(chan struct{}), maxIdle: maxIdle}
}

// Go runs f on an idle goroutine of the pool, or on a new one.
func (p *gopool) Go(f func()) {
	select {
	case p.work <- f:
	default:
		go p.run(f)
	}
}

func (p *gopool) run(f func()) {
	for {
		f()
		f = nil // not kept alive while idle
		if p.idle.Add(1) > p.maxIdle {
			p.idle.Add(-1)
			return
		}
		select {
		case f = <-p.work:
			p.idle.Add(-1)
		case <-p.stopped:
			p.idle.Add(-1)
			return
		}
	}
}

// Stop ends the idle goroutines, now and as the others finish; Go must
// not be called after it.
func (p *gopool) Stop() { p.stop.Do(func() { close(p.stopped) }) }
