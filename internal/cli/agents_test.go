package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/mapper"
)

// TestAgentsJSONEmptyLists: an agent without tags is "tags": [], not null.
func TestAgentsJSONEmptyLists(t *testing.T) {
	var b bytes.Buffer
	if err := printAgents(&b, []mapper.AgentInfo{{Identity: "fred", Status: 0.5, LastSeen: time.Now()}}, true); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `"tags": []`) || !strings.Contains(b.String(), `"services": []`) || strings.Contains(b.String(), "null") {
		t.Fatalf("agents --json:\n%s", b.String())
	}
}
