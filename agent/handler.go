package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/warrenrpc/warren/wire"
)

// Request is one request or push as a handler sees it.
type Request struct {
	Path        string
	Payload     json.RawMessage // the body, JSON
	ContentType string
	From        string // identity of the sender, when it said
	MessageID   string
	Redelivered bool      // the broker delivered it before
	Deadline    time.Time // zero when the caller set none
	Headers     map[string]any
	// Push is true when no reply is expected.
	Push bool
	// Stream reads the data of a streamed request (mapper.Stream), whole
	// and checked, of StreamSize bytes; nil for any other request. It is
	// valid until the handler returns. Payload is then the JSON the
	// caller sent with it (a file name, say).
	Stream     io.Reader
	StreamSize int64
}

// Decode unmarshals the payload into v. A payload that does not decode is
// the caller's fault: the error wraps ErrBadRequest and the caller gets
// code bad_request.
func (r *Request) Decode(v any) error {
	if r.ContentType != "" && r.ContentType != wire.ContentJSON {
		return fmt.Errorf("%w: content type %q, want %s", ErrBadRequest, r.ContentType, wire.ContentJSON)
	}
	if len(r.Payload) == 0 {
		return fmt.Errorf("%w: empty body", ErrBadRequest)
	}
	if err := json.Unmarshal(r.Payload, v); err != nil {
		return fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	return nil
}

// Handler serves one service path. Its result is marshalled as JSON (a
// json.RawMessage is sent as is). The ctx carries the request's deadline and
// is cancelled when the agent stops before the handler finished.
type Handler interface {
	Serve(ctx context.Context, req *Request) (any, error)
}

// HandlerFunc adapts a function to a Handler.
type HandlerFunc func(ctx context.Context, req *Request) (any, error)

// Serve calls f.
func (f HandlerFunc) Serve(ctx context.Context, req *Request) (any, error) { return f(ctx, req) }

// Func adapts a typed function to a Handler: the payload is decoded into In,
// and the Out returned is the result.
func Func[In, Out any](f func(ctx context.Context, in In) (Out, error)) Handler {
	return HandlerFunc(func(ctx context.Context, req *Request) (any, error) {
		var in In
		if err := req.Decode(&in); err != nil {
			return nil, err
		}
		return f(ctx, in)
	})
}

// ErrBadRequest marks a request that could not be understood; the caller
// receives code bad_request.
var ErrBadRequest = errors.New("bad request")

// Error is a handler error with a code of the handler's choosing, sent to
// the caller in the warren-error-code header. Any other error is sent with
// code handler_error.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// codeOf picks the wire error code for a handler error.
func codeOf(err error) string {
	var e *Error
	switch {
	case errors.As(err, &e) && e.Code != "":
		return e.Code
	case errors.Is(err, ErrBadRequest):
		return wire.CodeBadRequest
	case errors.Is(err, context.DeadlineExceeded):
		return wire.CodeExpired
	}
	return wire.CodeHandler
}

func messageOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}
