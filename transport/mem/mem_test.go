package mem_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/transport/transporttest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformance(t *testing.T) {
	b := mem.NewBroker()
	t.Cleanup(func() { b.Close() })
	transporttest.Run(t, func(t *testing.T) transport.Transport { return b.Connect() }, transporttest.Harness{})
}
