// Package daemonmain builds your own warren binary with services written
// in Go compiled in, as Nanite's init.rb registered actors:
//
//	func main() {
//		daemonmain.Main(daemon.Service("billing", newBilling))
//	}
//
// The binary is the whole warren command line; `daemon start` serves the
// config's `NAME: {go: true}` entries with these services, next to its
// plugins in other languages. examples/godaemon is a runnable example.
package daemonmain

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/warrenrpc/warren/daemon"
	"github.com/warrenrpc/warren/internal/cli"
)

// Main runs the warren command line with svcs available to the daemon,
// and exits with its status.
func Main(svcs ...daemon.GoService) {
	cli.SetGoServices(svcs...)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
