package amqp_test

import (
	"context"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/transport/transporttest"
)

func factory(url string) transporttest.Factory {
	return func(t *testing.T) transport.Transport {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		tr, err := amqp.Dial(ctx, url, amqp.Config{ConnectionName: "warren-conformance"}, amqp.WithLogger(testenv.Logger(t)))
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
}

// TestConformance runs the transport suite against RabbitMQ, without the
// scenarios that restart the broker (see TestDisruptiveConformance).
func TestConformance(t *testing.T) {
	transporttest.Run(t, factory(testenv.AMQPURL(t)), transporttest.Harness{})
}

// TestDisruptiveConformance runs the whole suite, restarting the RabbitMQ
// application of the local node (rabbitmqctl stop_app, start_app) where a
// scenario asks: that drops every connection to the broker, so it runs only
// alone (scripts/test's second pass).
func TestDisruptiveConformance(t *testing.T) {
	testenv.RequireDisruptive(t)
	url := testenv.AMQPURL(t)
	restart := func(t *testing.T) {
		testenv.RestartRabbitMQ(t)
		// await_startup returns once the node has booted; wait until it
		// takes connections again.
		testenv.WaitFor(t, 60*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			tr, err := amqp.Dial(ctx, url, amqp.Config{})
			if err != nil {
				return err
			}
			return tr.Close()
		})
	}
	transporttest.Run(t, factory(url), transporttest.Harness{Restart: restart})
}
