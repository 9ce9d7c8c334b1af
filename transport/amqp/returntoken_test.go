package amqp_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
)

// TestCallerReturnTokenIgnored: a caller's (or a relayed message's)
// x-warren-return-token header cannot make a returned mandatory publish
// look routed.
func TestCallerReturnTokenIgnored(t *testing.T) {
	tr := dial(t, amqp.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg := transport.Message{Body: []byte("x"), MessageID: "return-token-test",
		Headers: map[string]any{"x-warren-return-token": int64(424242)}}
	err := tr.Publish(ctx, "", "no-such-queue-return-token", msg, transport.PublishOptions{Mandatory: true})
	if !errors.Is(err, transport.ErrUnroutable) {
		t.Fatalf("mandatory unroutable publish: got %v, want ErrUnroutable", err)
	}
}
