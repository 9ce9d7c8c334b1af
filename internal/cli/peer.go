package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/warrenrpc/warren/peer"
	"github.com/warrenrpc/warren/wire"
)

// peerFlags are shared by send and call.
type peerFlags struct {
	brokerFlags
	Peer    string        `arg:"" name:"peer" help:"The peer's name (its queue is warren.peer.NAME)."`
	Payload string        `arg:"" optional:"" name:"payload" default:"null" help:"JSON payload (default null)."`
	Timeout time.Duration `name:"timeout" default:"10s" help:"Give up after this long."`
}

func (f *peerFlags) check() (json.RawMessage, error) {
	if !json.Valid([]byte(f.Payload)) {
		return nil, usageError{fmt.Errorf("payload %q is not JSON (quote strings: '\"hi\"')", f.Payload)}
	}
	if f.Timeout <= 0 {
		return nil, usageError{fmt.Errorf("--timeout %v: want a positive duration", f.Timeout)}
	}
	if err := wire.CheckIdentity(f.Peer); err != nil {
		return nil, usageError{fmt.Errorf("peer %q: %w", f.Peer, err)}
	}
	return json.RawMessage(f.Payload), nil
}

// withPeer dials and runs an anonymous peer for fn.
func withPeer(ctx context.Context, g *Globals, b brokerFlags, fn func(*peer.Peer) error) error {
	tr, _, err := b.dialAs(ctx, g, "peer")
	if err != nil {
		return err
	}
	defer tr.Close()
	p, err := peer.New(tr, peer.Config{}, peer.WithLogger(g.Logger()))
	if err != nil {
		return err
	}
	pctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(pctx) }()
	select {
	case <-p.Ready():
	case err := <-done:
		stop()
		return err
	}
	err = fn(p)
	stop()
	if rerr := <-done; err == nil {
		err = rerr
	}
	return err
}

type sendCmd struct {
	peerFlags
	TTL time.Duration `name:"ttl" help:"How long the message may wait in the peer's queue (default: forever)."`
}

func (c *sendCmd) Help() string {
	return `Sends a message to a peer (HareDo's send), with no reply queue, and prints
its message id. Fails when no peer has that name.`
}

func (c *sendCmd) Run(g *Globals) error {
	payload, err := c.check()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(g.Context(), c.Timeout)
	defer cancel()
	return withPeer(ctx, g, c.brokerFlags, func(p *peer.Peer) error {
		id, err := p.Send(ctx, c.Peer, payload, peer.NoReply(), peer.TTL(c.TTL))
		if err != nil {
			return err
		}
		fmt.Fprintln(g.Out(), id)
		return nil
	})
}

type callCmd struct{ peerFlags }

func (c *callCmd) Help() string {
	return `Sends a message to a peer and prints its reply as JSON (HareDo's call).
No reply within --timeout is an error (exit 1); a reply that comes later is
dropped.`
}

func (c *callCmd) Run(g *Globals) error {
	payload, err := c.check()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(g.Context(), c.Timeout)
	defer cancel()
	return withPeer(ctx, g, c.brokerFlags, func(p *peer.Peer) error {
		m, err := p.Call(ctx, c.Peer, payload)
		if errors.Is(err, peer.ErrTimeout) {
			return fmt.Errorf("no reply from peer %s within %v", c.Peer, c.Timeout)
		}
		if err != nil {
			return err
		}
		return printJSON(g.Out(), m.Body)
	})
}
