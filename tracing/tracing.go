// Package tracing carries OpenTelemetry trace context across Warren's
// messages, in the W3C headers traceparent and tracestate of each request
// and push, and records a span for each hop. It is an option, off unless
// a program wraps its transport:
//
//	tr = tracing.Wrap(tr, otel.GetTracerProvider()) // before agent.New or mapper.New
//
// The program configures the tracer provider (an exporter, a sampler),
// or takes the one the standard OTEL_* environment variables describe
// with FromEnv, as the warren command does.
//
// What the wrapper does:
//
//   - A request or push published (Request, FanOut, Push, a redispatch, a
//     replay) gets a span "send PATH" (kind producer), the child of the
//     span in the publisher's context, or else of the trace context the
//     message already carries (a message sent again keeps its trace), and
//     that span's context goes into the message's traceparent header.
//   - A request or push delivered gets a span "process PATH" (kind
//     consumer), the child of the sender's, from delivery to
//     acknowledgement; the delivery's traceparent is replaced by this
//     span's, so that a handler that continues the trace
//     (ctx = tracing.Extract(ctx, req.Headers)) makes its own calls its
//     children.
//   - A dead letter published gets a span "dead-letter PATH" in the trace
//     of the message that died; its headers keep the trace context, and a
//     replay continues it.
//
// Wrap outside secure mode (tracing.Wrap(secure.Wrap(...))) so that the
// headers are read and written in clear; secure mode signs the headers
// it is given. docs/protocol.md describes the headers.
package tracing

import (
	"context"
	"maps"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Header names: the W3C Trace Context fields, as AMQP headers.
const (
	HeaderTraceParent = "traceparent"
	HeaderTraceState  = "tracestate"
)

// ScopeName is the instrumentation scope of Warren's spans.
const ScopeName = "github.com/warrenrpc/warren/tracing"

var propagator = propagation.TraceContext{}

// carrier adapts message headers to the propagator.
type carrier map[string]any

func (c carrier) Get(key string) string {
	s, _ := c[key].(string)
	return s
}

func (c carrier) Set(key, value string) { c[key] = value }

func (c carrier) Keys() []string {
	var out []string
	for k := range c {
		out = append(out, k)
	}
	return out
}

// Extract returns ctx with the trace context that headers carry (a
// request's, agent.Request.Headers), so that spans started from it, and
// the calls made with it through a wrapped transport, join that trace.
func Extract(ctx context.Context, headers map[string]any) context.Context {
	return propagator.Extract(ctx, carrier(headers))
}

// inject writes the span context of ctx into a copy of headers.
func inject(ctx context.Context, headers map[string]any) map[string]any {
	h := maps.Clone(headers)
	if h == nil {
		h = map[string]any{}
	}
	delete(h, HeaderTraceParent)
	delete(h, HeaderTraceState)
	propagator.Inject(ctx, carrier(h))
	return h
}

type tracingTransport struct {
	transport.Transport
	tracer trace.Tracer
}

// Wrap returns tr recording spans with tp and carrying trace context in
// the messages it publishes and delivers.
func Wrap(tr transport.Transport, tp trace.TracerProvider) transport.Transport {
	return &tracingTransport{Transport: tr, tracer: tp.Tracer(ScopeName)}
}

// WantsRecipient passes on the wrapped transport's (secure mode's) wish.
func (t *tracingTransport) WantsRecipient() bool { return wire.WantsRecipient(t.Transport) }

// NotifyReturn forwards to the wrapped transport (transport.Returner).
func (t *tracingTransport) NotifyReturn(f func(transport.Return)) (stop func(), ok bool) {
	return transport.NotifyReturn(t.Transport, f)
}

func work(typ string) bool { return typ == wire.TypeRequest || typ == wire.TypePush }

func attrs(msg transport.Message, exchange, key string) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String("messaging.system", "rabbitmq"),
		attribute.String("messaging.destination.name", exchange),
		attribute.String("messaging.rabbitmq.destination.routing_key", key),
		attribute.String("messaging.message.id", msg.MessageID),
		attribute.String("messaging.message.conversation_id", msg.CorrelationID),
		attribute.String("warren.path", wire.String(msg.Headers, wire.HeaderPath)),
		attribute.String("warren.type", msg.Type),
		attribute.String("warren.from", msg.AppID),
	}
}

func (t *tracingTransport) Publish(ctx context.Context, exchange, key string, msg transport.Message, opts transport.PublishOptions) error {
	var name string
	switch {
	case exchange == wire.DeadLetterExchange:
		name = "dead-letter "
	case work(msg.Type):
		name = "send "
	default:
		return t.Transport.Publish(ctx, exchange, key, msg, opts)
	}
	parent := ctx
	if !trace.SpanContextFromContext(ctx).IsValid() {
		// A message sent again (a redispatch, a replay, a dead letter)
		// stays in the trace it carries.
		parent = Extract(ctx, msg.Headers)
	}
	sctx, span := t.tracer.Start(parent, name+wire.String(msg.Headers, wire.HeaderPath),
		trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs(msg, exchange, key)...))
	defer span.End()
	msg.Headers = inject(sctx, msg.Headers)
	err := t.Transport.Publish(ctx, exchange, key, msg, opts)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	return err
}

func (t *tracingTransport) Consume(ctx context.Context, queue string, opts transport.ConsumeOptions) (<-chan *transport.Delivery, error) {
	in, err := t.Transport.Consume(ctx, queue, opts)
	if err != nil {
		return nil, err
	}
	out := make(chan *transport.Delivery)
	go func() {
		defer close(out)
		for d := range in {
			select {
			case out <- t.process(d):
			case <-ctx.Done():
				for range in {
				}
				return
			}
		}
	}()
	return out, nil
}

// process starts the consumer span of a delivered request or push; it
// ends when the delivery is settled.
func (t *tracingTransport) process(d *transport.Delivery) *transport.Delivery {
	if !work(d.Type) {
		return d
	}
	parent := Extract(context.Background(), d.Headers)
	sctx, span := t.tracer.Start(parent, "process "+wire.String(d.Headers, wire.HeaderPath),
		trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs(d.Message, d.Exchange, d.RoutingKey)...),
		trace.WithAttributes(attribute.Bool("messaging.rabbitmq.redelivered", d.Redelivered)))
	msg := d.Message
	msg.Headers = inject(sctx, d.Headers)
	var once sync.Once
	nd := transport.NewDelivery(msg, func(ack, requeue bool) error {
		var err error
		if ack {
			err = d.Ack()
		} else {
			err = d.Nack(requeue)
		}
		once.Do(func() {
			switch {
			case !ack && requeue:
				span.SetAttributes(attribute.String("warren.settled", "requeued"))
			case !ack:
				span.SetAttributes(attribute.String("warren.settled", "rejected"))
			}
			span.End()
		})
		return err
	})
	nd.Exchange, nd.RoutingKey, nd.Redelivered, nd.ConsumerTag = d.Exchange, d.RoutingKey, d.Redelivered, d.ConsumerTag
	return nd
}
