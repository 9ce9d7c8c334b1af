//go:build unix

package mapper_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

// BenchmarkFanIn: N simulated agents (10,000 by default) heartbeat at the
// default interval (15s) to 2 mappers, on the embedded broker ("mem") and,
// when WARREN_BENCH_AMQP_URL names a broker (use a vhost of its own: every
// mapper on the vhost gets these heartbeats), on RabbitMQ. Run it alone:
//
//	go test ./mapper/ -run '^$' -bench BenchmarkFanIn -benchtime 1x -timeout 30m
//
// One process holds the simulator, the broker (mem) and the mappers, so a
// mapper's CPU is measured as a difference: each round measures the
// process's CPU time (getrusage) for one window with the simulator alone,
// then for one window with the 2 mappers too; a mapper's share is half the
// difference. On mem it includes the broker's work of delivering the
// heartbeats to the mappers' queues; on RabbitMQ the broker is another
// process. Memory is the live heap after a GC with the mappers, less
// without, halved. "know" is the time from a mapper's start until it has
// every agent: its announce makes every simulated agent ping at once, as
// real agents do.
//
// With WARREN_BENCH_BROKER_PID (the pid of a RabbitMQ node of its own, not
// shared: beam.smp), the broker's CPU is measured in both windows too.
//
// WARREN_BENCH_AGENTS, WARREN_BENCH_MAPPERS, WARREN_BENCH_INTERVAL (a
// duration), WARREN_BENCH_ROUNDS and WARREN_BENCH_WINDOW change the defaults
// (10000, 2, 15s, 3, one interval).
// The figures are medians and quartiles over the rounds.
func BenchmarkFanIn(b *testing.B) {
	b.Run("mem", func(b *testing.B) {
		broker := mem.NewBroker()
		defer broker.Close()
		fanIn(b, func() (transport.Transport, error) { return broker.Connect(), nil })
	})
	b.Run("rabbitmq", func(b *testing.B) {
		url := os.Getenv("WARREN_BENCH_AMQP_URL")
		if url == "" {
			b.Skip("WARREN_BENCH_AMQP_URL is unset (give it a vhost of its own)")
		}
		fanIn(b, func() (transport.Transport, error) {
			return amqp.Dial(context.Background(), url, amqp.Config{})
		})
	})
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU returns the CPU time of process pid from /proc (utime + stime,
// in clock ticks of 10 ms), or 0 when pid is 0 or unreadable.
func procCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command (which may hold spaces), from state on.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// quartiles returns the 25th, 50th and 75th percentiles of xs.
func quartiles(xs []float64) (q1, med, q3 float64) {
	s := slices.Sorted(slices.Values(xs))
	at := func(p float64) float64 {
		f := p * float64(len(s)-1)
		i := int(f)
		if i+1 >= len(s) {
			return s[len(s)-1]
		}
		return s[i] + (f-float64(i))*(s[i+1]-s[i])
	}
	return at(0.25), at(0.5), at(0.75)
}

// simulator publishes the heartbeats of n agents, each every interval,
// spread evenly, and answers announces as agents do: all ping at once.
type simulator struct {
	tr       transport.Transport
	n        int
	interval time.Duration
	started  time.Time
	sent     atomic.Int64
}

func (s *simulator) beat(ctx context.Context, i int) error {
	id := fmt.Sprintf("sim-%05d", i)
	hb := wire.Heartbeat{
		Identity: id, Queue: wire.AgentQueue(id),
		Services:     []string{fmt.Sprintf("/sim/s%02d", i%20), "/sim/all"},
		Tags:         []string{[]string{"eu", "us"}[i%2]},
		Status:       float64(rand.IntN(10)),
		PingInterval: s.interval.Milliseconds(), Started: s.started,
	}
	msg, err := wire.NewHeartbeat(wire.TypePing, hb)
	if err != nil {
		return err
	}
	s.sent.Add(1)
	return s.tr.Publish(ctx, wire.HeartbeatExchange, "", msg, transport.PublishOptions{})
}

func (s *simulator) run(ctx context.Context, b *testing.B) {
	q, err := s.tr.DeclareQueue(ctx, transport.Queue{Exclusive: true, AutoDelete: true})
	if err != nil {
		b.Fatal(err)
	}
	if err := s.tr.Bind(ctx, transport.Binding{Exchange: wire.ControlExchange, Queue: q}); err != nil {
		b.Fatal(err)
	}
	announces, err := s.tr.Consume(ctx, q, transport.ConsumeOptions{AutoAck: true})
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		for d := range announces {
			if d.Type != wire.TypeAnnounce {
				continue
			}
			for i := range s.n {
				if s.beat(ctx, i) != nil {
					return
				}
			}
		}
	})
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	t0 := time.Now()
	done := 0 // beats of the periodic schedule sent
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			due := int(int64(now.Sub(t0)) * int64(s.n) / int64(s.interval))
			for ; done < due; done++ {
				if err := s.beat(ctx, done%s.n); err != nil {
					if ctx.Err() == nil {
						b.Error(err)
					}
					return
				}
			}
		}
	}
}

func fanIn(b *testing.B, connect func() (transport.Transport, error)) {
	n := envInt("WARREN_BENCH_AGENTS", 10000)
	interval := envDuration("WARREN_BENCH_INTERVAL", 15*time.Second)
	rounds := envInt("WARREN_BENCH_ROUNDS", 3)
	window := envDuration("WARREN_BENCH_WINDOW", interval)
	mappers := envInt("WARREN_BENCH_MAPPERS", 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	simTr, err := connect()
	if err != nil {
		b.Fatal(err)
	}
	defer simTr.Close()
	if err := wire.Topology(ctx, simTr); err != nil {
		b.Fatal(err)
	}
	sim := &simulator{tr: simTr, n: n, interval: interval, started: time.Now()}
	simDone := make(chan struct{})
	go func() { defer close(simDone); sim.run(ctx, b) }()
	defer func() { cancel(); <-simDone }()
	// Let the schedule go round once, so that later mappers' registries
	// fill from pings as well as announces.
	time.Sleep(min(interval, 2*time.Second))

	brokerPid := envInt("WARREN_BENCH_BROKER_PID", 0)
	var cpuPct, heapMB, knowMs, bytesPerAgent, brokerA, brokerB []float64
	for round := range rounds {
		// Window A: the simulator alone.
		heap0 := liveHeap()
		c0, b0, t0 := cpuTime(), procCPU(brokerPid), time.Now()
		time.Sleep(window)
		simRate := float64(cpuTime()-c0) / float64(time.Since(t0))
		brokerA = append(brokerA, 100*float64(procCPU(brokerPid)-b0)/float64(time.Since(t0)))

		// Start the mappers; time until each knows every agent.
		var ms []*mapper.Mapper
		var stops []func()
		for range mappers {
			tr, err := connect()
			if err != nil {
				b.Fatal(err)
			}
			var joined atomic.Int64
			start := time.Now()
			m, err := mapper.New(tr, mapper.Config{}, mapper.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
				mapper.WithEvents(func(e mapper.Event) {
					if e.Kind == mapper.AgentJoined {
						joined.Add(1)
					}
				}))
			if err != nil {
				b.Fatal(err)
			}
			mctx, mcancel := context.WithCancel(ctx)
			runDone := make(chan error, 1)
			go func() { runDone <- m.Run(mctx) }()
			stops = append(stops, func() {
				mcancel()
				if err := <-runDone; err != nil {
					b.Errorf("mapper Run: %v", err)
				}
				tr.Close()
			})
			deadline := time.Now().Add(2*interval + 30*time.Second)
			for {
				if joined.Load() >= int64(n) || len(m.Agents()) >= n {
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("round %d: a mapper knows %d of %d agents after %s", round, len(m.Agents()), n, time.Since(start))
				}
				time.Sleep(5 * time.Millisecond)
				if joined.Load() < int64(n) {
					time.Sleep(45 * time.Millisecond) // Agents() copies them all: not too often
				}
			}
			knowMs = append(knowMs, float64(time.Since(start).Milliseconds()))
			ms = append(ms, m)
		}

		// Window B: the simulator and the mappers.
		time.Sleep(time.Second) // the announce bursts are done
		c1, b1, t1 := cpuTime(), procCPU(brokerPid), time.Now()
		time.Sleep(window)
		wall := time.Since(t1)
		brokerB = append(brokerB, 100*float64(procCPU(brokerPid)-b1)/float64(wall))
		extra := float64(cpuTime()-c1)/float64(wall) - simRate
		cpuPct = append(cpuPct, 100*extra/float64(mappers))
		heap1 := liveHeap()
		perMapper := (float64(heap1) - float64(heap0)) / float64(mappers)
		heapMB = append(heapMB, perMapper/(1<<20))
		bytesPerAgent = append(bytesPerAgent, perMapper/float64(n))
		for _, m := range ms {
			if got := len(m.Agents()); got != n {
				b.Errorf("round %d: a mapper knows %d agents, want %d", round, got, n)
			}
		}
		for _, stop := range stops {
			stop()
		}
		b.Logf("round %d: mapper CPU %.2f%% of a core each (simulator alone %.2f%%), heap %.1f MB each, know %v ms",
			round, cpuPct[round], 100*simRate, heapMB[round], knowMs[len(knowMs)-mappers:])
	}
	report := func(name, unit string, xs []float64) {
		q1, med, q3 := quartiles(xs)
		b.ReportMetric(med, unit)
		b.Logf("%s: median %.2f, quartiles %.2f-%.2f %s (%d samples)", name, med, q1, q3, unit, len(xs))
	}
	b.Logf("%d agents, ping every %v (%.0f heartbeats/s), %d mappers, %d rounds of %v windows, %d heartbeats sent",
		n, interval, float64(n)/interval.Seconds(), mappers, rounds, window, sim.sent.Load())
	report("CPU per mapper", "%core/mapper", cpuPct)
	report("heap per mapper", "MB/mapper", heapMB)
	report("heap per agent per mapper", "B/agent", bytesPerAgent)
	report("time for a new mapper to know every agent", "ms-to-know", knowMs)
	if brokerPid != 0 {
		report("broker CPU, simulator alone", "%core-broker-alone", brokerA)
		report("broker CPU, with the mappers", "%core-broker", brokerB)
	}
}
