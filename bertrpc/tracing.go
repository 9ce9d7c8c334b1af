package bertrpc

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// TracerScope is the instrumentation scope of the server's spans.
const TracerScope = "github.com/warrenrpc/warren/bertrpc"

// WithTracerProvider records a span for each call and cast of a fabric
// module, with tp: "bert call MODULE:FUNCTION" (kind server), from the
// moment the request was read to its answer. The fabric request is made
// in the span's context, so a Fabric whose mapper runs on a transport
// wrapped by package tracing sends it as the span's child, and one trace
// covers the BERT-RPC call and the fabric hop. The default records
// nothing.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tracer = tp.Tracer(TracerScope) }
}

// startFabricSpan starts the span of a fabric call read at req.read.
func startFabricSpan(ctx context.Context, t trace.Tracer, req *request, selector string) (context.Context, trace.Span) {
	if t == nil {
		t = noop.Tracer{}
	}
	kind := "call"
	if req.cast {
		kind = "cast"
	}
	return t.Start(ctx, "bert "+kind+" "+req.module+":"+req.function,
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithTimestamp(req.read),
		trace.WithAttributes(
			attribute.String("rpc.system", "bert"),
			attribute.String("rpc.service", req.module),
			attribute.String("rpc.method", req.function),
			attribute.Bool("bert.cast", req.cast),
			attribute.String("warren.path", "/"+req.module+"/"+req.function),
			attribute.String("warren.selector", selector),
		))
}

// endFabricSpan ends span with the call's outcome.
func endFabricSpan(span trace.Span, e *Error) {
	if e != nil {
		span.SetAttributes(attribute.String("bert.error.type", string(e.Type)), attribute.String("bert.error.class", e.Class))
		span.SetStatus(codes.Error, e.Class+": "+e.Detail)
	}
	span.End()
}
