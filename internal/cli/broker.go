package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
)

// brokerFlags is embedded by every command that talks to a broker.
type brokerFlags struct {
	Broker string `name:"broker" short:"b" env:"WARREN_BROKER" default:"amqp://guest:guest@127.0.0.1:5672/" help:"Broker URL (amqp:// or amqps://)."`
}

// dial connects to the broker named by --broker, failing within 10s with a
// one-line error when it cannot be reached.
func (b brokerFlags) dial(ctx context.Context, g *Globals, name string) (transport.Transport, error) {
	if !strings.HasPrefix(b.Broker, "amqp://") && !strings.HasPrefix(b.Broker, "amqps://") {
		return nil, usageError{fmt.Errorf("--broker %q: want an amqp:// or amqps:// URL", b.Broker)}
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tr, err := amqp.Dial(dctx, b.Broker, amqp.Config{ConnectionName: "warren " + name}, amqp.WithLogger(g.Logger()))
	if err != nil {
		return nil, err
	}
	return tr, nil
}
