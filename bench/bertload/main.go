// Command bertload drives a BERT-RPC server (warren bert or Ernie) with
// {call, nat, add, [1, 2]} for a fixed time and prints one line of results:
// calls/s and, given the server's pid, calls per server CPU-second (user +
// system time from /proc/PID/stat, Linux only). bench/ernie-vs-warren.sh
// runs it; it is not part of Warren.
//
//	bertload -addr 127.0.0.1:8000 -shape kept -conns 16 -duration 5s -pid 1234
//
// Shapes: "new" opens a connection per call (Ernie closes after each reply,
// so this is Ernie's only shape), "kept" keeps each connection open with one
// call in flight, "pipe" keeps -depth calls in flight per connection.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenrpc/warren/bert"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8000", "server address")
	shape := flag.String("shape", "kept", "new, kept or pipe")
	conns := flag.Int("conns", 16, "concurrent connections")
	depth := flag.Int("depth", 16, "calls in flight per connection (pipe)")
	dur := flag.Duration("duration", 5*time.Second, "measured time")
	pid := flag.Int("pid", 0, "server pid, for its CPU time")
	label := flag.String("label", "", "label printed first")
	mod := flag.String("mod", "nat", "module of the add/2 called")
	flag.Parse()
	if err := run(*addr, *mod, *shape, *conns, *depth, *dur, *pid, *label); err != nil {
		fmt.Fprintln(os.Stderr, "bertload:", err)
		os.Exit(1)
	}
}

func run(addr, mod, shape string, conns, depth int, dur time.Duration, pid int, label string) error {
	reqBody, err := bert.Marshal(bert.Tuple{bert.Atom("call"), bert.Atom(mod), bert.Atom("add"), bert.List{1, 2}})
	if err != nil {
		return err
	}
	req := append(binary.BigEndian.AppendUint32(nil, uint32(len(reqBody))), reqBody...)
	want, err := bert.Marshal(bert.Tuple{bert.Atom("reply"), 3})
	if err != nil {
		return err
	}
	var (
		calls    atomic.Int64
		stop     atomic.Bool
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err })
		stop.Store(true)
	}
	readReply := func(br *bufio.Reader, buf []byte) ([]byte, error) {
		var h [4]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return buf, err
		}
		n := int(binary.BigEndian.Uint32(h[:]))
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(br, buf); err != nil {
			return buf, err
		}
		if !bytes.Equal(buf, want) {
			v, _ := bert.Unmarshal(buf)
			return buf, fmt.Errorf("unexpected reply %v", v)
		}
		return buf, nil
	}
	worker := func() {
		defer wg.Done()
		var buf []byte
		switch shape {
		case "new":
			for !stop.Load() {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					fail(err)
					return
				}
				if _, err := c.Write(req); err != nil {
					c.Close()
					fail(err)
					return
				}
				buf, err = readReply(bufio.NewReaderSize(c, 256), buf)
				c.Close()
				if err != nil {
					fail(err)
					return
				}
				calls.Add(1)
			}
		case "kept", "pipe":
			c, err := net.Dial("tcp", addr)
			if err != nil {
				fail(err)
				return
			}
			defer c.Close()
			br := bufio.NewReaderSize(c, 64<<10)
			d := 1
			if shape == "pipe" {
				d = depth
			}
			batch := bytes.Repeat(req, d)
			// Keep d calls in flight: send d, then one more per reply
			// read; at the stop, read what is outstanding.
			if _, err := c.Write(batch); err != nil {
				fail(err)
				return
			}
			inflight := d
			for inflight > 0 {
				buf, err = readReply(br, buf)
				if err != nil {
					fail(err)
					return
				}
				calls.Add(1)
				inflight--
				// Refill in batches of half the depth, so that the
				// client does not write once per call either.
				if !stop.Load() && (inflight <= d/2 || d == 1) {
					n := d - inflight
					if _, err := c.Write(batch[:n*len(req)]); err != nil {
						fail(err)
						return
					}
					inflight += n
				}
			}
		default:
			fail(fmt.Errorf("unknown shape %q", shape))
		}
	}
	cpu0, err := cpuSeconds(pid)
	if err != nil {
		return err
	}
	start := time.Now()
	for range conns {
		wg.Add(1)
		go worker()
	}
	time.Sleep(dur)
	stop.Store(true)
	wg.Wait()
	el := time.Since(start).Seconds()
	cpu1, _ := cpuSeconds(pid)
	if firstErr != nil {
		return firstErr
	}
	n := float64(calls.Load())
	cpu := cpu1 - cpu0
	perCPU := 0.0
	if cpu > 0 {
		perCPU = n / cpu
	}
	fmt.Printf("%s calls=%d secs=%.2f calls_per_s=%.0f server_cpu_s=%.2f calls_per_cpu_s=%.0f\n",
		label, calls.Load(), el, n/el, cpu, perCPU)
	return nil
}

// cpuSeconds is the user+system CPU time of pid (0: none) and of its
// descendants (an external handler's workers), from /proc.
func cpuSeconds(pid int) (float64, error) {
	if pid == 0 {
		return 0, nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	type proc struct {
		ppid int
		cpu  float64
	}
	procs := map[int]proc{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+2 > len(s) {
			continue
		}
		// Fields after the name: state(0) ppid(1) ... utime(11) stime(12).
		f := strings.Fields(s[i+2:])
		if len(f) < 13 {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		u, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		procs[p] = proc{pp, (u + st) / 100} // USER_HZ is 100 on Linux
	}
	if _, ok := procs[pid]; !ok {
		return 0, errors.New("no process " + strconv.Itoa(pid))
	}
	total := 0.0
	for p, pr := range procs {
		for q := p; q > 1; q = procs[q].ppid {
			if q == pid {
				total += pr.cpu
				break
			}
			if _, ok := procs[q]; !ok {
				break
			}
		}
	}
	return total, nil
}
