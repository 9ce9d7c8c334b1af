package cli

import (
	"bytes"
	"runtime/debug"
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

// TestVersion: warren --version and warren version print the commit and
// its time when the build recorded them, and say so when it did not.
func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}} {
		code, out, errOut := run(t, t.Context(), args...)
		if code != 0 || !strings.HasPrefix(out, "warren ") {
			t.Fatalf("%v: exit %d\n%s%s", args, code, out, errOut)
		}
	}
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "157f995ada9c17a38d149c0bb60d2888877d7ab4"}, {Key: "vcs.time", Value: "2026-12-05T22:57:23Z"}, {Key: "vcs.modified", Value: "true"},
	}}
	if got, want := versionOf(bi), "v1.2.3 (commit 157f995ada9c+modified, 2026-12-05T22:57:23Z, go1.26.8)"; got != want {
		t.Errorf("versionOf = %q, want %q", got, want)
	}
	if got, want := versionOf(&debug.BuildInfo{}), "(devel) (no commit recorded)"; got != want {
		t.Errorf("versionOf = %q, want %q", got, want)
	}
}
