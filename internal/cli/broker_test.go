package cli

import (
	"bytes"
	"strings"
	"testing"
)

// TestBrokerURLPasswordNotShown gives broker URLs with a password that are
// refused or cannot be reached: no error or log line shows the password,
// and a password given with --broker (not WARREN_BROKER) draws one warning.
func TestBrokerURLPasswordNotShown(t *testing.T) {
	const warning = "pass the URL in WARREN_BROKER instead"
	tests := []struct {
		name    string
		args    []string
		env     string
		code    int
		want    string
		warning bool
	}{
		{"scheme", []string{"agents", "--broker", "http://ops:s3cret@broker.example/"}, "", 2, `"http://ops:xxxxx@broker.example/": want an amqp://`, true},
		{"not a URL", []string{"agents", "--broker", "amqp://ops:s3cret@broker.example:56x/"}, "", 2, `"amqp://ops:xxxxx@broker.example:56x/": not a URL`, true},
		// Passwords that URL parsers misread, and would quote in part.
		{"password with #", []string{"agents", "--broker", "amqp://ops:s3cret#x@127.0.0.1:1/"}, "", 2, `"amqp://ops:xxxxx@127.0.0.1:1/": not a URL`, true},
		{"password with /", []string{"agents"}, "amqp://ops:9999/s3cret@127.0.0.1:1/", 1, "cannot connect to amqp://ops:xxxxx@127.0.0.1:1/", false},
		{"unreachable", []string{"agents", "-b", "amqp://ops:s3cret@127.0.0.1:1/"}, "", 1, "cannot connect", true},
		{"unreachable, --broker=", []string{"dlq", "list", "--broker=amqp://ops:s3cret@127.0.0.1:1/"}, "", 1, "cannot connect", true},
		{"from WARREN_BROKER", []string{"agents"}, "amqp://ops:s3cret@127.0.0.1:1/", 1, "cannot connect", false},
		{"scheme from WARREN_BROKER", []string{"push", "/a/b"}, "https://ops:s3cret@broker.example/", 2, "https://ops:xxxxx@broker.example/", false},
		{"no password", []string{"agents", "--broker", "amqp://ops@127.0.0.1:1/"}, "", 1, "cannot connect", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("WARREN_BROKER", tc.env)
			code, _, errOut := run(t, t.Context(), tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errOut, tc.code, tc.want)
			}
			if strings.Contains(errOut, "s3cret") {
				t.Fatalf("password shown: %q", errOut)
			}
			if n := strings.Count(errOut, warning); n != map[bool]int{true: 1}[tc.warning] {
				t.Fatalf("%d password warnings, want warning %v: %q", n, tc.warning, errOut)
			}
		})
	}
}

// TestBrokerPasswordWarningOnce dials twice with a password from --broker:
// one warning.
func TestBrokerPasswordWarningOnce(t *testing.T) {
	var errOut bytes.Buffer
	g := &Globals{LogLevel: "warn", ctx: t.Context(), out: &bytes.Buffer{}, errOut: &errOut, brokerOnCommandLine: true}
	b := brokerFlags{Broker: "amqp://ops:s3cret@127.0.0.1:1/"}
	for range 2 {
		if _, err := b.dial(t.Context(), g, "test"); err == nil {
			t.Fatal("dialled port 1")
		}
	}
	if n := strings.Count(errOut.String(), "WARREN_BROKER"); n != 1 || strings.Contains(errOut.String(), "s3cret") {
		t.Fatalf("%d warnings: %q", n, errOut.String())
	}
}
