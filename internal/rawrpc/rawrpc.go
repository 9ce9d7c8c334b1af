// Package rawrpc is the baseline Warren's benchmarks measure against: what a
// careful programmer writes with nothing but amqp091-go for request/reply
// over RabbitMQ. A Server echoes every request of its own queue to the
// request's reply-to; a Client calls it, matching replies by correlation id,
// in one of two shapes:
//
//   - DirectReplyTo: replies through RabbitMQ's amq.rabbitmq.reply-to
//     pseudo-queue, the shape RabbitMQ's RPC tutorial recommends;
//   - ExclusiveQueue: replies through a server-named exclusive queue of the
//     client's own, which measured faster than direct reply-to with 16 or
//     more calls in flight on the project's machines.
//
// Like Warren, client and server have their own connections and the server
// acks each request after its reply is published (the reply itself is not
// confirmed). With Confirm, the client publishes mandatory and waits for the
// publisher confirm, as a Warren mapper does.
//
// StartOptions adds, one at a time or together, the AMQP choices a Warren
// mapper and agent make (Options: replies on a second connection, a named
// exchange, Warren's properties, an agent queue's arguments, ...), so that
// each can be priced against the plain shape (docs/benchmarks.md, "What
// RabbitMQ works for").
package rawrpc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// directReplyTo is RabbitMQ's pseudo-queue for replies without a queue.
const directReplyTo = "amq.rabbitmq.reply-to"

// Shape is how a Client receives its replies.
type Shape int

const (
	// DirectReplyTo consumes amq.rabbitmq.reply-to with auto-ack on the
	// publishing channel.
	DirectReplyTo Shape = iota
	// ExclusiveQueue consumes a server-named exclusive, auto-delete queue
	// with auto-ack on its own channel.
	ExclusiveQueue
)

func (s Shape) String() string {
	if s == ExclusiveQueue {
		return "exclusive-queue"
	}
	return "direct-reply-to"
}

// Server echoes every request of its queue to the request's reply-to.
type Server struct {
	conn  *amqp091.Connection
	pconn *amqp091.Connection // publishes replies with Options.SplitServer
	queue string
	opts  Options
	done  chan struct{} // closed when serve has returned
}

// Options are variants of the baseline that price one of Warren's choices
// at a time (see docs/benchmarks.md); the zero value is the plain shape.
type Options struct {
	// AckMultiple: the server acks with multiple=true when it has no
	// further delivery waiting (or every 32), instead of one ack each.
	AckMultiple bool
	// SplitServer: the server publishes its replies on a second
	// connection, as a Warren agent does.
	SplitServer bool
	// ReplyConfirm: the server's reply channel is in confirm mode (the
	// replies are not waited for).
	ReplyConfirm bool
	// Expiration: the client's requests carry a per-message expiration.
	Expiration bool
	// Exchange: requests go through a durable (auto-delete) direct exchange bound to
	// the server's queue, as Warren's go through warren.request, instead
	// of the default exchange.
	Exchange bool
	// Shape: requests and replies carry Warren's properties (type, a
	// 32-character message id, app id, timestamp) and requests its path
	// header.
	Shape bool
	// SplitClient: the client consumes its replies (ExclusiveQueue) on a
	// second connection, as a Warren mapper does.
	SplitClient bool
	// QueueArgs: the server's queue has an agent queue's arguments
	// (x-expires, a dead-letter exchange).
	QueueArgs bool
}

// benchExchange is the exchange of Options.Exchange.
const benchExchange = "warren.rawrpc.bench"

// StartServer declares a server-named queue and serves it with the given
// prefetch until Close.
func StartServer(url string, prefetch int) (*Server, error) {
	return StartServerOptions(url, prefetch, Options{})
}

// StartServerOptions is StartServer with a variant.
func StartServerOptions(url string, prefetch int, opts Options) (*Server, error) {
	conn, err := amqp091.DialConfig(url, amqp091.Config{Properties: amqp091.Table{"connection_name": "warren raw baseline server"}})
	if err != nil {
		return nil, fmt.Errorf("raw server: dial: %w", err)
	}
	ch, ds, queue, err := func() (*amqp091.Channel, <-chan amqp091.Delivery, string, error) {
		ch, err := conn.Channel()
		if err != nil {
			return nil, nil, "", err
		}
		if err := ch.Qos(prefetch, 0, false); err != nil {
			return nil, nil, "", err
		}
		var args amqp091.Table
		if opts.QueueArgs {
			args = amqp091.Table{"x-expires": int32(600000), "x-dead-letter-exchange": "warren.dlx"}
		}
		q, err := ch.QueueDeclare("", false, true, true, false, args) // auto-delete, exclusive
		if err != nil {
			return nil, nil, "", err
		}
		if opts.Exchange {
			if err := ch.ExchangeDeclare(benchExchange, "direct", true, true, false, false, nil); err != nil {
				return nil, nil, "", err
			}
			if err := ch.QueueBind(q.Name, q.Name, benchExchange, false, nil); err != nil {
				return nil, nil, "", err
			}
		}
		ds, err := ch.Consume(q.Name, "", false, true, false, false, nil) // manual ack, exclusive
		if err != nil {
			return nil, nil, "", err
		}
		return ch, ds, q.Name, nil
	}()
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("raw server: %w", err)
	}
	s := &Server{conn: conn, queue: queue, opts: opts, done: make(chan struct{})}
	pch := ch
	if opts.SplitServer || opts.ReplyConfirm {
		pconn := conn
		if opts.SplitServer {
			if pconn, err = amqp091.Dial(url); err != nil {
				_ = conn.Close()
				return nil, fmt.Errorf("raw server: dial: %w", err)
			}
			s.pconn = pconn
		}
		if pch, err = pconn.Channel(); err == nil && opts.ReplyConfirm {
			err = pch.Confirm(false)
		}
		if err != nil {
			_ = conn.Close()
			if s.pconn != nil {
				_ = s.pconn.Close()
			}
			return nil, fmt.Errorf("raw server: %w", err)
		}
	}
	go s.serve(ch, pch, ds)
	return s, nil
}

// Queue is the name of the queue the server consumes.
func (s *Server) Queue() string { return s.queue }

// serve replies on the consuming channel, then acks, one delivery at a
// time: with an echo there is nothing to gain from a goroutine per request,
// and the prefetch keeps requests queued in the client library meanwhile.
func (s *Server) serve(ch, pch *amqp091.Channel, ds <-chan amqp091.Delivery) {
	defer close(s.done)
	unacked := 0
	for d := range ds {
		reply := amqp091.Publishing{
			ContentType:   "application/json",
			CorrelationId: d.CorrelationId,
			Body:          d.Body,
		}
		if s.opts.Shape {
			reply.Type, reply.AppId, reply.Timestamp = "warren.reply", "bench-agent", time.Now()
		}
		err := pch.PublishWithContext(context.Background(), "", d.ReplyTo, false, false, reply)
		if err != nil {
			_ = d.Nack(false, true)
			continue
		}
		if s.opts.AckMultiple {
			// In order, one goroutine: every earlier delivery is
			// replied to.
			if unacked++; len(ds) == 0 || unacked >= 32 {
				_ = d.Ack(true)
				unacked = 0
			}
			continue
		}
		_ = d.Ack(false)
	}
}

// Close closes the server's connections and waits for it to stop serving.
func (s *Server) Close() {
	_ = s.conn.Close()
	if s.pconn != nil {
		_ = s.pconn.Close()
	}
	<-s.done
}

// result is a reply, or why there is none.
type result struct {
	body []byte
	err  error
}

// ErrClosed is returned by calls in flight when the client's connection
// closes.
var ErrClosed = errors.New("raw client: connection closed")

// Client calls a Server, matching replies to calls by correlation id.
type Client struct {
	conn    *amqp091.Connection
	ch      *amqp091.Channel // publishes requests
	queue   string
	replyTo string
	confirm bool
	opts    Options
	url     string
	rconn   *amqp091.Connection // consumes replies with Options.SplitClient
	next    atomic.Uint64

	mu      sync.Mutex
	pending map[string]chan result

	wg sync.WaitGroup // readers of replies and returns
}

// NewClient connects a client of the server consuming queue.
func NewClient(url, queue string, shape Shape, confirm bool) (*Client, error) {
	return newClient(url, queue, shape, confirm, Options{})
}

func newClient(url, queue string, shape Shape, confirm bool, opts Options) (*Client, error) {
	conn, err := amqp091.DialConfig(url, amqp091.Config{Properties: amqp091.Table{"connection_name": "warren raw baseline client"}})
	if err != nil {
		return nil, fmt.Errorf("raw client: dial: %w", err)
	}
	c := &Client{conn: conn, queue: queue, confirm: confirm, opts: opts, url: url, pending: map[string]chan result{}}
	replies, returns, err := c.setup(shape)
	if err != nil {
		_ = conn.Close()
		if c.rconn != nil {
			_ = c.rconn.Close()
		}
		return nil, fmt.Errorf("raw client: %w", err)
	}
	c.wg.Go(func() {
		for d := range replies {
			c.resolve(d.CorrelationId, result{body: d.Body})
		}
		c.failAll(ErrClosed)
	})
	c.wg.Go(func() {
		for r := range returns {
			c.resolve(r.CorrelationId, result{err: fmt.Errorf("raw client: returned: %s", r.ReplyText)})
		}
	})
	return c, nil
}

func (c *Client) setup(shape Shape) (<-chan amqp091.Delivery, <-chan amqp091.Return, error) {
	ch, err := c.conn.Channel()
	if err != nil {
		return nil, nil, err
	}
	c.ch = ch
	returns := ch.NotifyReturn(make(chan amqp091.Return, 64))
	if c.confirm {
		if err := ch.Confirm(false); err != nil {
			return nil, nil, err
		}
	}
	if shape == DirectReplyTo {
		// Consume the pseudo-queue with auto-ack on the channel that
		// publishes the requests, as RabbitMQ requires.
		replies, err := ch.Consume(directReplyTo, "", true, true, false, false, nil)
		if err != nil {
			return nil, nil, err
		}
		c.replyTo = directReplyTo
		return replies, returns, nil
	}
	rconn := c.conn
	if c.opts.SplitClient {
		if rconn, err = amqp091.Dial(c.url); err != nil {
			return nil, nil, err
		}
		c.rconn = rconn
	}
	rch, err := rconn.Channel()
	if err != nil {
		return nil, nil, err
	}
	q, err := rch.QueueDeclare("", false, true, true, false, nil) // auto-delete, exclusive
	if err != nil {
		return nil, nil, err
	}
	replies, err := rch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		return nil, nil, err
	}
	c.replyTo = q.Name
	return replies, returns, nil
}

func (c *Client) resolve(id string, r result) {
	c.mu.Lock()
	w := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if w != nil {
		w <- r
	}
}

func (c *Client) failAll(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, w := range c.pending {
		w <- result{err: err}
		delete(c.pending, id)
	}
}

// Call sends body and waits for the reply, and for the publisher confirm
// when the client confirms. Calls may run concurrently.
func (c *Client) Call(ctx context.Context, body []byte) ([]byte, error) {
	id := strconv.FormatUint(c.next.Add(1), 10)
	w := make(chan result, 1)
	c.mu.Lock()
	c.pending[id] = w
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}
	msg := amqp091.Publishing{
		ContentType:   "application/json",
		CorrelationId: id,
		ReplyTo:       c.replyTo,
		Timestamp:     time.Now(),
		Body:          body,
	}
	if c.opts.Expiration {
		msg.Expiration = "60000"
	}
	exchange := ""
	if c.opts.Exchange {
		exchange = benchExchange
	}
	if c.opts.Shape {
		var b [16]byte
		_, _ = rand.Read(b[:])
		msg.MessageId, msg.Type, msg.AppId = hex.EncodeToString(b[:]), "warren.request", "bench-mapper"
		msg.Headers = amqp091.Table{"warren-path": "/bench/echo"}
	}
	if c.confirm {
		dc, err := c.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, c.queue, true, false, msg)
		if err != nil {
			forget()
			return nil, fmt.Errorf("raw client: publish: %w", err)
		}
		ok, err := dc.WaitContext(ctx)
		if err != nil || !ok {
			forget()
			return nil, fmt.Errorf("raw client: publish not confirmed (ack %v): %v", ok, err)
		}
	} else if err := c.ch.PublishWithContext(ctx, exchange, c.queue, false, false, msg); err != nil {
		forget()
		return nil, fmt.Errorf("raw client: publish: %w", err)
	}
	select {
	case r := <-w:
		return r.body, r.err
	case <-ctx.Done():
		forget()
		return nil, ctx.Err()
	}
}

// Close closes the client's connection; calls in flight fail with ErrClosed.
func (c *Client) Close() {
	_ = c.conn.Close()
	if c.rconn != nil {
		_ = c.rconn.Close()
	}
	c.wg.Wait()
}

// Pair is a Server and a Client of it, started together.
type Pair struct {
	*Client
	server *Server
}

// Start starts a server with prefetch and a client of it of the given shape.
func Start(url string, prefetch int, shape Shape, confirm bool) (*Pair, error) {
	return StartOptions(url, prefetch, shape, confirm, Options{})
}

// StartOptions is Start with a variant.
func StartOptions(url string, prefetch int, shape Shape, confirm bool, opts Options) (*Pair, error) {
	s, err := StartServerOptions(url, prefetch, opts)
	if err != nil {
		return nil, err
	}
	c, err := newClient(url, s.Queue(), shape, confirm, opts)
	if err != nil {
		s.Close()
		return nil, err
	}
	return &Pair{Client: c, server: s}, nil
}

// Close closes the client, then the server.
func (p *Pair) Close() {
	p.Client.Close()
	p.server.Close()
}
