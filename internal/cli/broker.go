package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/warrenrpc/warren/internal/tlsflags"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
)

// brokerFlags is embedded by every command that talks to a broker.
type brokerFlags struct {
	Broker string         `name:"broker" short:"b" env:"WARREN_BROKER" default:"amqp://guest:guest@127.0.0.1:5672/" help:"Broker URL (amqp:// or amqps://). Prefer WARREN_BROKER when it holds a password."`
	TLS    tlsflags.Flags `embed:""`
}

// dial connects to the broker named by --broker, failing within 10s with a
// one-line error when it cannot be reached.
func (b brokerFlags) dial(ctx context.Context, g *Globals, name string) (transport.Transport, error) {
	if !strings.HasPrefix(b.Broker, "amqp://") && !strings.HasPrefix(b.Broker, "amqps://") {
		return nil, usageError{fmt.Errorf("--broker %q: want an amqp:// or amqps:// URL", b.Broker)}
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
