package tlsflags_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kong"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/internal/tlsflags"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
)

// dial connects to url with the configuration the flags build.
func dial(t *testing.T, url string, f tlsflags.Flags) (transport.Transport, error) {
	t.Helper()
	cfg, err := f.Config(url)
	if err != nil {
		t.Fatalf("Config: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	tr, err := amqp.Dial(ctx, url, amqp.Config{TLS: cfg}, amqp.WithLogger(testenv.Logger(t)))
	if err == nil {
		t.Cleanup(func() { tr.Close() })
	}
	return tr, err
}

func strictURL(host string) string {
	return fmt.Sprintf("amqps://guest:guest@%s:%d/", host, strict)
}

func TestVerification(t *testing.T) {
	n := tlsNode(t)
	ca := certs.CAFile
	for _, tc := range []struct {
		name  string
		url   string
		flags tlsflags.Flags
		want  string // "" means connects; else a part of the error, or "*" for any error
	}{
		{"CA, IP in the URL", n.URL("127.0.0.1"), tlsflags.Flags{CA: ca}, ""},
		{"CA, name in the URL", n.URL("localhost"), tlsflags.Flags{CA: ca}, ""},
		{"system roots", n.URL("127.0.0.1"), tlsflags.Flags{}, "certificate signed by unknown authority"},
		{"wrong server name", n.URL("127.0.0.1"), tlsflags.Flags{CA: ca, ServerName: "broker.example.com"}, "not broker.example.com"},
		{"server name given", n.URL("127.0.0.1"), tlsflags.Flags{CA: ca, ServerName: "localhost"}, ""},
		{"insecure, explicitly", n.URL("127.0.0.1"), tlsflags.Flags{Insecure: true}, ""},
		{"client cert not required, presented", n.URL("127.0.0.1"), tlsflags.Flags{CA: ca, Cert: certs.ClientCertFile, Key: certs.ClientKeyFile}, ""},
		// The broker's refusal of a client arrives after the client's side
		// of a TLS 1.3 handshake is done: usually as "remote error: tls:
		// certificate required", sometimes as a connection closed under
		// amqp091's first read. Any error will do.
		{"client cert required, absent", strictURL("127.0.0.1"), tlsflags.Flags{CA: ca}, "*"},
		{"client cert required, present", strictURL("127.0.0.1"), tlsflags.Flags{CA: ca, Cert: certs.ClientCertFile, Key: certs.ClientKeyFile}, ""},
		// Go presents no certificate that the broker's CA list does not
		// name, so this one stays home: TestBrokerRejectsUntrustedClientCert.
		{"client cert required, untrusted", strictURL("localhost"), tlsflags.Flags{CA: ca, Cert: certs.RogueCertFile, Key: certs.RogueKeyFile}, "*"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dial(t, tc.url, tc.flags)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("want a connection, got %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("connected, want an error with %q", tc.want)
			case tc.want != "" && tc.want != "*" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q, want %q in it", err, tc.want)
			case err != nil:
				t.Logf("refused as expected: %v", err)
			}
		})
	}
}

// TestBrokerRejectsUntrustedClientCert forces the client to present a
// certificate from a CA the broker does not trust: verify_peer refuses it
// on both listeners.
func TestBrokerRejectsUntrustedClientCert(t *testing.T) {
	n := tlsNode(t)
	rogue, err := tls.LoadX509KeyPair(certs.RogueCertFile, certs.RogueKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, url := range []string{n.URL("localhost"), strictURL("localhost")} {
		cfg := &tls.Config{
			RootCAs:              certs.CAPool,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &rogue, nil },
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		tr, err := amqp.Dial(ctx, url, amqp.Config{TLS: cfg})
		cancel()
		if err == nil {
			tr.Close()
			t.Errorf("%s: connected with an untrusted client certificate", url)
			continue
		}
		t.Logf("%s: %v", url, err)
	}
}

// The verification error is the x509 one, for callers that branch on it.
func TestUnknownAuthorityIsTyped(t *testing.T) {
	n := tlsNode(t)
	_, err := dial(t, n.URL("127.0.0.1"), tlsflags.Flags{})
	var ua x509.UnknownAuthorityError
	if !errors.As(err, &ua) {
		t.Fatalf("the transport does not wrap the x509 error: %T: %v", err, err)
	}
}

// TestRoundTripOverTLS runs an agent and a mapper over amqps with client
// certificates required, and sends a request and a fan-out.
func TestRoundTripOverTLS(t *testing.T) {
	tlsNode(t)
	flags := tlsflags.Flags{CA: certs.CAFile, Cert: certs.ClientCertFile, Key: certs.ClientKeyFile}
	url := strictURL("localhost")
	connect := func() transport.Transport {
		tr, err := dial(t, url, flags)
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	a, err := agent.New(connect(), agent.Config{Identity: "tls-fred", PingInterval: time.Second, DrainTimeout: 5 * time.Second},
		agent.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Handle("/tls/echo", agent.Func(func(_ context.Context, s string) (string, error) { return "tls:" + s, nil })); err != nil {
		t.Fatal(err)
	}
	goRun(t, "agent", a.Run, a.Ready())
	m, err := mapper.New(connect(), mapper.Config{}, mapper.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	goRun(t, "mapper", m.Run, m.Ready())

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	r, err := m.Request(ctx, "/tls/echo", "hi")
	if err != nil {
		t.Fatal(err)
	}
	var got string
	if err := r.Decode(&got); err != nil || got != "tls:hi" {
		t.Fatalf("got %q, %v", got, err)
	}
	rs, err := m.FanOut(ctx, "/tls/echo", "all")
	if err != nil || len(rs) != 1 {
		t.Fatalf("fan-out: %v, %v", rs, err)
	}

	// Under TLS too, the transport reads the frames (the plaintext): a
	// header nested 33 deep, which amqp091-go refuses, is removed rather
	// than breaking the connection (issue 8, item 1).
	tr := connect()
	q, err := tr.DeclareQueue(ctx, transport.Queue{Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	var deep any = "bottom"
	for range 33 {
		deep = map[string]any{"n": deep}
	}
	if err := tr.Publish(ctx, "", q, transport.Message{Body: []byte("poison"), Headers: map[string]any{"deep": deep}},
		transport.PublishOptions{Confirm: true}); err != nil {
		t.Fatal(err)
	}
	ds, err := tr.Consume(ctx, q, transport.ConsumeOptions{AutoAck: true})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case d, ok := <-ds:
		if !ok {
			t.Fatal("poison over TLS: the consumer ended (its connection broke)")
		}
		if why, _ := d.Headers[transport.HeaderMalformed].(string); !strings.Contains(why, "nested deeper than 32 levels") || string(d.Body) != "poison" {
			t.Fatalf("poison over TLS: %q with headers %v", d.Body, d.Headers)
		}
	case <-ctx.Done():
		t.Fatal("poison over TLS not delivered")
	}
}

func goRun(t *testing.T, what string, fn func(context.Context) error, ready <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", what, err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		done <- err
		t.Fatalf("%s stopped: %v", what, err)
	case <-time.After(15 * time.Second):
		t.Fatalf("%s not ready after 15s", what)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "notpem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(certs.ClientKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	const tlsURL = "amqps://h:5671/"
	for name, tc := range map[string]struct {
		url   string
		flags tlsflags.Flags
	}{
		"flags with amqp://":     {"amqp://h:5672/", tlsflags.Flags{CA: certs.CAFile}},
		"insecure with amqp://":  {"amqp://h:5672/", tlsflags.Flags{Insecure: true}},
		"other scheme":           {"http://h/", tlsflags.Flags{}},
		"missing CA file":        {tlsURL, tlsflags.Flags{CA: filepath.Join(dir, "nope")}},
		"CA file without PEM":    {tlsURL, tlsflags.Flags{CA: notPEM}},
		"cert without key":       {tlsURL, tlsflags.Flags{Cert: certs.ClientCertFile}},
		"key without cert":       {tlsURL, tlsflags.Flags{Key: certs.ClientKeyFile}},
		"key itself, not a path": {tlsURL, tlsflags.Flags{Cert: certs.ClientCertFile, Key: string(keyPEM)}},
		"key of another cert":    {tlsURL, tlsflags.Flags{Cert: certs.ClientCertFile, Key: certs.RogueKeyFile}},
		"insecure with a CA":     {tlsURL, tlsflags.Flags{Insecure: true, CA: certs.CAFile}},
	} {
		_, err := tc.flags.Config(tc.url)
		if !errors.Is(err, tlsflags.ErrUsage) {
			t.Errorf("%s: %v, want ErrUsage", name, err)
		}
		if err != nil && strings.Contains(err.Error(), "PRIVATE KEY") {
			t.Errorf("%s: the error shows the key: %v", name, err)
		}
	}
	if cfg, err := (tlsflags.Flags{}).Config("amqp://h:5672/"); cfg != nil || err != nil {
		t.Errorf("plain amqp: %v, %v", cfg, err)
	}
	cfg, err := (tlsflags.Flags{}).Config("amqps://broker.example.com:5671/")
	if err != nil || cfg == nil || cfg.ServerName != "broker.example.com" || cfg.InsecureSkipVerify || cfg.RootCAs != nil {
		t.Errorf("amqps default: %+v, %v", cfg, err)
	}
	// A cluster's nodes: each connection verifies its own node's name.
	cfg, err = (tlsflags.Flags{}).Config("amqps://n1.example.com:5671/,amqps://n2.example.com:5671/")
	if err != nil || cfg == nil || cfg.ServerName != "" {
		t.Errorf("amqps nodes: %+v, %v", cfg, err)
	}
	if _, err := (tlsflags.Flags{}).Config("amqps://n1.example.com:5671/,amqp://n2.example.com:5672/"); !errors.Is(err, tlsflags.ErrUsage) {
		t.Errorf("mixed schemes: %v", err)
	}
}

// TestKongFlags parses the flags as the CLI does: the key path may come from
// WARREN_TLS_KEY_FILE, verification cannot be turned off from the
// environment.
func TestKongFlags(t *testing.T) {
	t.Setenv("WARREN_TLS_KEY_FILE", certs.ClientKeyFile)
	t.Setenv("WARREN_TLS_CA", certs.CAFile)
	var cli struct {
		tlsflags.Flags
	}
	p, err := kong.New(&cli, kong.Exit(func(int) { t.Fatal("exit") }))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Parse([]string{"--tls-cert", certs.ClientCertFile}); err != nil {
		t.Fatal(err)
	}
	if cli.Key != certs.ClientKeyFile || cli.CA != certs.CAFile || cli.Insecure {
		t.Fatalf("parsed %+v", cli.Flags)
	}
	cfg, err := cli.Config("amqps://localhost:5671/")
	if err != nil || len(cfg.Certificates) != 1 {
		t.Fatalf("%+v, %v", cfg, err)
	}
}
