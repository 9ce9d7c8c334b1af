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
		{"403", server(403, "ACCESS_REFUSED"), false, false, transport.ErrPrecondition, ""},
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
