package daemon

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/transport/mem"
)

// GoService is a service written in Go and compiled into the daemon's
// binary, as Nanite's init.rb registered actors: a config entry
// `NAME: {go: true, config: ...}` serves it.
type GoService struct {
	name     string
	newActor func(Env) (any, error)
}

// Env is what a Go service's constructor gets.
type Env struct {
	// Name is the service's name.
	Name string
	// Identity is the daemon's identity.
	Identity string
	// Config is the entry's config section as JSON ({} without one).
	Config json.RawMessage
	// Log is the daemon's logger.
	Log *slog.Logger
}

// Service declares the Go service name: newActor gets its Env (the entry's
// config among it) and returns the actor, whose exported methods are
// served as /name/method by the rules of agent.Expose:
//
//	func(ctx context.Context, in In) (Out, error)
//
// Build a daemon binary with it with daemonmain.Main, or pass it to New
// with WithGoServices.
func Service(name string, newActor func(Env) (any, error)) GoService {
	return GoService{name: name, newActor: newActor}
}

// Name returns the service's name.
func (s GoService) Name() string { return s.name }

// WithGoServices makes Go services available to the config's `go: true`
// entries.
func WithGoServices(svcs ...GoService) Option {
	return func(o *options) {
		if o.goSvcs == nil {
			o.goSvcs = map[string]GoService{}
		}
		for _, s := range svcs {
			o.goSvcs[s.name] = s
		}
	}
}

// checkGo checks that every `go: true` entry of cfg names a Go service of
// this binary.
func checkGo(cfg *Config, svcs map[string]GoService) error {
	var es ConfigErrors
	for name, s := range cfg.Services {
		if s.Go {
			if _, ok := svcs[name]; !ok {
				cfg.errAt(&es, []string{"services", name, "go"}, "this binary has no Go service %q (the warren binary has only simple: build yours with daemonmain.Main)", name)
			}
		}
	}
	if len(es) > 0 {
		return es
	}
	return nil
}

// newGoActor makes the actor of Go service name and lists its methods.
func newGoActor(gs GoService, env Env) (any, []string, error) {
	actor, err := gs.newActor(env)
	if err != nil {
		return nil, nil, fmt.Errorf("daemon: Go service %s: %w", gs.name, err)
	}
	// The agent's own rules decide which methods are served: ask one that
	// never runs.
	scratch, err := agent.New(mem.NewBroker().Connect(), agent.Config{})
	if err != nil {
		return nil, nil, err
	}
	if err := scratch.Expose(gs.name, actor); err != nil {
		return nil, nil, fmt.Errorf("daemon: Go service %s: %w", gs.name, err)
	}
	var methods []string
	for _, p := range scratch.Services() {
		methods = append(methods, strings.TrimPrefix(p, "/"+gs.name+"/"))
	}
	return actor, methods, nil
}

// Check checks what Load cannot: that the config's Go services are among
// those given with WithGoServices.
func Check(cfg *Config, opts ...Option) error {
	var o options
	for _, f := range opts {
		if f != nil {
			f(&o)
		}
	}
	return checkGo(cfg, o.goSvcs)
}
