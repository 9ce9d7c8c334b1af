// Package mem is an embedded, in-process AMQP 0-9-1 broker that implements
// [transport.Transport] with RabbitMQ 3.10's semantics.
package mem
