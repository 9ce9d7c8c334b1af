package agent_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport/mem"
)

// Text is an actor: its methods become /text/upcase and /text/word_count.
type Text struct{}

func (Text) Upcase(_ context.Context, s string) (string, error) { return strings.ToUpper(s), nil }

func (Text) WordCount(_ context.Context, s string) (int, error) { return len(strings.Fields(s)), nil }

// ExampleAgent_Expose serves a Go type's methods and calls them through a
// mapper, on the embedded broker.
func ExampleAgent_Expose() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	broker := mem.NewBroker()
	defer broker.Close()

	a, _ := agent.New(broker.Connect(), agent.Config{Identity: "writer"})
	_ = a.Expose("text", Text{})
	fmt.Println(a.Services())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	<-a.Ready()

	m, _ := mapper.New(broker.Connect(), mapper.Config{})
	go m.Run(ctx)
	<-m.Ready()
	var n int
	r, _ := m.Request(ctx, "/text/word_count", "a self-assembling fabric")
	_ = r.Decode(&n)
	fmt.Println(n, "words, counted by", r.Agent)

	_, err := m.Request(ctx, "/text/upcase", 42)
	fmt.Println(err)

	cancel()
	<-done
	// Output:
	// [/text/upcase /text/word_count]
	// 3 words, counted by writer
	// warren: /text/upcase on agent writer: bad_request: bad request: json: cannot unmarshal number into Go value of type string
}
