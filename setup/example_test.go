package setup_test

import (
	"fmt"
	"regexp"

	"github.com/warrenrpc/warren/setup"
)

// The permissions of an agent user limited to its own identity, checked
// against the names of the operations an agent performs.
func ExampleAgentPermissions() {
	p, err := setup.AgentPermissions("fred")
	if err != nil {
		fmt.Println(err)
		return
	}
	read := regexp.MustCompile(p.Read)
	write := regexp.MustCompile(p.Write)
	fmt.Println("consume warren.agent.fred:", read.MatchString("warren.agent.fred"))
	fmt.Println("consume warren.agent.bob:", read.MatchString("warren.agent.bob"))
	fmt.Println("publish to warren.heartbeat:", write.MatchString("warren.heartbeat"))
	fmt.Println("publish to warren.request:", write.MatchString("warren.request"))
	// Output:
	// consume warren.agent.fred: true
	// consume warren.agent.bob: false
	// publish to warren.heartbeat: true
	// publish to warren.request: false
}

func ExampleMapperPermissions() {
	p := setup.MapperPermissions()
	fmt.Println("configure:", p.Configure)
	fmt.Println("write:    ", p.Write)
	fmt.Println("read:     ", p.Read)
	// Output:
	// configure: ^(warren\.(request|service|heartbeat|control|dlx|dead|events)|amq\.gen-.+|warren\.events\.(one|host|all)\..+)$
	// write:     ^(warren\.(request|service|control|dead|dlx|events)|amq\.gen-.+|warren\.events\.(one|host|all)\..+)$
	// read:      ^(warren\.(heartbeat|dlx|events)|amq\.gen-.+|warren\.events\.(one|host|all)\..+)$
}
