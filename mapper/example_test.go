package mapper_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport/mem"
)

type greeter struct{ name string }

// Greet answers with the agent's name, so the example shows who served.
func (g greeter) Greet(_ context.Context, who string) (string, error) {
	return fmt.Sprintf("%s greets %s", g.name, who), nil
}

// Example runs Nanite's walkthrough on the embedded broker: two agents, a
// mapper, least-loaded dispatch and fan-out.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	broker := mem.NewBroker()
	defer broker.Close()

	var done []chan error
	for name, load := range map[string]float64{"fred": 0.2, "bob": 0.7} {
		a, _ := agent.New(broker.Connect(), agent.Config{Identity: name},
			agent.WithStatus(func() any { return load }))
		_ = a.Expose("hello", greeter{name})
		ch := make(chan error, 1)
		go func() { ch <- a.Run(ctx) }()
		<-a.Ready()
		done = append(done, ch)
	}

	m, _ := mapper.New(broker.Connect(), mapper.Config{})
	go m.Run(ctx)
	<-m.Ready()

	r, err := m.Request(ctx, "/hello/greet", "the world")
	if err != nil {
		fmt.Println(err)
		return
	}
	var s string
	_ = r.Decode(&s)
	fmt.Println("least loaded:", s)

	rs, _ := m.FanOut(ctx, "/hello/greet", "everyone")
	var lines []string
	for id, r := range rs {
		var s string
		_ = r.Decode(&s)
		lines = append(lines, id+": "+s)
	}
	slices.Sort(lines)
	fmt.Println(strings.Join(lines, "\n"))

	cancel()
	for _, ch := range done {
		<-ch
	}
	// Output:
	// least loaded: fred greets the world
	// bob: bob greets everyone
	// fred: fred greets everyone
}
