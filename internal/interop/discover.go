package interop

import (
	"context"
	"encoding/json"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Discover asks the fabric verb ("PING", "INFO" or "STATS") the way
// docs/protocol.md says, for the service name and agent id given ("" for
// any), through RabbitMQ's direct reply-to, and returns the JSON answers
// that came within wait, decoded as plain maps: the schema is NATS
// micro's, and the test reads it by NATS micro's field names.
func Discover(ctx context.Context, url, verb, name, agentID string, wait time.Duration) ([]map[string]any, error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	answers, err := ch.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
	if err != nil {
		return nil, err
	}
	headers := amqp.Table{}
	if name != "" {
		headers["warren-service-name"] = name
	}
	if agentID != "" {
		headers["warren-service-id"] = agentID
	}
	corr := id()
	err = ch.PublishWithContext(ctx, "warren.control", "$SRV."+verb, false, false, amqp.Publishing{
		Type:          "warren.discover",
		ReplyTo:       "amq.rabbitmq.reply-to",
		CorrelationId: corr,
		AppId:         "interop-" + corr,
		Headers:       headers,
	})
	if err != nil {
		return nil, err
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	var out []map[string]any
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			return out, nil
		case d, ok := <-answers:
			if !ok {
				return nil, amqp.ErrClosed
			}
			if d.Type != "warren.discover.reply" || d.CorrelationId != corr || d.ContentType != "application/json" {
				continue
			}
			var m map[string]any
			if err := json.Unmarshal(d.Body, &m); err != nil {
				return nil, err
			}
			out = append(out, m)
		}
	}
}
