package tracing_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/warrenrpc/warren/tracing"
)

func TestFromEnv(t *testing.T) {
	for _, v := range []string{"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME"} {
		t.Setenv(v, "")
	}
	ctx := context.Background()
	if tp, err := tracing.FromEnv(ctx, "warren-test", nil); tp != nil || err != nil {
		t.Fatalf("default: %v %v, want off", tp, err)
	}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	tp, err := tracing.FromEnv(ctx, "warren-test", nil)
	if tp == nil || err != nil {
		t.Fatalf("endpoint set: %v %v, want otlp", tp, err)
	}
	tp.Shutdown(ctx)
	t.Setenv("OTEL_TRACES_EXPORTER", "none")
	if tp, err := tracing.FromEnv(ctx, "warren-test", nil); tp != nil || err != nil {
		t.Fatalf("none: %v %v", tp, err)
	}
	t.Setenv("OTEL_TRACES_EXPORTER", "zipkin")
	if _, err := tracing.FromEnv(ctx, "warren-test", nil); err == nil || !strings.Contains(err.Error(), `"zipkin"`) {
		t.Errorf("zipkin: %v", err)
	}
	t.Setenv("OTEL_TRACES_EXPORTER", "otlp")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	if _, err := tracing.FromEnv(ctx, "warren-test", nil); err == nil || !strings.Contains(err.Error(), "HTTP only") {
		t.Errorf("grpc: %v", err)
	}
	t.Setenv("OTEL_TRACES_EXPORTER", "console")
	t.Setenv("OTEL_SERVICE_NAME", "named")
	var out bytes.Buffer
	tp, err = tracing.FromEnv(ctx, "warren-test", &out)
	if err != nil {
		t.Fatal(err)
	}
	_, span := tp.Tracer("t").Start(ctx, "hello")
	span.End()
	tp.Shutdown(ctx)
	if !strings.Contains(out.String(), `"Name":"hello"`) || !strings.Contains(out.String(), `"named"`) {
		t.Errorf("console: %s", out.String())
	}
	t.Setenv("OTEL_SDK_DISABLED", "true")
	if tp, err := tracing.FromEnv(ctx, "warren-test", nil); tp != nil || err != nil {
		t.Fatalf("disabled: %v %v", tp, err)
	}
}
