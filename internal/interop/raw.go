// Package interop is a Warren client and a Warren agent written from
// docs/protocol.md with nothing but amqp091-go and the standard library: no
// Warren package is imported. Its tests run them against real Warren agents
// and mappers, so the protocol page is checked by a program that only read
// the page.
package interop

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Reply is a decoded Warren reply.
type Reply struct {
	Status, Code, Message, Agent string
	Body                         []byte
}

func id() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func str(t amqp.Table, k string) string {
	s, _ := t[k].(string)
	return s
}

// Call sends a request for path with a JSON body through exchange and
// routing key (warren.service + path, or warren.request + identity), using
// RabbitMQ's direct reply-to, and waits for the reply.
func Call(ctx context.Context, url, exchange, key, path string, body []byte) (*Reply, error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	replies, err := ch.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
	if err != nil {
		return nil, err
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	corr := id()
	headers := amqp.Table{"warren-path": path}
	var exp string
	if dl, ok := ctx.Deadline(); ok {
		headers["warren-deadline"] = dl.UnixMilli()
		exp = fmt.Sprint(max(time.Until(dl).Milliseconds(), 1))
	}
	err = ch.PublishWithContext(ctx, exchange, key, true, false, amqp.Publishing{
		ContentType: "application/json", Type: "warren.request", MessageId: corr, CorrelationId: corr,
		ReplyTo: "amq.rabbitmq.reply-to", Headers: headers, Body: body, Timestamp: time.Now(), AppId: "interop-client", Expiration: exp,
	})
	if err != nil {
		return nil, err
	}
	for {
		select {
		case r := <-returns:
			return nil, fmt.Errorf("unroutable: %s %s", r.ReplyText, r.RoutingKey)
		case d, ok := <-replies:
			if !ok {
				return nil, errors.New("reply channel closed")
			}
			if d.CorrelationId != corr {
				continue
			}
			status := str(d.Headers, "warren-status")
			if status == "" {
				status = "ok" // a success carries no headers
			}
			return &Reply{
				Status: status, Code: str(d.Headers, "warren-error-code"),
				Message: str(d.Headers, "warren-error"), Agent: d.AppId, Body: d.Body,
			}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Handler serves one path of the raw agent: JSON in, JSON out.
type Handler func(body []byte) ([]byte, error)

// RunAgent is a Warren agent: it declares its queue, registers, pings every
// interval and on announce, serves handlers, and unregisters when ctx ends.
// ready is closed once it has registered.
func RunAgent(ctx context.Context, url, identity string, interval time.Duration, handlers map[string]Handler, ready chan<- struct{}) error {
	conn, err := amqp.Dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	for _, ex := range []struct{ name, kind string }{
		{"warren.request", "direct"}, {"warren.heartbeat", "fanout"}, {"warren.control", "fanout"},
	} {
		if err := ch.ExchangeDeclare(ex.name, ex.kind, true, false, false, false, nil); err != nil {
			return err
		}
	}
	q := "warren.agent." + identity
	if _, err := ch.QueueDeclare(q, false, false, false, false, amqp.Table{
		"x-expires": int32(600000), "x-dead-letter-exchange": "warren.dlx",
	}); err != nil {
		return err
	}
	if err := ch.QueueBind(q, identity, "warren.request", false, nil); err != nil {
		return err
	}
	cq, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		return err
	}
	if err := ch.QueueBind(cq.Name, "", "warren.control", false, nil); err != nil {
		return err
	}
	control, err := ch.Consume(cq.Name, "", true, true, false, false, nil)
	if err != nil {
		return err
	}
	if err := ch.Qos(8, 0, false); err != nil {
		return err
	}
	work, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		return err
	}
	var paths []string
	for p := range handlers {
		paths = append(paths, p)
	}
	beat := func(typ string) error {
		body, _ := json.Marshal(map[string]any{
			"identity": identity, "queue": q, "services": paths, "status": 0.01,
			"ping_interval_ms": interval.Milliseconds(), "tags": []string{"raw"},
		})
		return ch.PublishWithContext(context.WithoutCancel(ctx), "warren.heartbeat", "", false, false, amqp.Publishing{
			ContentType: "application/json", Type: typ, Body: body, AppId: identity,
			Headers: amqp.Table{"warren-version": int32(2)},
		})
	}
	if err := beat("warren.register"); err != nil {
		return err
	}
	close(ready)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return beat("warren.unregister")
		case <-tick.C:
			if err := beat("warren.ping"); err != nil {
				return err
			}
		case d := <-control:
			if d.Type == "warren.announce" {
				if err := beat("warren.ping"); err != nil {
					return err
				}
			}
		case d, ok := <-work:
			if !ok {
				return errors.New("work queue closed")
			}
			path := str(d.Headers, "warren-path")
			var headers amqp.Table // none on a success
			var out []byte
			if h, ok := handlers[path]; !ok {
				headers = amqp.Table{"warren-status": "error", "warren-error-code": "no_such_service", "warren-error": "raw agent does not serve " + path, "warren-path": path}
			} else if res, err := h(d.Body); err != nil {
				headers = amqp.Table{"warren-status": "error", "warren-error-code": "handler_error", "warren-error": err.Error(), "warren-path": path}
			} else {
				out = res
			}
			if d.ReplyTo != "" {
				corr := d.CorrelationId
				if corr == "" {
					corr = d.MessageId
				}
				if err := ch.PublishWithContext(ctx, "", d.ReplyTo, false, false, amqp.Publishing{
					ContentType: "application/json", Type: "warren.reply", CorrelationId: corr, Headers: headers, Body: out, AppId: identity,
				}); err != nil {
					return err
				}
			}
			if err := d.Ack(false); err != nil {
				return err
			}
		}
	}
}
