package clustertest

import (
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/testenv"
)

// TestClusterDurableAgentNodeKilled: a durable agent (its own queue a
// quorum queue) connected to node 1, which is killed. The quorum queue
// keeps counting the consumer of the agent's lost connection while node 1
// is down, which the agent once took for another agent with its identity:
// it waited, serving nothing, until node 1 came back. Now it consumes again
// on another node, and what is pushed to it is run.
func TestClusterDurableAgentNodeKilled(t *testing.T) {
	urls := testenv.ClusterURLs(t)
	clusterUp(t)
	t.Cleanup(func() { testenv.Cluster(t, "start", "1") })
	f := newFabric(t, urls)
	f.onNode(urls, 1)

	testenv.Cluster(t, "kill", "1")
	killed := time.Now()
	f.offNode(urls, 1)
	l := f.startLoad(1)
	l.more(20)
	fig := l.finish()
	if fig.confirmed == 0 {
		t.Fatal("nothing confirmed")
	}
	t.Logf("node 1 killed: the durable agent's pushes executed on another node %v later", time.Since(killed).Round(time.Millisecond))
}
