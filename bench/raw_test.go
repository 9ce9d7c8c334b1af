package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// The raw baseline is what a careful programmer writes with nothing but
// amqp091-go for the same job: an echo server consuming a queue, and a
// client using RabbitMQ's direct reply-to. Like Warren, client and server
// have their own connections, the server acks each request after its reply
// is published (the reply itself is not confirmed), and, with confirm set,
// the client publishes mandatory and waits for the publisher confirm as
// mapper.Request does (transport/amqp: Mandatory implies Confirm).

// directReplyTo is RabbitMQ's pseudo-queue for replies without a queue.
const directReplyTo = "amq.rabbitmq.reply-to"

// rawServer echoes every request of its queue to the request's reply-to.
type rawServer struct {
	conn  *amqp091.Connection
	queue string
	done  chan struct{} // closed when serve has returned
}

// startRawServer declares a server-named queue and serves it with the
// given prefetch until the connection closes.
func startRawServer(url string, prefetch int) (*rawServer, error) {
	conn, err := amqp091.DialConfig(url, amqp091.Config{Properties: amqp091.Table{"connection_name": "warren-bench raw server"}})
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
		q, err := ch.QueueDeclare("", false, true, true, false, nil) // auto-delete, exclusive
		if err != nil {
			return nil, nil, "", err
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
	s := &rawServer{conn: conn, queue: queue, done: make(chan struct{})}
	go s.serve(ch, ds)
	return s, nil
}

// serve replies on the consuming channel, then acks, one delivery at a
// time: with an echo there is nothing to gain from a goroutine per request,
// and the prefetch keeps requests queued in the client library meanwhile.
func (s *rawServer) serve(ch *amqp091.Channel, ds <-chan amqp091.Delivery) {
	defer close(s.done)
	for d := range ds {
		err := ch.PublishWithContext(context.Background(), "", d.ReplyTo, false, false, amqp091.Publishing{
			ContentType:   "application/json",
			CorrelationId: d.CorrelationId,
			Body:          d.Body,
		})
		if err != nil {
			_ = d.Nack(false, true)
			continue
		}
		_ = d.Ack(false)
	}
}

func (s *rawServer) close() {
	_ = s.conn.Close()
	<-s.done
}

// rawResult is a reply, or why there is none.
type rawResult struct {
	body []byte
	err  error
}

// rawClient calls a rawServer through direct reply-to on one channel,
// matching replies to calls by correlation id.
type rawClient struct {
	conn    *amqp091.Connection
	ch      *amqp091.Channel
	queue   string
	confirm bool
	next    atomic.Uint64

	mu      sync.Mutex
	pending map[string]chan rawResult

	wg sync.WaitGroup // readers of replies and returns
}

func newRawClient(url, queue string, confirm bool) (*rawClient, error) {
	conn, err := amqp091.DialConfig(url, amqp091.Config{Properties: amqp091.Table{"connection_name": "warren-bench raw client"}})
	if err != nil {
		return nil, fmt.Errorf("raw client: dial: %w", err)
	}
	c := &rawClient{conn: conn, queue: queue, confirm: confirm, pending: map[string]chan rawResult{}}
	replies, returns, err := c.setup()
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("raw client: %w", err)
	}
	c.wg.Go(func() {
		for d := range replies {
			c.resolve(d.CorrelationId, rawResult{body: d.Body})
		}
		c.failAll(errors.New("raw client: connection closed"))
	})
	c.wg.Go(func() {
		for r := range returns {
			c.resolve(r.CorrelationId, rawResult{err: fmt.Errorf("raw client: returned: %s", r.ReplyText)})
		}
	})
	return c, nil
}

func (c *rawClient) setup() (<-chan amqp091.Delivery, <-chan amqp091.Return, error) {
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
	// Direct reply-to: consume the pseudo-queue with auto-ack on the
	// channel that publishes the requests.
	replies, err := ch.Consume(directReplyTo, "", true, true, false, false, nil)
	if err != nil {
		return nil, nil, err
	}
	return replies, returns, nil
}

func (c *rawClient) resolve(id string, r rawResult) {
	c.mu.Lock()
	w := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if w != nil {
		w <- r
	}
}

func (c *rawClient) failAll(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, w := range c.pending {
		w <- rawResult{err: err}
		delete(c.pending, id)
	}
}

// call sends body and waits for the reply, and for the publisher confirm
// when the client confirms.
func (c *rawClient) call(ctx context.Context, body []byte) ([]byte, error) {
	id := strconv.FormatUint(c.next.Add(1), 10)
	w := make(chan rawResult, 1)
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
		ReplyTo:       directReplyTo,
		Timestamp:     time.Now(),
		Body:          body,
	}
	if c.confirm {
		dc, err := c.ch.PublishWithDeferredConfirmWithContext(ctx, "", c.queue, true, false, msg)
		if err != nil {
			forget()
			return nil, fmt.Errorf("raw client: publish: %w", err)
		}
		ok, err := dc.WaitContext(ctx)
		if err != nil || !ok {
			forget()
			return nil, fmt.Errorf("raw client: publish not confirmed (ack %v): %v", ok, err)
		}
	} else if err := c.ch.PublishWithContext(ctx, "", c.queue, false, false, msg); err != nil {
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

func (c *rawClient) close() {
	_ = c.conn.Close()
	c.wg.Wait()
}

// startRaw starts a raw server and client on url, closed when tb ends.
func startRaw(tb testing.TB, url string, prefetch int, confirm bool) *rawClient {
	tb.Helper()
	s, err := startRawServer(url, prefetch)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.close)
	c, err := newRawClient(url, s.queue, confirm)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.close)
	return c
}
