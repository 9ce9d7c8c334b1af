package transporttest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/warrenrpc/warren/transport"
)

// returnsOf registers with tr's NotifyReturn (failing the scenario when
// tr is no Returner) and returns the channel the returns arrive on.
func (e *env) returnsOf(tr transport.Transport) (<-chan transport.Return, func()) {
	e.t.Helper()
	ch := make(chan transport.Return, 1024)
	stop, ok := transport.NotifyReturn(tr, func(r transport.Return) {
		select {
		case ch <- r:
		default:
			e.t.Errorf("return of %q: the scenario's buffer is full", r.MessageID)
		}
	})
	if !ok {
		e.t.Fatalf("%T: NotifyReturn: not a Returner", tr)
	}
	e.t.Cleanup(stop)
	return ch, stop
}

// recvReturn waits for the next return.
func (e *env) recvReturn(ch <-chan transport.Return) transport.Return {
	e.t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(wait):
		e.t.Fatalf("no return within %v", wait)
	}
	return transport.Return{}
}

// noReturn checks that no return arrives for quiet.
func (e *env) noReturn(what string, ch <-chan transport.Return) {
	e.t.Helper()
	select {
	case r := <-ch:
		e.t.Fatalf("%s: unexpected return %+v", what, r)
	case <-time.After(quiet):
	}
}

var unconfirmed = transport.PublishOptions{Mandatory: true, Unconfirmed: true}

// unconfirmedReturned: a mandatory publish with Unconfirmed returns nil at
// once, and when no queue takes the message, a Return with its ids,
// exchange and key, wrapping ErrUnroutable, reaches the functions
// registered on the publishing transport, and only those (not another
// connection's, not one stopped). A routed one is delivered and not
// returned.
func unconfirmedReturned(e *env) {
	tr, other := e.open(), e.open()
	x := e.exchange(tr, transport.Direct)
	q := e.queue(tr, transport.Queue{})
	e.bind(tr, x, q, "bound")
	returns, _ := e.returnsOf(tr)
	otherReturns, _ := e.returnsOf(other)
	stopped, stop := e.returnsOf(tr)
	stop()

	missing := e.name("missing")
	for _, c := range []struct{ ex, key, id string }{{transport.DefaultExchange, missing, "m1"}, {x, "unbound", "m2"}} {
		msg := transport.Message{Body: []byte(c.id), MessageID: c.id, CorrelationID: "c-" + c.id}
		if err := tr.Publish(e.ctx(), c.ex, c.key, msg, unconfirmed); err != nil {
			e.t.Fatalf("unconfirmed mandatory publish of %s, unroutable: %v", c.id, err)
		}
		r := e.recvReturn(returns)
		if r.MessageID != c.id || r.CorrelationID != "c-"+c.id || r.Exchange != c.ex || r.Key != c.key {
			e.t.Fatalf("return %+v, want message id %q, correlation id %q, exchange %q, key %q", r, c.id, "c-"+c.id, c.ex, c.key)
		}
		e.wantErr("return of "+c.id, r.Err, transport.ErrUnroutable)
	}
	if err := tr.Publish(e.ctx(), x, "bound", transport.Message{Body: []byte("routed"), MessageID: "m3"}, unconfirmed); err != nil {
		e.t.Fatalf("unconfirmed mandatory publish, routed: %v", err)
	}
	e.equalStrings("queue", e.contents(tr, q), []string{"routed"})
	e.noReturn("a routed message", returns)
	e.noReturn("another connection's", otherReturns)
	e.noReturn("a stopped registration", stopped)
}

// unconfirmedChannelBreak: every Unconfirmed mandatory publish either
// reaches its queue or is reported by a Return, also when a publish to a
// missing exchange, among them, breaks the channel they share (RabbitMQ
// drops what the channel carries after it). The refused publish is
// ErrNotFound, from Publish or in a Return.
func unconfirmedChannelBreak(e *env) {
	tr := e.open()
	q := e.queue(tr, transport.Queue{})
	returns, _ := e.returnsOf(tr)
	missing := e.name("missing")
	const n = 200
	var wg sync.WaitGroup
	var mu sync.Mutex
	var sent []string
	var badErr error
	for i := range n {
		wg.Go(func() {
			id := fmt.Sprint("m", i)
			ex, key := transport.DefaultExchange, q
			if i == n/4 {
				ex, key = missing, "k"
			}
			err := tr.Publish(e.ctx(), ex, key, transport.Message{Body: []byte(id), MessageID: id, CorrelationID: id}, unconfirmed)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case i == n/4:
				badErr = err
			case err != nil:
				e.t.Errorf("publish %s: %v", id, err)
			default:
				sent = append(sent, id)
			}
		})
	}
	wg.Wait()
	if badErr != nil {
		e.wantErr("unconfirmed mandatory publish to a missing exchange", badErr, transport.ErrNotFound)
	}
	// The transport recovers: a confirmed publish works again soon.
	e.eventually("confirmed publish after a refused one", func() error {
		return tr.Publish(e.ctx(), transport.DefaultExchange, q, transport.Message{Body: []byte("ok")}, transport.PublishOptions{Confirm: true})
	})
	got := e.contents(tr, q)
	// The broken channel's publishes are reported once the transport sees
	// its close, which the confirmed publish above (on another channel)
	// does not wait for: collect returns until each publish is accounted
	// for.
	reported := map[string]error{}
	bad := fmt.Sprint("m", n/4)
	e.eventually("every publish delivered or reported", func() error {
		for drained := false; !drained; {
			select {
			case r := <-returns:
				reported[r.MessageID] = r.Err
			default:
				drained = true
			}
		}
		if _, ok := reported[bad]; badErr == nil && !ok {
			return errors.New("the publish to a missing exchange: neither an error nor a return")
		}
		for _, id := range sent {
			if _, ok := reported[id]; !ok && !slices.Contains(got, id) {
				return fmt.Errorf("message %s neither delivered nor reported", id)
			}
		}
		return nil
	})
	if badErr == nil {
		e.wantErr("return of the publish to a missing exchange", reported[bad], transport.ErrNotFound)
	}
	for _, id := range sent {
		if err, ok := reported[id]; ok && !errors.Is(err, transport.ErrNotFound) && !errors.Is(err, transport.ErrConnectionLost) {
			e.t.Errorf("return of %s: %v, want one wrapping ErrNotFound or ErrConnectionLost", id, err)
		}
	}
}
