package amqp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

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
		case codeAccessRefused:
			if permissionRefused(ae) {
				return fmt.Errorf("amqp: %s %q: %w (%s)", op, name, transport.ErrAccessRefused, ae.Reason)
			}
			// The default exchange, the reserved amq. prefix, or a queue
			// in exclusive use by a consumer.
			return fmt.Errorf("amqp: %s %q: %w (%s)", op, name, transport.ErrPrecondition, ae.Reason)
		case codePreconditionFailed, codeResourceLocked:
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

// permissionRefused reports whether a 403 ACCESS_REFUSED is about the
// user's permissions ("ACCESS_REFUSED - configure access to queue 'q' in
// vhost '/' refused for user 'u'", "... user_id property set to 'x' but
// authenticated user was 'u'") rather than the reserved names or a queue in
// exclusive use, which RabbitMQ reports with the same code.
func permissionRefused(ae *amqp091.Error) bool {
	return strings.Contains(ae.Reason, "refused for user") || strings.Contains(ae.Reason, "authenticated user")
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

// Is makes a broker's refusal of the user (403 ACCESS_REFUSED: bad user
// name or password; 530 NOT_ALLOWED naming the user: no access to the
// vhost) match transport.ErrAccessRefused.
func (e *DialError) Is(target error) bool {
	if target != transport.ErrAccessRefused {
		return false
	}
	var ae *amqp091.Error
	return errors.As(e.Err, &ae) && (ae.Code == codeAccessRefused || ae.Code == amqp091.NotAllowed && strings.Contains(ae.Reason, "refused for user"))
}

// shortReason reduces dial errors to what a person needs: "connection
// refused" rather than "dial tcp 127.0.0.1:5672: connect: connection refused".
func shortReason(err error) string {
	var cut *cutShortError
	if errors.As(err, &cut) {
		return cut.Error()
	}
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
// last '@' is taken for the user information. A list of URLs (SplitURLs)
// is redacted URL by URL.
func RedactURL(raw string) string {
	if urls := SplitURLs(raw); len(urls) > 1 {
		for i, u := range urls {
			urls[i] = redactOne(u)
		}
		return strings.Join(urls, ",")
	}
	return redactOne(raw)
}

func redactOne(raw string) string {
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

// SplitURLs splits a list of broker URLs separated by commas, as Dial and
// the command line take them for the nodes of a cluster:
// "amqp://u:p@node1:5672/,amqp://u:p@node2:5672/". A comma counts as a
// separator only before "amqp://" or "amqps://", so a comma inside a
// password does not split it. Spaces around each URL are dropped; a string
// without a separator is one URL.
func SplitURLs(s string) []string {
	var out []string
	rest := s
	for {
		i := nextSeparator(rest)
		if i < 0 {
			out = append(out, strings.TrimSpace(rest))
			return out
		}
		out = append(out, strings.TrimSpace(rest[:i]))
		rest = rest[i+1:]
	}
}

// nextSeparator is the index of the first comma in s followed (after
// spaces) by an AMQP scheme, or -1.
func nextSeparator(s string) int {
	for i := 0; i < len(s); i++ {
		if s[i] != ',' {
			continue
		}
		next := strings.TrimLeft(s[i+1:], " ")
		if strings.HasPrefix(next, "amqp://") || strings.HasPrefix(next, "amqps://") {
			return i
		}
	}
	return -1
}

// BlockedError is why a publish did not go through while the broker blocked
// the publishing connection (connection.blocked: a memory or disk alarm).
// Publish returns it wrapped with the context's error when ctx ends while
// the publish waits for the broker to unblock, or for the confirm of a
// publish the broker stopped reading; [Transport.Blocked] returns it while
// the connection is blocked.
type BlockedError struct {
	// Reason is the broker's, as sent in connection.blocked: RabbitMQ says
	// "low on memory" or "low on disk".
	Reason string
}

func (e *BlockedError) Error() string {
	msg := "the broker is blocking publishes"
	if e.Reason != "" {
		msg += " (" + e.Reason + ")"
	}
	switch r := strings.ToLower(e.Reason); {
	case strings.Contains(r, "memory") && strings.Contains(r, "disk"):
		msg += ": a memory and a disk alarm are raised"
	case strings.Contains(r, "memory"):
		msg += ": a memory alarm is raised"
	case strings.Contains(r, "disk"):
		msg += ": a disk alarm is raised"
	default:
		msg += ": a resource alarm is raised"
	}
	return msg + "; nothing can be published until it clears (rabbitmqctl status shows the alarms)"
}

// dialCut is the error of a dial that failed: when ctx ended first, it is
// ctx's error and where the dial was cut short, instead of what amqp091
// made of its socket closing under it (during the handshake it guesses
// "username or password not allowed" or "no access to this vhost").
// connected says whether the TCP connection was made.
func dialCut(ctx context.Context, connected bool, err error) error {
	ctxErr := ctx.Err()
	if ctxErr == nil {
		// The socket's deadline, which is ctx's, can fire before ctx's
		// own timer has run (amqp091 does not always keep the socket's
		// error in its chain).
		if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
			ctxErr = context.DeadlineExceeded
		}
	}
	if ctxErr == nil {
		return err
	}
	var ae *amqp091.Error
	if errors.As(err, &ae) && ae.Server {
		// The broker's own answer stands.
		return err
	}
	stage := "the TCP connection"
	if connected {
		stage = "the AMQP handshake"
	}
	return &cutShortError{stage: stage, err: ctxErr}
}

// cutShortError is a dial that ctx ended during stage.
type cutShortError struct {
	stage string
	err   error // ctx's error
}

func (e *cutShortError) Error() string { return "gave up during " + e.stage + ": " + e.err.Error() }
func (e *cutShortError) Unwrap() error { return e.err }
