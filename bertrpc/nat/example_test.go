package nat_test

import (
	"context"
	"fmt"

	"github.com/warrenrpc/warren/bertrpc"
	"github.com/warrenrpc/warren/bertrpc/nat"
)

func ExampleRegister() {
	reg := bertrpc.NewRegistry()
	if err := nat.Register(reg); err != nil {
		fmt.Println(err)
		return
	}
	cfg := bertrpc.Config{
		Listen:  "127.0.0.1:0",
		Modules: []bertrpc.ModuleConfig{{Module: nat.Module, Type: bertrpc.TypeNative}},
	}
	srv, err := bertrpc.New(cfg, bertrpc.WithNative(reg))
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Run(ctx) }()
	<-srv.Ready()
	defer func() { stop(); <-done }()

	c, err := bertrpc.Dial(ctx, srv.Addr().String())
	if err != nil {
		fmt.Println(err)
		return
	}
	sum, _ := c.Call(ctx, "nat", "add", 1, 2)
	fib, _ := c.Call(ctx, "nat", "fib", 90)
	_, err = c.Call(ctx, "nat", "fail", "no luck")
	fmt.Println(sum, fib)
	fmt.Println(err)
	c.Close()
	// Output:
	// 3 2880067194370816120
	// bertrpc: user error 0 (RuntimeError): no luck
}
