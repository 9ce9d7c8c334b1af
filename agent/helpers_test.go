package agent_test

import (
	"testing"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
)

func fabrictestMem(t *testing.T) transport.Transport {
	tr := mem.New()
	t.Cleanup(func() { tr.Close() })
	return tr
}
