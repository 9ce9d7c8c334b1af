// Package fabrictest runs fabric tests on every transport: the embedded
// broker and RabbitMQ (skipped without WARREN_AMQP_URL, failed without it
// under CI).
package fabrictest

import (
	"crypto/rand"
	"encoding/hex"
	"testing"

	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/transport/mem"
)

// Connect returns a new connection to the test's broker, closed at the end
// of the test.
type Connect func(t *testing.T) transport.Transport

// Each runs f as the subtests "mem" and "rabbitmq".
func Each(t *testing.T, f func(t *testing.T, connect Connect)) {
	t.Run("mem", func(t *testing.T) {
		b := mem.NewBroker()
		f(t, func(t *testing.T) transport.Transport {
			tr := b.Connect()
			t.Cleanup(func() { tr.Close() })
			return tr
		})
	})
	t.Run("rabbitmq", func(t *testing.T) {
		url := testenv.AMQPURL(t)
		f(t, func(t *testing.T) transport.Transport {
			tr, err := amqp.Dial(t.Context(), url, amqp.Config{}, amqp.WithLogger(testenv.Logger(t)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tr.Close() })
			return tr
		})
	})
}

// Actor returns a unique actor name, so that tests sharing a RabbitMQ do not
// see each other's services.
func Actor() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "t" + hex.EncodeToString(b[:])
}
