package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport/amqp"
)

var buildOnce = sync.OnceValues(func() (string, error) {
	dir, err := mkdirTemp()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "warren")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/warrenrpc/warren/cmd/warren").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build: %v\n%s", err, out)
	}
	return bin, nil
})

// faultRun starts agents a and b as processes, sends n requests with 16 in
// flight from a mapper in this process, and calls fault(a) after the first
// n/4 results. It returns the figures.
func faultRun(t *testing.T, n int, fault func(a *exec.Cmd)) (sent, delivered, failed int64) {
	url := testenv.AMQPURL(t)
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	tag := fabrictest.Actor()
	var procs []*exec.Cmd
	for _, name := range []string{"a", "b"} {
		cmd := exec.Command(bin, "agent", "--broker", url, "--token", tag+"-"+name, "--tag", tag, "--ping", "200ms", "--prefetch", "8", "--drain-timeout", "10s")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, cmd)
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			if t.Failed() {
				t.Logf("agent %s stderr:\n%s", name, stderr.String())
			}
		})
	}
	tr, err := amqp.Dial(t.Context(), url, amqp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() }) // after the mapper's cleanup
	m := fabrictest.RunMapper(t, tr, mapper.Config{})
	ctx := t.Context()
	testenv.WaitFor(t, 15*time.Second, func() error {
		live := 0
		for _, a := range m.Agents() {
			if a.HasTags(tag) {
				live++
			}
		}
		if live != 2 {
			return fmt.Errorf("%d agents live", live)
		}
		return nil
	})

	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	var faultOnce sync.Once
	results := make([]atomic.Int64, n)
	for i := range n {
		sem <- struct{}{}
		sent++
		wg.Go(func() {
			defer func() { <-sem }()
			rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
			defer rcancel()
			// Each request sleeps 20ms so that some are in hand when the
			// fault strikes; it echoes its number back.
			r, err := m.Request(rctx, "/simple/echo", i, mapper.WithTags(tag), mapper.Select(mapper.RoundRobin()))
			if err != nil {
				t.Errorf("request %d: %v", i, err)
				return
			}
			var got int
			if err := r.Decode(&got); err != nil || got != i {
				t.Errorf("request %d: got %d (%v)", i, got, err)
				return
			}
			results[i].Add(1)
		})
		if i == n/4 {
			faultOnce.Do(func() { fault(procs[0]) })
		}
	}
	wg.Wait()
	for i := range results {
		switch results[i].Load() {
		case 1:
			delivered++
		case 0:
			failed++
		default:
			t.Errorf("request %d answered %d times", i, results[i].Load())
		}
	}
	return sent, delivered, failed
}

func TestFaultAgentSIGKILLUnderLoad(t *testing.T) {
	start := time.Now()
	sent, delivered, failed := faultRun(t, 400, func(a *exec.Cmd) { a.Process.Signal(syscall.SIGKILL) })
	t.Logf("SIGKILL mid-load: sent %d, results delivered %d, lost %d, duplicated results 0, in %v", sent, delivered, failed, time.Since(start).Round(time.Millisecond))
	if delivered != sent {
		t.Fatalf("%d of %d requests unanswered", failed, sent)
	}
}

func TestFaultAgentSIGTERMUnderLoad(t *testing.T) {
	start := time.Now()
	var exit error
	var exited = make(chan struct{})
	sent, delivered, failed := faultRun(t, 400, func(a *exec.Cmd) {
		a.Process.Signal(syscall.SIGTERM)
		go func() { exit = a.Wait(); close(exited) }()
	})
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		t.Fatal("agent did not exit after SIGTERM")
	}
	t.Logf("SIGTERM mid-load: sent %d, results delivered %d, lost %d, duplicated results 0, exit %v, in %v", sent, delivered, failed, exit, time.Since(start).Round(time.Millisecond))
	if exit != nil {
		t.Errorf("agent exit after SIGTERM: %v", exit)
	}
	if delivered != sent {
		t.Fatalf("%d of %d requests unanswered", failed, sent)
	}
}

func mkdirTemp() (string, error) { return os.MkdirTemp("", "warren-bin-") }
