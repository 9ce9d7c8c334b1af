package tracing

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// FromEnv returns the tracer provider that the standard OpenTelemetry
// environment variables describe, or nil when they turn tracing off,
// which is the default. Tracing is on when
//
//   - OTEL_TRACES_EXPORTER is "otlp" or "console" (or both, separated by a
//     comma), or
//   - OTEL_TRACES_EXPORTER is unset and OTEL_EXPORTER_OTLP_ENDPOINT or
//     OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (then "otlp"),
//
// unless OTEL_SDK_DISABLED is true or OTEL_TRACES_EXPORTER is "none".
// "otlp" sends OTLP over HTTP (OTEL_EXPORTER_OTLP_PROTOCOL "http/protobuf",
// the default, or "http/json"; "grpc" is refused, to keep gRPC out of
// Warren) to OTEL_EXPORTER_OTLP_ENDPOINT, with the exporter's other
// OTEL_EXPORTER_OTLP_* variables (headers, timeout, compression, TLS);
// "console" writes each span as a JSON line to console. The service name
// is OTEL_SERVICE_NAME, else service; OTEL_RESOURCE_ATTRIBUTES,
// OTEL_TRACES_SAMPLER(_ARG) and OTEL_BSP_* work as the SDK defines them.
//
// The caller shuts the provider down before it exits, which sends the
// spans still buffered.
func FromEnv(ctx context.Context, service string, console io.Writer) (*sdktrace.TracerProvider, error) {
	if off, _ := strconv.ParseBool(os.Getenv("OTEL_SDK_DISABLED")); off {
		return nil, nil
	}
	names := os.Getenv("OTEL_TRACES_EXPORTER")
	if strings.TrimSpace(names) == "" {
		if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
			return nil, nil
		}
		names = "otlp"
	}
	var opts []sdktrace.TracerProviderOption
	for _, name := range strings.Split(names, ",") {
		switch name = strings.TrimSpace(name); name {
		case "none":
			return nil, nil
		case "otlp":
			proto := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
			if proto == "" {
				proto = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
			}
			switch proto {
			case "", "http/protobuf", "http/json":
			default:
				return nil, fmt.Errorf("tracing: OTEL_EXPORTER_OTLP_PROTOCOL %q: Warren sends OTLP over HTTP only (http/protobuf or http/json)", proto)
			}
			exp, err := otlptracehttp.New(ctx)
			if err != nil {
				return nil, fmt.Errorf("tracing: otlp exporter: %w", err)
			}
			opts = append(opts, sdktrace.WithBatcher(exp))
		case "console":
			if console == nil {
				console = os.Stderr
			}
			exp, err := stdouttrace.New(stdouttrace.WithWriter(console))
			if err != nil {
				return nil, fmt.Errorf("tracing: console exporter: %w", err)
			}
			opts = append(opts, sdktrace.WithSyncer(exp))
		default:
			return nil, fmt.Errorf("tracing: OTEL_TRACES_EXPORTER %q: want otlp, console or none", name)
		}
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", service)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
		resource.WithTelemetrySDK(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("tracing: OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	return sdktrace.NewTracerProvider(append(opts, sdktrace.WithResource(res))...), nil
}
