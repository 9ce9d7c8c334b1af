package mapper_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
)

// TestAgentCountsInHeartbeats: an agent reports the requests it has in hand
// and has handled in its heartbeats, and the registry shows them.
func TestAgentCountsInHeartbeats(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		id, path, slow := actor+"-a", "/"+actor+"/echo", "/"+actor+"/slow"
		release := make(chan struct{})
		runAgent(t, connect, agent.Config{Identity: id}, func(a *agent.Agent) {
			must(t, a.Handle(path, agent.Func(func(_ context.Context, s string) (string, error) { return s, nil })))
			must(t, a.Handle(slow, agent.Func(func(ctx context.Context, _ string) (string, error) {
				select {
				case <-release:
				case <-ctx.Done():
				}
				return "", nil
			})))
		})
		m := startMapper(t, connect, mapper.Config{})
		waitLive(t, m, actor, id)
		for range 3 {
			_, err := m.Request(ctxT(t, 5*time.Second), path, "x")
			must(t, err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := m.Request(ctxT(t, 20*time.Second), slow, "x")
			done <- err
		}()
		counts := func(inFlight, handled int64) func() error {
			return func() error {
				for _, a := range m.Agents() {
					if a.Identity == id {
						if a.InFlight != inFlight || a.Handled != handled {
							return fmt.Errorf("in flight %d, handled %d; want %d, %d", a.InFlight, a.Handled, inFlight, handled)
						}
						return nil
					}
				}
				return fmt.Errorf("%s not listed", id)
			}
		}
		testenv.WaitFor(t, 10*time.Second, counts(1, 3))
		close(release)
		must(t, <-done)
		testenv.WaitFor(t, 10*time.Second, counts(0, 4))
	})
}
