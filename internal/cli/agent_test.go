package cli

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/wire"
)

// TestAgentTokenInUseAndDurableSwitch follows the README: warren agent
// --token ID runs; a second one with the same token exits 1 saying so;
// once the first has stopped, warren agent --token ID --durable starts (it
// replaces the empty plain queue instead of failing with RabbitMQ's
// PRECONDITION_FAILED), and so does the plain agent after it.
func TestAgentTokenInUseAndDurableSwitch(t *testing.T) {
	tr, url := rabbit(t)
	id := fabrictest.Actor()
	t.Cleanup(func() { tr.DeleteQueue(context.Background(), wire.AgentQueue(id)) })
	serve := func(extra ...string) {
		t.Helper()
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		type result struct {
			code   int
			errOut string
		}
		done := make(chan result, 1)
		go func() {
			code, _, errOut := run(t, ctx, append([]string{"agent", "--broker", url, "--token", id, "--ping", "1s"}, extra...)...)
			done <- result{code, errOut}
		}()
		testenv.WaitFor(t, 15*time.Second, func() error {
			select {
			case r := <-done:
				t.Fatalf("agent %v: exit %d\n%s", extra, r.code, r.errOut)
			default:
			}
			code, out, errOut := run(t, t.Context(), "request", "/simple/whoami", "--selector", "agent:"+id, "--broker", url, "--timeout", "3s")
			if code != 0 || strings.TrimSpace(out) != `"`+id+`"` {
				return fmt.Errorf("exit %d %q %s", code, out, errOut)
			}
			return nil
		})
		if len(extra) == 0 {
			code, _, errOut := run(t, t.Context(), "agent", "--broker", url, "--token", id, "--identity-wait", "500ms")
			if code != 1 || !strings.Contains(errOut, "identity in use") || !strings.Contains(errOut, `is another agent "`+id+`" running?`) {
				t.Fatalf("second agent --token %s: exit %d\n%s", id, code, errOut)
			}
			t.Logf("second agent: exit 1, %s", errOut[strings.LastIndex(strings.TrimSpace(errOut), "\n")+1:])
		}
		cancel()
		select {
		case r := <-done:
			if r.code != 0 {
				t.Fatalf("agent %v: exit %d\n%s", extra, r.code, r.errOut)
			}
		case <-time.After(40 * time.Second):
			t.Fatal("agent did not stop")
		}
	}
	serve()
	serve("--durable")
	serve()
}
