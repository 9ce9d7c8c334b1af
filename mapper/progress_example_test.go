package mapper_test

import (
	"context"
	"fmt"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport/mem"
)

// ExampleOnProgress is Nanite's intermediate results: a long job reports
// how far it got, and the caller sees each step, in order, before the
// result.
func ExampleOnProgress() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	broker := mem.NewBroker()
	defer broker.Close()

	a, _ := agent.New(broker.Connect(), agent.Config{Identity: "fred"})
	_ = a.Handle("/files/index", agent.Func(func(ctx context.Context, files []string) (int, error) {
		for i := range files {
			// ... index files[i] ...
			_ = agent.Progress(ctx, "files", map[string]int{"done": i + 1, "total": len(files)})
		}
		return len(files), nil
	}))
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	<-a.Ready()

	m, _ := mapper.New(broker.Connect(), mapper.Config{})
	go m.Run(ctx)
	<-m.Ready()

	r, err := m.Request(ctx, "/files/index", []string{"a", "b", "c"},
		mapper.OnProgress(func(p mapper.Progress) {
			fmt.Printf("%s %s %d: %s\n", p.Agent, p.Key, p.Seq, p.Value)
		}))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("result", string(r.Body))
	cancel()
	<-done
	// Output:
	// fred files 1: {"done":1,"total":3}
	// fred files 2: {"done":2,"total":3}
	// fred files 3: {"done":3,"total":3}
	// result 3
}
