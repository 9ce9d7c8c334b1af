// Command warren runs Warren's agents, mappers, tools and the BERT-RPC
// server. See `warren --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/warrenrpc/warren/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
