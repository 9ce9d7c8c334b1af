// Package tlsflags turns the command line's TLS flags into the *tls.Config
// for an amqps:// broker: CA verification on by default (the system roots,
// or --tls-ca), a client certificate (--tls-cert with --tls-key, the key
// given as a file path, never as the key itself), the name the broker's
// certificate must carry (--tls-server-name, default the URL's host), and
// --tls-insecure-skip-verify, which has no environment variable so that
// turning verification off is always visible on the command line.
package tlsflags

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"

	"github.com/warrenrpc/warren/transport/amqp"
)

// Flags are the TLS flags of a command that talks to a broker; embed them in
// a kong command struct.
type Flags struct {
	CA         string `name:"tls-ca" env:"WARREN_TLS_CA" placeholder:"FILE" help:"PEM file of the CA certificate(s) the broker's certificate must chain to (default: the system roots)."`
	Cert       string `name:"tls-cert" env:"WARREN_TLS_CERT" placeholder:"FILE" help:"PEM file of a client certificate to present (with --tls-key)."`
	Key        string `name:"tls-key" env:"WARREN_TLS_KEY_FILE" placeholder:"FILE" help:"PEM file of the client certificate's private key: a path, never the key itself."`
	ServerName string `name:"tls-server-name" env:"WARREN_TLS_SERVER_NAME" placeholder:"NAME" help:"Name the broker's certificate must carry (default: the host of --broker)."`
	Insecure   bool   `name:"tls-insecure-skip-verify" help:"Do not verify the broker's certificate: anyone on the path can read and change the traffic. Tests only."`
}

// ErrUsage marks errors in the flags themselves (wrapped).
var ErrUsage = errors.New("TLS flags")

// Set reports whether any TLS flag is set.
func (f Flags) Set() bool {
	return f.CA != "" || f.Cert != "" || f.Key != "" || f.ServerName != "" || f.Insecure
}

// Config returns the TLS configuration for brokerURL. For an amqp:// URL it
// returns nil, or an error when a TLS flag is set (they would silently do
// nothing). For amqps:// it always returns a configuration: TLS 1.2 at
// least, the CA file's certificates or else the system roots, the client
// certificate, and ServerName set to --tls-server-name or the URL's host.
func (f Flags) Config(brokerURL string) (*tls.Config, error) {
	// A list of a cluster's nodes (amqp.SplitURLs) must agree on the
	// scheme; with several hosts, the server name is each node's own (the
	// AMQP client fills it in per connection) unless --tls-server-name.
	urls := amqp.SplitURLs(brokerURL)
	var u *url.URL
	for i, one := range urls {
		v, err := url.Parse(one)
		if err != nil {
			return nil, fmt.Errorf("%w: broker URL: %v", ErrUsage, err)
		}
		if i > 0 && v.Scheme != u.Scheme {
			return nil, fmt.Errorf("%w: the broker URLs mix %s and %s", ErrUsage, u.Scheme, v.Scheme)
		}
		u = v
	}
	switch u.Scheme {
	case "amqp":
		if f.Set() {
			return nil, fmt.Errorf("%w: --tls-* flags need an amqps:// broker URL", ErrUsage)
		}
		return nil, nil
	case "amqps":
	default:
		return nil, fmt.Errorf("%w: broker URL scheme %q: want amqp or amqps", ErrUsage, u.Scheme)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.ServerName}
	if cfg.ServerName == "" && len(urls) == 1 {
		cfg.ServerName = u.Hostname()
	}
	if f.Insecure {
		if f.CA != "" || f.ServerName != "" {
			return nil, fmt.Errorf("%w: --tls-insecure-skip-verify turns off what --tls-ca (WARREN_TLS_CA) and --tls-server-name (WARREN_TLS_SERVER_NAME) ask for: use one or the other", ErrUsage)
		}
		cfg.InsecureSkipVerify = true
	}
	for _, c := range []struct{ flag, env, value string }{
		{"--tls-ca", "WARREN_TLS_CA", f.CA}, {"--tls-cert", "WARREN_TLS_CERT", f.Cert}, {"--tls-key", "WARREN_TLS_KEY_FILE", f.Key},
	} {
		if c.value != "" {
			if err := CheckFile(c.flag, c.env, c.value); err != nil {
				return nil, fmt.Errorf("%w: %w", ErrUsage, err)
			}
		}
	}
	if f.CA != "" {
		pem, err := os.ReadFile(f.CA)
		if err != nil {
			return nil, fmt.Errorf("%w: --tls-ca: %v", ErrUsage, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: --tls-ca %s: no PEM certificate in it", ErrUsage, f.CA)
		}
		cfg.RootCAs = pool
	}
	switch {
	case f.Cert == "" && f.Key == "":
	case f.Cert == "" || f.Key == "":
		return nil, fmt.Errorf("%w: --tls-cert and --tls-key (or WARREN_TLS_KEY_FILE) go together", ErrUsage)
	default:
		pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, fmt.Errorf("%w: --tls-cert/--tls-key: %v", ErrUsage, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}
