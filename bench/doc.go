// Package bench holds Warren's end-to-end benchmarks; it has no API.
//
// BenchmarkRoundTrip measures a request's round trip (mapper → agent → reply)
// on the embedded broker and on RabbitMQ, beside a plain amqp091-go direct
// reply-to client and server in the same run, with 1 and 64 requests in
// flight. docs/benchmarks.md has the figures and the command that produced
// them. TestRoundTripSmoke runs one round trip of each kind, so that
// `go test ./bench` checks the benchmark's fixtures without running it.
//
// bench/peers, a Go module of its own so that what it compares Warren with
// never becomes a dependency of Warren's module, runs the embedded broker's
// round trip beside NATS micro in the same process.
package bench
