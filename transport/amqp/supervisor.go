package amqp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// supervisor owns one AMQP connection and everything the broker tells about
// it: its loss (connection.close or a broken socket) and flow control
// (connection.blocked). It is where reconnection will live: today a lost
// connection stays lost and every user of it sees ErrConnectionLost.
type supervisor struct {
	role    string // "publish" or "consume", for logs and the connection name
	conn    *amqp091.Connection
	netConn net.Conn // the socket under conn (under TLS too)
	log     *slog.Logger

	lost    chan struct{} // closed once the connection is gone
	lostErr error         // why; set before lost is closed

	// onLost, when set before the connection can drop, is called once from
	// the watch goroutine when the broker or the network ends the
	// connection (not when close is called).
	onLost func()

	mu        sync.Mutex
	unblocked chan struct{} // closed while the broker lets us publish

	done chan struct{} // closed when watch returns
}

// dialSupervisor connects to url. ctx bounds the TCP connect and the AMQP
// handshake.
func dialSupervisor(ctx context.Context, url, role string, cfg Config, log *slog.Logger) (*supervisor, error) {
	props := amqp091.NewConnectionProperties()
	name := cfg.ConnectionName
	if name == "" {
		name = "warren"
	}
	props.SetClientConnectionName(name + " (" + role + ")")

	var (
		netMu   sync.Mutex
		netConn net.Conn
	)
	dial := func(network, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: 30 * time.Second}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		// The handshake has no context: bound it with a deadline, which
		// amqp091 clears once the connection is open.
		deadline, ok := ctx.Deadline()
		if !ok {
			deadline = time.Now().Add(30 * time.Second)
		}
		if err := c.SetDeadline(deadline); err != nil {
			c.Close()
			return nil, err
		}
		netMu.Lock()
		netConn = c
		netMu.Unlock()
		return c, nil
	}
	// Cancelling ctx during the handshake breaks it off.
	stop := context.AfterFunc(ctx, func() {
		netMu.Lock()
		defer netMu.Unlock()
		if netConn != nil {
			_ = netConn.SetDeadline(time.Now())
		}
	})
	var tlsCfg *tls.Config
	if cfg.TLS != nil {
		tlsCfg = cfg.TLS.Clone()
	}
	conn, err := amqp091.DialConfig(url, amqp091.Config{
		Heartbeat:       cfg.heartbeat(),
		TLSClientConfig: tlsCfg,
		Properties:      props,
		Dial:            dial,
	})
	if !stop() && err == nil {
		// ctx ended just as the handshake completed.
		conn.Close()
		err = ctx.Err()
	}
	if err != nil {
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w: %w", ctx.Err(), err)
		}
		return nil, err
	}

	netMu.Lock()
	raw := netConn
	netMu.Unlock()
	s := &supervisor{
		role:      role,
		conn:      conn,
		netConn:   raw,
		log:       log.With("connection", role),
		lost:      make(chan struct{}),
		unblocked: make(chan struct{}),
		done:      make(chan struct{}),
	}
	close(s.unblocked)
	return s, nil
}

// start begins watching the connection; onLost must be set before.
func (s *supervisor) start() {
	closes := s.conn.NotifyClose(make(chan *amqp091.Error, 1))
	blocks := s.conn.NotifyBlocked(make(chan amqp091.Blocking, 4))
	go s.watch(closes, blocks)
}

// watch drains the connection's notifications until both channels are
// closed, which amqp091 does when the connection shuts down.
func (s *supervisor) watch(closes <-chan *amqp091.Error, blocks <-chan amqp091.Blocking) {
	defer close(s.done)
	for closes != nil || blocks != nil {
		select {
		case e, ok := <-closes:
			if !ok {
				closes = nil
				s.markLost(nil)
				continue
			}
			s.markLost(e)
			if s.onLost != nil {
				s.onLost()
			}
		case b, ok := <-blocks:
			if !ok {
				blocks = nil
				continue
			}
			s.setBlocked(b)
		}
	}
}

func (s *supervisor) markLost(e *amqp091.Error) {
	select {
	case <-s.lost:
		return
	default:
	}
	if e != nil {
		s.lostErr = e
		s.log.Warn("connection lost", "err", e)
	} else {
		s.lostErr = errors.New("connection closed")
	}
	close(s.lost)
	// Nobody will unblock us now; let waiting publishers see the loss.
	s.setBlocked(amqp091.Blocking{Active: false})
}

func (s *supervisor) setBlocked(b amqp091.Blocking) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.unblocked:
		if b.Active {
			s.log.Warn("broker blocked publishing", "reason", b.Reason)
			s.unblocked = make(chan struct{})
		}
	default:
		if !b.Active {
			s.log.Info("broker unblocked publishing")
			close(s.unblocked)
		}
	}
}

// whenUnblocked returns a channel that is closed while publishing is
// allowed.
func (s *supervisor) whenUnblocked() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unblocked
}

// isLost reports whether the connection is gone.
func (s *supervisor) isLost() bool {
	select {
	case <-s.lost:
		return true
	default:
		return false
	}
}

// closeTimeout bounds the connection.close handshake.
const closeTimeout = 5 * time.Second

// close closes the connection and waits for watch to return. It takes at
// most closeTimeout even when the broker does not answer: one that blocked
// the connection (resource alarm) has stopped reading from it, and
// amqp091's own deadline is pushed back by its heartbeater.
func (s *supervisor) close() {
	s.closeConn()
	<-s.done
}

// closeConn closes the connection without waiting for watch.
func (s *supervisor) closeConn() {
	if !s.conn.IsClosed() {
		cut := time.AfterFunc(closeTimeout, func() { _ = s.netConn.Close() })
		err := s.conn.CloseDeadline(time.Now().Add(closeTimeout))
		cut.Stop()
		if err != nil && !errors.Is(err, amqp091.ErrClosed) {
			s.log.Debug("closing connection", "err", err)
		}
	}
}
