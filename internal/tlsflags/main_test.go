package tlsflags_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/tlstest"
)

// The package's TLS broker: one node for all tests, booted in TestMain when
// RabbitMQ tests are wanted (WARREN_AMQP_URL set) and RabbitMQ is installed.
var (
	certs    *tlstest.Certs
	node     *tlstest.Node
	strict   int   // port of the listener that requires a client certificate
	startErr error // why there is no node
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "warren-tlsflags-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	certs, err = tlstest.WriteCerts(dir + "/certs")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	switch {
	case os.Getenv("WARREN_AMQP_URL") == "":
		startErr = fmt.Errorf("WARREN_AMQP_URL unset: RabbitMQ tests not wanted")
	case tlstest.Available() != nil:
		startErr = tlstest.Available()
	default:
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		node, startErr = tlstest.StartNode(ctx, tlstest.NodeConfig{Dir: dir + "/node", Certs: certs})
		if startErr == nil {
			defer func() {
				sctx, scancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer scancel()
				if err := node.Stop(sctx); err != nil {
					fmt.Fprintf(os.Stderr, "stopping the TLS node: %v\n", err)
				}
			}()
			strict, startErr = node.AddListener(ctx, certs, true)
		}
	}
	return m.Run()
}

// tlsNode returns the package's TLS node, skipping the test without one
// (failing it under CI).
func tlsNode(t *testing.T) *tlstest.Node {
	t.Helper()
	if startErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("no TLS RabbitMQ node under CI: %v", startErr)
		}
		t.Skipf("no TLS RabbitMQ node: %v", startErr)
	}
	return node
}
