package fabrictest

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/warrenrpc/warren/transport"
)

// LosingDeclares wraps tr so that its first n queue declarations fail with
// transport.ErrConnectionLost, as transport/amqp's do when the connection
// drops during a declaration (a cluster node going down while an agent or
// a mapper starts).
func LosingDeclares(tr transport.Transport, n int) transport.Transport {
	l := &losingDeclares{Transport: tr}
	l.left.Store(int64(n))
	return l
}

type losingDeclares struct {
	transport.Transport
	left atomic.Int64
}

func (l *losingDeclares) DeclareQueue(ctx context.Context, q transport.Queue) (string, error) {
	if l.left.Add(-1) >= 0 {
		return "", fmt.Errorf("declare queue %q: %w", q.Name, transport.ErrConnectionLost)
	}
	return l.Transport.DeclareQueue(ctx, q)
}
