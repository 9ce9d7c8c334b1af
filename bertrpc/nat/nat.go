// Package nat is an example native module for the BERT-RPC server, the Go
// counterpart of Ernie's nat.erl. The warren binary registers it, so a
// config entry [{module, nat}, {type, native}]. serves it.
//
//	-> {call, nat, add, [1, 2]}
//	<- {reply, 3}
//
// Functions: add/2 (integers or floats), echo/1, fib/1, fib_pred/1 (true for
// N >= 10: with an external module nat of its own, fib(N) for N < 10 goes
// to the external workers), sleep/1 (milliseconds, honours the call's
// timeout) and fail/1 (always a user error with the given message).
package nat

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/warrenrpc/warren/bert"
	"github.com/warrenrpc/warren/bertrpc"
)

// Module is the module name nat registers.
const Module = "nat"

// Register adds the nat module's functions to r.
func Register(r *bertrpc.Registry) error {
	return errors.Join(
		r.Register(Module, "add", 2, add),
		r.Register(Module, "echo", 1, func(_ context.Context, args bert.List) (any, error) { return args[0], nil }),
		r.Register(Module, "fib", 1, fib),
		r.Predicate(Module, "fib", 1, func(args bert.List) bool {
			n, ok := args[0].(int)
			return ok && n >= 10
		}),
		r.Register(Module, "sleep", 1, sleep),
		r.Register(Module, "fail", 1, func(_ context.Context, args bert.List) (any, error) {
			return nil, fmt.Errorf("%s", text(args[0]))
		}),
	)
}

func add(_ context.Context, args bert.List) (any, error) {
	switch a := args[0].(type) {
	case int:
		switch b := args[1].(type) {
		case int:
			if s := a + b; (s > a) == (b > 0) {
				return s, nil
			}
			return new(big.Int).Add(big.NewInt(int64(a)), big.NewInt(int64(b))), nil
		case float64:
			return float64(a) + b, nil
		}
	case float64:
		switch b := args[1].(type) {
		case int:
			return a + float64(b), nil
		case float64:
			return a + b, nil
		}
	}
	return nil, &bertrpc.Error{Type: bertrpc.UserError, Class: "ArgumentError",
		Detail: fmt.Sprintf("add: numbers expected, got %s and %s", bert.Format(args[0]), bert.Format(args[1]))}
}

func fib(ctx context.Context, args bert.List) (any, error) {
	n, ok := args[0].(int)
	if !ok || n < 0 || n > 10000 {
		return nil, &bertrpc.Error{Type: bertrpc.UserError, Class: "ArgumentError", Detail: "fib: integer 0..10000 expected"}
	}
	a, b := big.NewInt(0), big.NewInt(1)
	for range n {
		a.Add(a, b)
		a, b = b, a
	}
	if a.IsInt64() {
		return int(a.Int64()), nil
	}
	return a, nil
}

func sleep(ctx context.Context, args bert.List) (any, error) {
	ms, ok := args[0].(int)
	if !ok || ms < 0 {
		return nil, &bertrpc.Error{Type: bertrpc.UserError, Class: "ArgumentError", Detail: "sleep: milliseconds expected"}
	}
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return bert.Atom("ok"), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func text(v any) string {
	switch s := v.(type) {
	case []byte:
		return string(s)
	case bert.Charlist:
		return string(s)
	case bert.Atom:
		return string(s)
	}
	return bert.Format(v)
}
