package amqp

import (
	"errors"
	"strings"
	"syscall"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenrpc/warren/transport"
)

func TestBrokerError(t *testing.T) {
	server := func(code int, reason string) error {
		return &amqp091.Error{Code: code, Reason: reason, Server: true}
	}
	tests := []struct {
		name         string
		err          error
		closed, lost bool
		want         error
		wantText     string
	}{
		{"404", server(404, "NOT_FOUND - no queue 'q'"), false, false, transport.ErrNotFound, `amqp: op "q": transport: not found (NOT_FOUND - no queue 'q')`},
		{"406", server(406, "PRECONDITION_FAILED"), false, false, transport.ErrPrecondition, ""},
		{"405", server(405, "RESOURCE_LOCKED"), false, false, transport.ErrPrecondition, ""},
		{"403 exclusive use", server(403, "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use"), false, false, transport.ErrPrecondition, ""},
		{"403 reserved name", server(403, "ACCESS_REFUSED - queue name 'amq.q' contains reserved prefix 'amq.*'"), false, false, transport.ErrPrecondition, ""},
		{"403 permission", server(403, "ACCESS_REFUSED - configure access to queue 'q' in vhost '/' refused for user 'mapper'"), false, false, transport.ErrAccessRefused,
			`amqp: op "q": transport: access refused (ACCESS_REFUSED - configure access to queue 'q' in vhost '/' refused for user 'mapper')`},
		{"403 user_id", server(403, "ACCESS_REFUSED - user_id property set to 'fred' but authenticated user was 'bob'"), false, false, transport.ErrAccessRefused, ""},
		{"closed wins over lost", amqp091.ErrClosed, true, true, transport.ErrClosed, ""},
		{"lost", &amqp091.Error{Code: 320, Reason: "CONNECTION_FORCED"}, false, true, transport.ErrConnectionLost, ""},
		{"closed channel", amqp091.ErrClosed, false, false, transport.ErrConnectionLost, ""},
		{"other server error", server(530, "NOT_ALLOWED"), false, false, nil, `amqp: op "q": NOT_ALLOWED (code 530)`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := brokerError("op", "q", tc.err, tc.closed, tc.lost)
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want one wrapping %v", err, tc.want)
			}
			if tc.want == transport.ErrAccessRefused && errors.Is(err, transport.ErrPrecondition) {
				t.Fatalf("err = %v: a refused permission is not a precondition", err)
			}
			if tc.wantText != "" && err.Error() != tc.wantText {
				t.Fatalf("err = %q, want %q", err, tc.wantText)
			}
			if !strings.HasPrefix(err.Error(), `amqp: op "q": `) {
				t.Fatalf("err %q does not name the operation and entity", err)
			}
		})
	}
	if brokerError("op", "q", nil, false, false) != nil {
		t.Fatal("nil error mapped to non-nil")
	}
}

func TestDialErrorAccessRefused(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{amqp091.ErrCredentials, true},
		{&amqp091.Error{Code: 530, Reason: "NOT_ALLOWED - access to vhost '/x' refused for user 'u'", Server: true}, true},
		{&amqp091.Error{Code: 530, Reason: "NOT_ALLOWED - vhost /x not found", Server: true}, false},
		{syscall.ECONNREFUSED, false},
	} {
		if got := errors.Is(&DialError{URL: "amqp://u@h/", Err: c.err}, transport.ErrAccessRefused); got != c.want {
			t.Errorf("%v: errors.Is ErrAccessRefused = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestDialErrorUnwraps(t *testing.T) {
	err := error(&DialError{URL: "amqp://u@h/", Err: syscall.ECONNREFUSED})
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatal("DialError does not unwrap")
	}
	var de *DialError
	if !errors.As(err, &de) || de.URL != "amqp://u@h/" {
		t.Fatal("errors.As failed")
	}
	if got := err.Error(); got != "amqp: cannot connect to amqp://u@h/: connection refused" {
		t.Fatalf("Error() = %q", got)
	}
}

// TestRefusedFor: a 403 that closes a publish channel is this publish's
// refusal only when it names its exchange (and, for a topic permission,
// its key); otherwise another publish of the channel caused it.
func TestRefusedFor(t *testing.T) {
	for _, tc := range []struct {
		reason, exchange, key string
		want                  bool
	}{
		{"ACCESS_REFUSED - write access to exchange 'warren.request' in vhost '/a' refused for user 'fred'", "warren.request", "bob", true},
		{"ACCESS_REFUSED - write access to exchange 'warren.request' in vhost '/a' refused for user 'fred'", "warren.service", "bob", false},
		{"ACCESS_REFUSED - write access to exchange 'amq.default' in vhost '/a' refused for user 'm'", "", "q", true},
		{"ACCESS_REFUSED - access to topic 'billing.paid' in exchange 'warren.events' in vhost '/a' refused for user 'fred'", "warren.events", "billing.paid", true},
		{"ACCESS_REFUSED - access to topic 'billing.paid' in exchange 'warren.events' in vhost '/a' refused for user 'fred'", "warren.events", "file.ok", false},
		{"ACCESS_REFUSED - user_id property set to 'fred' but authenticated user was 'bob'", "warren.heartbeat", "", false},
	} {
		if got := refusedFor(tc.reason, tc.exchange, tc.key); got != tc.want {
			t.Errorf("refusedFor(%q, %q, %q) = %v, want %v", tc.reason, tc.exchange, tc.key, got, tc.want)
		}
	}
}
