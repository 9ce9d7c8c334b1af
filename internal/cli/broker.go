package cli

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/warrenrpc/warren/internal/tlsflags"
	"github.com/warrenrpc/warren/secure"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
)

// brokerFlags is embedded by every command that talks to a broker.
type brokerFlags struct {
	Broker string         `name:"broker" short:"b" env:"WARREN_BROKER" default:"amqp://guest:guest@127.0.0.1:5672/" help:"Broker URL (amqp:// or amqps://), or the URLs of a cluster's nodes separated by commas (failover in turn). Prefer WARREN_BROKER when it holds a password."`
	TLS    tlsflags.Flags `embed:""`
	Secure secureFlags    `embed:"" prefix:"secure-"`
}

// secureFlags turn on secure mode: every message signed with this
// certificate's key and, unless sign-only, encrypted to its recipient.
type secureFlags struct {
	Cert     string `name:"cert" env:"WARREN_SECURE_CERT" placeholder:"FILE" help:"Secure mode: this participant's certificate (PEM); its identity is the agent's or mapper's."`
	Key      string `name:"key" env:"WARREN_SECURE_KEY_FILE" placeholder:"FILE" help:"Secure mode: the private key file (PEM): a path, never the key itself."`
	CA       string `name:"ca" env:"WARREN_SECURE_CA" placeholder:"FILE" help:"Secure mode: trust certificates signed by these CAs (PEM)."`
	Deny     string `name:"deny" env:"WARREN_SECURE_DENY" placeholder:"FILE" help:"Secure mode: revoked serial numbers or fingerprints, one per line."`
	SignOnly bool   `name:"sign-only" help:"Secure mode: sign, do not encrypt."`
}

// check validates the flags before anything is dialled: secure mode needs
// all three files, and each must exist. Its errors never show a value that
// names no file (it may be a key given instead of its path).
func (f secureFlags) check() error {
	if f.Cert == "" && f.Key == "" && f.CA == "" && f.Deny == "" {
		return nil
	}
	if f.Cert == "" || f.Key == "" || f.CA == "" {
		return usageError{errors.New("secure mode needs --secure-cert, --secure-key and --secure-ca")}
	}
	for _, c := range []struct{ flag, env, value string }{
		{"--secure-cert", "WARREN_SECURE_CERT", f.Cert},
		{"--secure-key", "WARREN_SECURE_KEY_FILE", f.Key},
		{"--secure-ca", "WARREN_SECURE_CA", f.CA},
		{"--secure-deny", "WARREN_SECURE_DENY", f.Deny},
	} {
		if c.value != "" {
			if err := tlsflags.CheckFile(c.flag, c.env, c.value); err != nil {
				return usageError{err}
			}
		}
	}
	return nil
}

// wrap returns tr in secure mode when --secure-cert is given, and the
// identity the certificate names ("" otherwise).
func (f secureFlags) wrap(g *Globals, tr transport.Transport) (transport.Transport, string, error) {
	if err := f.check(); err != nil {
		return nil, "", err
	}
	if f.Cert == "" && f.Key == "" && f.CA == "" {
		return tr, "", nil
	}
	cfg, err := secure.ConfigFromFiles(f.Cert, f.Key, f.CA)
	if err != nil {
		return nil, "", usageError{err}
	}
	if f.Deny != "" {
		if cfg.Deny, err = secure.LoadDenyList(f.Deny); err != nil {
			return nil, "", usageError{err}
		}
	}
	cfg.SignOnly = f.SignOnly
	str, err := secure.Wrap(tr, cfg, secure.WithLogger(g.Logger()))
	if err != nil {
		return nil, "", err
	}
	return str, cfg.Identity.Name(), nil
}

// dial connects to the broker named by --broker, failing within 10s with a
// one-line error when it cannot be reached, in secure mode when asked.
func (b brokerFlags) dial(ctx context.Context, g *Globals, name string) (transport.Transport, error) {
	tr, _, err := b.dialAs(ctx, g, name)
	return tr, err
}

// dialAs is dial that also returns the secure-mode identity ("" when not
// in secure mode).
func (b brokerFlags) dialAs(ctx context.Context, g *Globals, name string) (transport.Transport, string, error) {
	tr, id, _, err := b.dialAMQP(ctx, g, name)
	return tr, id, err
}

// dialAMQP is dialAs that also returns the AMQP transport under secure
// mode, which reports the broker blocking publishes.
func (b brokerFlags) dialAMQP(ctx context.Context, g *Globals, name string) (transport.Transport, string, *amqp.Transport, error) {
	if err := b.Secure.check(); err != nil {
		return nil, "", nil, err
	}
	tr, err := b.dialPlain(ctx, g, name)
	if err != nil {
		return nil, "", nil, err
	}
	str, id, err := b.Secure.wrap(g, tr)
	if err != nil {
		tr.Close()
		return nil, "", nil, err
	}
	if str, err = g.traced(ctx, str, name); err != nil {
		tr.Close()
		return nil, "", nil, err
	}
	return str, id, tr, nil
}

// checkBrokerURL validates a broker URL, or a comma-separated list of the
// URLs of a cluster's nodes, warning first about a password given with
// --broker. Its errors, like every line that shows a broker URL, never show
// the password.
func checkBrokerURL(g *Globals, raw string) error {
	warnPasswordFlag(g, raw)
	for _, one := range amqp.SplitURLs(raw) {
		if _, err := url.Parse(one); err != nil {
			// The parser's errors quote the URL, or the part of a
			// password it misread: say only that it is not one.
			return usageError{fmt.Errorf("--broker %q: not a URL (percent-encode any ':', '/', '?', '#' or '@' in the user name or password)", amqp.RedactURL(one))}
		}
		if !strings.HasPrefix(one, "amqp://") && !strings.HasPrefix(one, "amqps://") {
			return usageError{fmt.Errorf("--broker %q: want an amqp:// or amqps:// URL", amqp.RedactURL(one))}
		}
	}
	return nil
}

// warnPasswordFlag warns, once per process, when the broker URL with its
// password came from the --broker flag: process listings show it to every
// user of the machine, where WARREN_BROKER stays private.
func warnPasswordFlag(g *Globals, raw string) {
	redacted := amqp.RedactURL(raw)
	if redacted == raw || !g.brokerOnCommandLine {
		return
	}
	g.brokerWarning.Do(func() {
		g.Logger().Warn("the --broker URL holds a password, which process listings show to every user of this machine: pass the URL in WARREN_BROKER instead", "broker", redacted)
	})
}

func (b brokerFlags) dialPlain(ctx context.Context, g *Globals, name string) (*amqp.Transport, error) {
	if err := checkBrokerURL(g, b.Broker); err != nil {
		return nil, err
	}
	tlsCfg, err := b.TLS.Config(b.Broker)
	if err != nil {
		return nil, usageError{err}
	}
	if b.TLS.Insecure {
		g.Logger().Warn("not verifying the broker's TLS certificate (--tls-insecure-skip-verify)")
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tr, err := amqp.Dial(dctx, b.Broker, amqp.Config{ConnectionName: "warren " + name, TLS: tlsCfg}, amqp.WithLogger(g.Logger()))
	if err != nil {
		return nil, err
	}
	return tr, nil
}
