package amqp

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenrpc/warren/transport"
)

// AMQP reply codes that Warren maps to transport errors.
const (
	codeAccessRefused      = 403
	codeNotFound           = 404
	codeResourceLocked     = 405
	codePreconditionFailed = 406
)

// brokerError converts an error from an operation on a named entity to one
// that wraps the matching transport sentinel. lost reports whether the
// connection the operation used is gone; closed whether the transport was
// closed.
func brokerError(op, name string, err error, closed, lost bool) error {
	if err == nil {
		return nil
	}
	var ae *amqp091.Error
	if errors.As(err, &ae) && ae.Server {
		switch ae.Code {
		case codeNotFound:
			return fmt.Errorf("amqp: %s %q: %w (%s)", op, name, transport.ErrNotFound, ae.Reason)
		case codePreconditionFailed, codeResourceLocked, codeAccessRefused:
			// 403 is the default exchange, the reserved amq. prefix, or a
			// queue in exclusive use by a consumer.
			return fmt.Errorf("amqp: %s %q: %w (%s)", op, name, transport.ErrPrecondition, ae.Reason)
		}
	}
	switch {
	case closed:
		return fmt.Errorf("amqp: %s %q: %w", op, name, transport.ErrClosed)
	case lost || errors.Is(err, amqp091.ErrClosed) || brokenSocket(err):
		return fmt.Errorf("amqp: %s %q: %w (%v)", op, name, transport.ErrConnectionLost, err)
	}
	if ae != nil {
		return fmt.Errorf("amqp: %s %q: %s (code %d)", op, name, ae.Reason, ae.Code)
	}
	return fmt.Errorf("amqp: %s %q: %w", op, name, err)
}

// brokenSocket reports whether err is the connection's socket failing (a
// write to a reset connection), which amqp091 returns before it has
// noticed that the connection is gone.
func brokenSocket(err error) bool {
	var opErr *net.OpError
	return errors.As(err, &opErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}

// DialError is returned by Dial when the broker cannot be reached or refuses
// the connection. Its message names the URL without the password.
type DialError struct {
	URL string // the broker URL, password removed
	Err error
}

func (e *DialError) Error() string {
	return "amqp: cannot connect to " + e.URL + ": " + shortReason(e.Err)
}

func (e *DialError) Unwrap() error { return e.Err }

// shortReason reduces dial errors to what a person needs: "connection
// refused" rather than "dial tcp 127.0.0.1:5672: connect: connection refused".
func shortReason(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return dnsErr.Error()
	}
	var ae *amqp091.Error
	if errors.As(err, &ae) {
		return ae.Reason
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Err != nil {
		return opErr.Err.Error()
	}
	return err.Error()
}

// errBadURL replaces the URL parser's error, which may quote the password.
var errBadURL = errors.New("not a valid amqp:// or amqps:// URL (percent-encode any ':', '/', '?', '#' or '@' in the user name or password)")

// RedactURL returns raw with its password, if any, replaced by "xxxxx". It
// works on the text alone, without parsing: a password holding an
// unescaped '#', '/', '?' or '@' makes URL parsers misread where it ends
// (amqp://guest:9999/secret@host parses as host "guest", port 9999), and
// what they misread must not show either. Everything between "://" and the
// last '@' is taken for the user information.
func RedactURL(raw string) string {
	start := 0
	if i := strings.Index(raw, "://"); i >= 0 {
		start = i + 3
	}
	at := strings.LastIndex(raw[start:], "@")
	if at < 0 {
		return raw
	}
	user := raw[start : start+at]
	c := strings.Index(user, ":")
	if c < 0 {
		return raw
	}
	return raw[:start] + user[:c] + ":xxxxx" + raw[start+at:]
}
