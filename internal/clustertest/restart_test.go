package clustertest

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/wire"
)

// TestClusterRollingRestart: a durable agent and a mapper on node 1 under
// confirmed persistent pushes and plain requests; nodes 1, 2 and 3 are
// stopped cleanly and started again, one after another. The fabric keeps
// working with each node down and after it is back.
func TestClusterRollingRestart(t *testing.T) {
	urls := testenv.ClusterURLs(t)
	clusterUp(t)
	down := 0 // the node stopped, if any
	t.Cleanup(func() {
		if down != 0 {
			testenv.Cluster(t, "start", strconv.Itoa(down))
		}
	})
	f := newFabric(t, urls)
	f.onNode(urls, 1)
	l := f.startLoad(4)
	l.more(20)
	t0 := time.Now()
	for n := 1; n <= 3; n++ {
		s0 := time.Now()
		down = n
		testenv.Cluster(t, "stop", strconv.Itoa(n))
		stopped := time.Since(s0)
		without := l.more(20) // 20 pushes confirmed with node n down
		s1 := time.Now()
		testenv.Cluster(t, "start", strconv.Itoa(n))
		down = 0
		started := time.Since(s1)
		l.more(20)
		t.Logf("node %d: stopped in %v, 20 pushes confirmed %v after, started in %v; agent on %s, mapper on %s",
			n, stopped.Round(time.Millisecond), without.Round(time.Millisecond), started.Round(time.Millisecond), f.atr.Node(), f.mtr.Node())
	}
	t.Logf("rolling restart of 3 nodes in %v", time.Since(t0).Round(time.Millisecond))
	l.finish()
}

// TestClusterMinorityCutOff: a durable agent and a mapper on node 1 under
// load; node 1's RabbitMQ application is stopped (rabbitmqctl stop_app:
// the node stays in the cluster, a minority without its queues' replicas
// and its clients' connections) and started again. Both transports go to
// the majority, and nothing confirmed is lost.
func TestClusterMinorityCutOff(t *testing.T) {
	urls := testenv.ClusterURLs(t)
	clusterUp(t)
	cut := false
	t.Cleanup(func() {
		if cut {
			ctl(t, "rabbitmqctl", 1, "start_app")
			ctl(t, "rabbitmqctl", 1, "await_startup", "--timeout", "120")
		}
	})
	f := newFabric(t, urls)
	f.onNode(urls, 1)
	l := f.startLoad(4)
	l.more(30)
	t0 := time.Now()
	cut = true
	ctl(t, "rabbitmqctl", 1, "stop_app")
	stopped := time.Since(t0)
	f.offNode(urls, 1)
	moved := time.Since(t0)
	l.more(30)
	again := time.Since(t0)
	ctl(t, "rabbitmqctl", 1, "start_app")
	ctl(t, "rabbitmqctl", 1, "await_startup", "--timeout", "120")
	cut = false
	l.more(20)
	t.Logf("node 1 cut off (stop_app in %v): both transports on the majority %v after, 30 pushes confirmed %v after",
		stopped.Round(time.Millisecond), moved.Round(time.Millisecond), again.Round(time.Millisecond))
	l.finish()
}

// TestClusterLeaderMoved: under load, the leadership of the durable
// agent's quorum queue is moved to another node, twice
// (rabbit_quorum_queue:transfer_leadership: RabbitMQ 3.10 has no
// rabbitmq-queues transfer_leadership), without any connection lost. The
// publishes during the leader's change are confirmed or reported, the
// consumer keeps receiving, nothing is lost.
func TestClusterLeaderMoved(t *testing.T) {
	urls := testenv.ClusterURLs(t)
	clusterUp(t)
	f := newFabric(t, urls)
	q := wire.AgentQueue(f.id)
	l := f.startLoad(4)
	l.more(30)
	for range 2 {
		from := leader(t, 2, q)
		to := from%3 + 1
		t0 := time.Now()
		out := ctl(t, "rabbitmqctl", to, "eval", fmt.Sprintf(
			`{ok, Q} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>, queue, <<%q>>)), rabbit_quorum_queue:transfer_leadership(Q, 'warren-%d@localhost').`, q, to))
		testenv.WaitFor(t, 30*time.Second, func() error {
			if n := leader(t, 2, q); n != to {
				return fmt.Errorf("leader on node %d, want %d (transfer_leadership: %s)", n, to, out)
			}
			return nil
		})
		moved := time.Since(t0)
		took := l.more(30)
		t.Logf("leader of %s moved from node %d to node %d in %v; 30 more pushes confirmed %v after",
			q, from, to, moved.Round(time.Millisecond), took.Round(time.Millisecond))
	}
	l.finish()
	for _, tr := range []*amqp.Transport{f.atr, f.mtr} {
		if st := tr.Stats(); st.Losses != 0 {
			t.Errorf("a transport lost its connection %d times", st.Losses)
		}
	}
}
