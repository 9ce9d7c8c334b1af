package mapper

import (
	"context"
	"errors"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// ErrorCode names the failure of a call (Request, Push, a fan-out leg) by
// a short code, for counts, metrics and JSON output: the agent's code for a
// *wire.RemoteError (handler_error, bad_request, declined, ...; docs/protocol.md),
// else one of the mapper's own:
//
//	no_agent         ErrNoAgent
//	timeout          ErrTimeout, or the context's deadline passed
//	canceled         the context was cancelled
//	too_large        ErrTooLarge
//	fan_out_limit    ErrFanOutLimit
//	unroutable       the agent's queue is gone (transport.ErrUnroutable)
//	connection_lost  transport.ErrConnectionLost
//	nacked           the broker refused the message (transport.ErrNacked)
//	error            anything else
//
// nil has no code: ErrorCode(nil) is "".
func ErrorCode(err error) string {
	var re *wire.RemoteError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &re):
		return re.Code
	case errors.Is(err, ErrNoAgent):
		return "no_agent"
	case errors.Is(err, ErrTooLarge):
		return "too_large"
	case errors.Is(err, ErrFanOutLimit):
		return "fan_out_limit"
	case errors.Is(err, transport.ErrUnroutable):
		return "unroutable"
	case errors.Is(err, transport.ErrConnectionLost):
		return "connection_lost"
	case errors.Is(err, transport.ErrNacked):
		return "nacked"
	case errors.Is(err, ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "error"
}
