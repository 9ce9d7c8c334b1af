package bertrpc_test

import (
	"context"
	"os/exec"
	"runtime"
	"testing"

	"github.com/warrenrpc/warren/bertrpc"
)

// Benchmarks: nat:add(1, 2) over TCP on 127.0.0.1, client and server in
// one process. "NewConn" opens a connection per call (Ernie's clients do),
// "Kept" reuses one per client; "Seq" is one client, "Par8" eight.
// docs/bert.md quotes the results and the Ruby client numbers.

func benchServer(b *testing.B, cfg bertrpc.Config, opts ...bertrpc.Option) string {
	b.Helper()
	cfg.Listen = "127.0.0.1:0"
	s, err := bertrpc.New(cfg, opts...)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	<-s.Ready()
	return s.Addr().String()
}

func benchCalls(b *testing.B, addr, mod string, keep bool, clients int) {
	ctx := context.Background()
	// Warm up (external workers start lazily on the first request).
	if _, err := bertrpc.Call(ctx, addr, mod, "add", 1, 2); err != nil {
		b.Fatal(err)
	}
	one := func(c *bertrpc.Client) {
		var (
			v   any
			err error
		)
		if keep {
			v, err = c.Call(ctx, mod, "add", 1, 2)
		} else {
			v, err = bertrpc.Call(ctx, addr, mod, "add", 1, 2)
		}
		if err != nil || v != 3 {
			b.Errorf("add = %v, %v", v, err)
		}
	}
	dial := func() *bertrpc.Client {
		if !keep {
			return nil
		}
		c, err := bertrpc.Dial(ctx, addr)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	if clients == 1 {
		c := dial()
		for b.Loop() {
			one(c)
		}
		if c != nil {
			c.Close()
		}
		return
	}
	b.SetParallelism(max(1, clients/runtime.GOMAXPROCS(0)))
	b.RunParallel(func(pb *testing.PB) {
		c := dial()
		for pb.Next() {
			one(c)
		}
		if c != nil {
			c.Close()
		}
	})
}

func BenchmarkServer(b *testing.B) {
	type target struct {
		name string
		mod  string
		cfg  func(b *testing.B) (bertrpc.Config, []bertrpc.Option)
	}
	targets := []target{
		{"native", "nat", func(b *testing.B) (bertrpc.Config, []bertrpc.Option) {
			return natConfig(), []bertrpc.Option{bertrpc.WithNative(natRegistry(b))}
		}},
		{"ruby2", "ext", func(b *testing.B) (bertrpc.Config, []bertrpc.Option) {
			if exec.Command("ruby", "-e", "require 'bert'").Run() != nil {
				b.Skip("ruby with the bert gem unavailable")
			}
			return bertrpc.Config{Modules: []bertrpc.ModuleConfig{
				{Module: "ext", Type: bertrpc.TypeExternal, Command: rubyWorkerCommand(b, shortTempDir(b)), Count: 2},
			}}, nil
		}},
	}
	for _, tg := range targets {
		b.Run(tg.name, func(b *testing.B) {
			cfg, opts := tg.cfg(b)
			addr := benchServer(b, cfg, opts...)
			for _, mode := range []struct {
				name    string
				keep    bool
				clients int
			}{
				{"NewConn/Seq", false, 1},
				{"NewConn/Par8", false, 8},
				{"Kept/Seq", true, 1},
				{"Kept/Par8", true, 8},
			} {
				b.Run(mode.name, func(b *testing.B) {
					benchCalls(b, addr, tg.mod, mode.keep, mode.clients)
				})
			}
		})
	}
}
