package bertrpc

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/warrenrpc/warren/bert"
)

// Func is a native BERT-RPC function. args are the call's arguments as the
// bert package decodes them. The result is encoded with bert.Marshal, so
// the bert package's encode conveniences apply (string → binary, nil →
// {bert,nil}, map[string]any → dict, ...). A returned *Error is sent as is;
// any other error becomes {error, {user, 0, <<"RuntimeError">>, Msg, []}}.
// A panic is recovered and reported the same way, with a backtrace.
//
// ctx ends when the call's timeout expires or the server stops.
type Func func(ctx context.Context, args bert.List) (any, error)

// AnyArity registers a function for every argument count.
const AnyArity = -1

// Registry holds native modules: Go functions addressed by module, function
// name and arity, as Erlang functions are. A Registry is safe for concurrent
// use; register everything before passing it to [WithNative].
//
// Shadowing predicates are ordinary functions named Fun_pred (for example
// fib_pred for fib) with the same arity, returning true when the native
// function should handle the call. [Registry.Predicate] registers one.
type Registry struct {
	mu   sync.RWMutex
	mods map[string]map[funKey]Func
}

type funKey struct {
	name  string
	arity int
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{mods: make(map[string]map[funKey]Func)}
}

// Register adds module:function/arity. arity is the number of arguments the
// function accepts, or [AnyArity]. Registering the same function twice
// replaces it.
func (r *Registry) Register(module, function string, arity int, fn Func) error {
	if module == "" || function == "" {
		return fmt.Errorf("bertrpc: register: module and function names must not be empty")
	}
	if fn == nil {
		return fmt.Errorf("bertrpc: register %s:%s: nil function", module, function)
	}
	if arity < AnyArity {
		return fmt.Errorf("bertrpc: register %s:%s: bad arity %d", module, function, arity)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.mods[module]
	if m == nil {
		m = make(map[funKey]Func)
		r.mods[module] = m
	}
	m[funKey{function, arity}] = fn
	return nil
}

// Predicate registers module:function_pred/arity, the shadowing predicate of
// module:function/arity (see the package documentation).
func (r *Registry) Predicate(module, function string, arity int, pred func(args bert.List) bool) error {
	if pred == nil {
		return fmt.Errorf("bertrpc: predicate %s:%s: nil function", module, function)
	}
	return r.Register(module, function+"_pred", arity, func(_ context.Context, args bert.List) (any, error) {
		return pred(args), nil
	})
}

// Modules returns the names of the registered modules, sorted.
func (r *Registry) Modules() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := make([]string, 0, len(r.mods))
	for n := range r.mods {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func (r *Registry) hasModule(module string) bool {
	if r == nil {
		return false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.mods[module] != nil
}

// lookup finds module:function/arity, preferring an exact arity over
// AnyArity.
func (r *Registry) lookup(module, function string, arity int) Func {
	if r == nil {
		return nil
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	m := r.mods[module]
	if m == nil {
		return nil
	}
	if fn := m[funKey{function, arity}]; fn != nil {
		return fn
	}
	return m[funKey{function, AnyArity}]
}
