package bertrpc_test

import (
	"context"
	"fmt"

	"github.com/warrenrpc/warren/bert"
	"github.com/warrenrpc/warren/bertrpc"
)

// A native module served over a real TCP connection.
func Example() {
	reg := bertrpc.NewRegistry()
	_ = reg.Register("calc", "add", 2, func(_ context.Context, args bert.List) (any, error) {
		a, _ := args[0].(int)
		b, _ := args[1].(int)
		return a + b, nil
	})
	cfg := bertrpc.Config{
		Listen:  "127.0.0.1:0",
		Modules: []bertrpc.ModuleConfig{{Module: "calc", Type: bertrpc.TypeNative}},
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

	// -> {call, calc, add, [1, 2]}   <- {reply, 3}
	res, err := bertrpc.Call(ctx, srv.Addr().String(), "calc", "add", 1, 2)
	fmt.Println(res, err)

	// -> {call, calc, sub, [1, 2]}   <- {error, {server, 2, ...}}
	_, err = bertrpc.Call(ctx, srv.Addr().String(), "calc", "sub", 1, 2)
	fmt.Println(err)

	stop()
	fmt.Println(<-done)
	// Output:
	// 3 <nil>
	// bertrpc: server error 2 (ServerError): No such function 'calc:sub'
	// <nil>
}

// A registry with a shadowing predicate: fib(N) runs natively for N >= 10
// and goes to the external module of the same name otherwise.
func ExampleRegistry_Predicate() {
	reg := bertrpc.NewRegistry()
	_ = reg.Register("math", "fib", 1, func(_ context.Context, args bert.List) (any, error) {
		a, b := 0, 1
		for range args[0].(int) {
			a, b = b, a+b
		}
		return a, nil
	})
	_ = reg.Predicate("math", "fib", 1, func(args bert.List) bool {
		n, ok := args[0].(int)
		return ok && n >= 10
	})
	fmt.Println(reg.Modules())
	// Output: [math]
}
