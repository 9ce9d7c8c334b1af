package mapper_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

func TestErrorCode(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("mapper: request /a/b: %w", err) }
	for err, want := range map[error]string{
		nil: "",
		wrap(&wire.RemoteError{Code: wire.CodeHandler, Message: "boom"}): "handler_error",
		wrap(mapper.ErrNoAgent): "no_agent",
		wrap(fmt.Errorf("%w: %w", mapper.ErrTimeout, context.DeadlineExceeded)): "timeout",
		wrap(context.DeadlineExceeded):                                          "timeout",
		wrap(context.Canceled):                                                  "canceled",
		wrap(mapper.ErrTooLarge):                                                "too_large",
		wrap(mapper.ErrFanOutLimit):                                             "fan_out_limit",
		wrap(transport.ErrUnroutable):                                           "unroutable",
		// A connection lost while the deadline also passed is named by the
		// loss: the deadline did not cause it.
		wrap(fmt.Errorf("%w: %w", transport.ErrConnectionLost, context.DeadlineExceeded)): "connection_lost",
		wrap(transport.ErrNacked):    "nacked",
		errors.New("something else"): "error",
	} {
		if got := mapper.ErrorCode(err); got != want {
			t.Errorf("ErrorCode(%v) = %q, want %q", err, got, want)
		}
	}
}
