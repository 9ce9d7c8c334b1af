package mapper_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport/mem"
)

// ExampleMapper_Stream is Nanite's file transfer: data of any size goes to
// one agent in chunks, and the handler reads it whole.
func ExampleMapper_Stream() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	broker := mem.NewBroker()
	defer broker.Close()

	a, _ := agent.New(broker.Connect(), agent.Config{Identity: "fred"})
	_ = a.Handle("/files/store", agent.HandlerFunc(func(ctx context.Context, req *agent.Request) (any, error) {
		var name string
		if err := req.Decode(&name); err != nil {
			return nil, err
		}
		n, err := io.Copy(io.Discard, req.Stream) // a real handler writes a file
		return fmt.Sprintf("stored %s: %d bytes", name, n), err
	}))
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	<-a.Ready()

	m, _ := mapper.New(broker.Connect(), mapper.Config{})
	go m.Run(ctx)
	<-m.Ready()

	data := strings.NewReader(strings.Repeat("warren ", 100000)) // 700 kB
	r, err := m.Stream(ctx, "/files/store", "warren.txt", data, mapper.ChunkSize(64<<10))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(string(r.Body))
	cancel()
	<-done
	// Output:
	// "stored warren.txt: 700000 bytes"
}
