package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
)

// proxy is a TCP proxy on loopback between a transport and the broker, so
// that a test can break the network under one transport without touching
// the shared broker: cut closes every connection, down refuses new ones,
// freeze stops forwarding bytes while keeping the sockets open (a silent
// network failure that only heartbeats detect).
type proxy struct {
	t      testing.TB
	ln     net.Listener
	target string

	mu     sync.Mutex
	cond   *sync.Cond
	down   bool
	frozen bool
	conns  map[net.Conn]struct{}
	closed bool

	wg sync.WaitGroup
}

func startProxy(t testing.TB, brokerURL string) (*proxy, string) {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	target := u.Host
	if u.Port() == "" {
		target = net.JoinHostPort(u.Hostname(), "5672")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	u.Host = ln.Addr().String()
	return p, u.String()
}

func (p *proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down || p.closed {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.mu.Unlock()
		b, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[b] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Go(func() { p.pipe(b, c) })
		p.wg.Go(func() { p.pipe(c, b) })
	}
}

// pipe copies from src to dst, holding bytes while the proxy is frozen.
func (p *proxy) pipe(dst, src net.Conn) {
	defer func() {
		dst.Close()
		src.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.frozen && !p.closed {
				p.cond.Wait()
			}
			p.mu.Unlock()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				p.t.Logf("proxy: %v", err)
			}
			return
		}
	}
}

// cut closes every proxied connection, as a network failure the client
// notices at once.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
	p.frozen = false
	p.cond.Broadcast()
}

func (p *proxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
}

func (p *proxy) setFrozen(frozen bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.frozen = frozen
	p.cond.Broadcast()
}

func (p *proxy) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.cut()
	p.wg.Wait()
}

// dialVia dials a transport through a proxy, closed with the test.
func dialVia(t *testing.T, u string, cfg amqp.Config) *amqp.Transport {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tr, err := amqp.Dial(ctx, u, cfg, amqp.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func lostAndCtx(err error, ctxErr error) error {
	if errors.Is(err, transport.ErrConnectionLost) && errors.Is(err, ctxErr) {
		return nil
	}
	return fmt.Errorf("err = %v, want ErrConnectionLost and %v", err, ctxErr)
}

// TestReconnectAfterNetworkBreak breaks the network under a transport and
// keeps the broker unreachable for a while: consumers end, operations
// started during the outage wait for the reconnection and, when their ctx
// ends first, fail with both ErrConnectionLost and the ctx's error; the
// transport keeps redialling and recovers once the broker is reachable.
func TestReconnectAfterNetworkBreak(t *testing.T) {
	direct := dial(t, amqp.Config{})
	q := tempQueue(t, direct, transport.Queue{})
	p, u := startProxy(t, testenv.AMQPURL(t))
	tr := dialVia(t, u, amqp.Config{Heartbeat: time.Second})
	ds, err := tr.Consume(t.Context(), q, transport.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}

	p.setDown(true)
	p.cut()
	start := time.Now()
	waitClosed(t, ds)
	t.Logf("consumer closed %v after the break", time.Since(start).Round(time.Millisecond))

	short := func() context.Context {
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}
	ctx := short()
	if err := lostAndCtx(tr.Publish(ctx, "", q, transport.Message{Body: []byte("x")}, transport.PublishOptions{Confirm: true}), ctx.Err()); err != nil {
		t.Errorf("publish during the outage: %v", err)
	}
	ctx = short()
	_, err = tr.DeclareQueue(ctx, transport.Queue{Name: q})
	if err := lostAndCtx(err, ctx.Err()); err != nil {
		t.Errorf("declare during the outage: %v", err)
	}
	ctx = short()
	_, err = tr.Consume(ctx, q, transport.ConsumeOptions{})
	if err := lostAndCtx(err, ctx.Err()); err != nil {
		t.Errorf("consume during the outage: %v", err)
	}
	testenv.WaitFor(t, 20*time.Second, func() error {
		if s := tr.Stats(); s.Attempts < 3 {
			return fmt.Errorf("stats %+v: want 3 failed attempts", s)
		}
		return nil
	})

	// A publish started during the outage goes through once it ends.
	done := make(chan error, 1)
	go func() {
		done <- tr.Publish(t.Context(), "", q, transport.Message{Body: []byte("waited")}, transport.PublishOptions{Confirm: true})
	}()
	p.setDown(false)
	up := time.Now()
	if err := <-done; err != nil {
		t.Fatalf("publish waiting for the reconnection: %v", err)
	}
	t.Logf("reconnected %v after the broker became reachable; stats %+v", time.Since(up).Round(time.Millisecond), tr.Stats())
	if s := tr.Stats(); s.Losses != 1 || s.Reconnects != 1 {
		t.Errorf("stats %+v: want one loss, one reconnect", s)
	}
	ds, err = tr.Consume(t.Context(), q, transport.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d := receive(t, ds); string(d.Body) != "waited" {
		t.Fatalf("got %q", d.Body)
	} else if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
}

// TestReconnectAfterSilentBreak freezes the network: nothing arrives, no
// socket closes. Heartbeats detect it; a publish waiting for its confirm
// fails with ErrConnectionLost rather than waiting forever, and the
// transport reconnects once the network works again.
func TestReconnectAfterSilentBreak(t *testing.T) {
	direct := dial(t, amqp.Config{})
	q := tempQueue(t, direct, transport.Queue{})
	p, u := startProxy(t, testenv.AMQPURL(t))
	tr := dialVia(t, u, amqp.Config{Heartbeat: time.Second})
	// Open every publish channel first, so that the next publish is
	// written at once (a publish that cannot open its channel on a dead
	// connection waits for the next one instead).
	for range 8 {
		if err := tr.Publish(t.Context(), "", q, transport.Message{Body: []byte("before")}, transport.PublishOptions{Confirm: true}); err != nil {
			t.Fatal(err)
		}
	}

	p.setFrozen(true)
	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := tr.Publish(ctx, "", q, transport.Message{Body: []byte("in flight")}, transport.PublishOptions{Confirm: true})
	if !errors.Is(err, transport.ErrConnectionLost) {
		t.Fatalf("publish in flight: err = %v, want ErrConnectionLost", err)
	}
	t.Logf("publish in flight failed %v after the freeze: %v", time.Since(start).Round(time.Millisecond), err)
	p.cut() // the network comes back; the frozen sockets are dead anyway
	if err := tr.Publish(t.Context(), "", q, transport.Message{Body: []byte("after")}, transport.PublishOptions{Confirm: true}); err != nil {
		t.Fatalf("publish after the reconnection: %v", err)
	}
	if s := tr.Stats(); s.Reconnects != 1 {
		t.Errorf("stats %+v: want one reconnect", s)
	}
}

// TestCloseDuringOutage: Close stops the redial loop at once, and
// operations waiting for the reconnection return ErrClosed.
func TestCloseDuringOutage(t *testing.T) {
	p, u := startProxy(t, testenv.AMQPURL(t))
	tr := dialVia(t, u, amqp.Config{})
	p.setDown(true)
	p.cut()
	testenv.WaitFor(t, 20*time.Second, func() error {
		if s := tr.Stats(); s.Attempts < 2 {
			return fmt.Errorf("stats %+v", s)
		}
		return nil
	})
	waiting := make(chan error, 1)
	go func() {
		_, err := tr.DeclareQueue(t.Context(), transport.Queue{Name: name(t, "q")})
		waiting <- err
	}()
	start := time.Now()
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-waiting; !errors.Is(err, transport.ErrClosed) {
		t.Errorf("declare waiting during Close: err = %v, want ErrClosed", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close during an outage took %v", d)
	}
	attempts := tr.Stats().Attempts
	p.setDown(false)
	if err := tr.Publish(t.Context(), "", "x", transport.Message{}, transport.PublishOptions{}); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("publish after Close: err = %v", err)
	}
	if a := tr.Stats().Attempts; a != attempts {
		t.Errorf("redial attempts after Close: %d, then %d", attempts, a)
	}
}

// TestConfirmsInFlightDuringLoss publishes a stream of confirmed messages
// while the connection is cut, repeatedly: every publish returns (nil or an
// error wrapping ErrConnectionLost), and every one that returned nil is in
// the queue afterwards.
func TestConfirmsInFlightDuringLoss(t *testing.T) {
	direct := dial(t, amqp.Config{})
	q := tempQueue(t, direct, transport.Queue{})
	p, u := startProxy(t, testenv.AMQPURL(t))
	tr := dialVia(t, u, amqp.Config{})

	const workers, each = 4, 100
	var (
		mu        sync.Mutex
		confirmed = map[string]bool{}
		failed    int
		wg        sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				body := fmt.Sprintf("%d-%d", w, i)
				ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
				err := tr.Publish(ctx, "", q, transport.Message{Body: []byte(body)}, transport.PublishOptions{Confirm: true})
				cancel()
				mu.Lock()
				switch {
				case err == nil:
					confirmed[body] = true
				case errors.Is(err, transport.ErrConnectionLost):
					failed++
				default:
					t.Errorf("publish %s: %v", body, err)
				}
				mu.Unlock()
			}
		})
	}
	for range 3 {
		testenv.WaitFor(t, 10*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(confirmed)+failed < 20 {
				return errors.New("not publishing yet")
			}
			return nil
		})
		p.cut()
		mu.Lock()
		confirmed2 := len(confirmed)
		mu.Unlock()
		testenv.WaitFor(t, 10*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(confirmed) <= confirmed2 && len(confirmed)+failed < workers*each {
				return errors.New("no publish confirmed since the cut")
			}
			return nil
		})
	}
	wg.Wait()
	got := map[string]bool{}
	ds, err := direct.Consume(t.Context(), q, transport.ConsumeOptions{Prefetch: 100, AutoAck: true})
	if err != nil {
		t.Fatal(err)
	}
	timeout := time.After(10 * time.Second)
	for missing := len(confirmed); missing > 0; {
		select {
		case d := <-ds:
			if confirmed[string(d.Body)] && !got[string(d.Body)] {
				missing--
			}
			got[string(d.Body)] = true
		case <-timeout:
			var lost []string
			for b := range confirmed {
				if !got[b] {
					lost = append(lost, b)
				}
			}
			t.Fatalf("%d confirmed publishes of %d not in the queue (%d received): %v", len(lost), len(confirmed), len(got), lost)
		}
	}
	t.Logf("%d publishes: %d confirmed, %d failed with ErrConnectionLost, %d in the queue; stats %+v",
		workers*each, len(confirmed), failed, len(got), tr.Stats())
}
