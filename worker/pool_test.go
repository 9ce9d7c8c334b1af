package worker

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/testenv"
)

func python(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	return p
}

func runPool(t *testing.T, cfg Config) *Pool {
	t.Helper()
	if cfg.Command == nil {
		cfg.Command = []string{python(t), "testdata/plugin.py"}
	}
	if cfg.Name == "" {
		cfg.Name = "test"
	}
	p, err := New(cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return p
}

func call(t *testing.T, p *Pool, method string, params any) (json.RawMessage, error) {
	t.Helper()
	b, _ := json.Marshal(params)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	return p.Call(ctx, Request{Method: method, Params: b})
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || e.Code != code {
		t.Fatalf("err = %v, want code %s", err, code)
	}
}

func TestPoolCalls(t *testing.T) {
	p := runPool(t, Config{Workers: 2, Env: []string{"GREETING=hello"}})
	res, err := call(t, p, "echo", map[string]any{"a": []int{1, 2}})
	if err != nil || string(res) != `{"a": [1, 2]}` {
		t.Fatalf("echo = %s, %v", res, err)
	}
	if res, err = call(t, p, "env", "GREETING"); err != nil || string(res) != `"hello"` {
		t.Fatalf("env = %s, %v", res, err)
	}
	_, err = call(t, p, "fail", 3)
	wantCode(t, err, "bad_input")
	_, err = call(t, p, "nosuch", nil)
	wantCode(t, err, CodeWorker)
	// The request line carries the deadline.
	res, err = call(t, p, "request", nil)
	if err != nil {
		t.Fatal(err)
	}
	var req map[string]any
	if err := json.Unmarshal(res, &req); err != nil || req["deadline"] == nil || req["timeout_ms"] == nil || req["params"] != nil {
		t.Fatalf("request line = %s, %v", res, err)
	}
	if s := p.Stats(); s.Handled != 5 || s.Failed != 0 {
		t.Fatalf("stats = %+v", s)
	}
}

// TestPoolWorkerFaults: a crash, garbage, a wrong id and a timeout each
// fail their call clearly, and a fresh worker serves the next one.
func TestPoolWorkerFaults(t *testing.T) {
	p := runPool(t, Config{Workers: 1, Timeout: 3 * time.Second})
	for _, c := range []struct {
		method string
		params any
		code   string
	}{
		{"crash", nil, CodeCrashed},
		{"garbage", nil, CodeMalformed},
		{"wrongid", nil, CodeMalformed},
		{"sleep", 30, CodeTimeout},
	} {
		before, _ := call(t, p, "pid", nil)
		_, err := call(t, p, c.method, c.params)
		wantCode(t, err, c.code)
		after, err := call(t, p, "pid", nil)
		if err != nil {
			t.Fatalf("after %s: %v", c.method, err)
		}
		if string(before) == string(after) {
			t.Fatalf("after %s the same worker %s serves", c.method, after)
		}
	}
	if s := p.Stats(); s.Failed != 4 || s.Restarts != 4 {
		t.Fatalf("stats = %+v", s)
	}
}

// TestPoolUnavailable: a plugin that dies at start fails calls at once
// with worker_unavailable, not after the timeout.
func TestPoolUnavailable(t *testing.T) {
	p := runPool(t, Config{Command: []string{"echo broken >&2; exit 4"}, Shell: true, Timeout: time.Minute})
	// The first calls may reach a worker before it dies (worker_crashed);
	// once workers died at start three times, calls fail at once.
	for _, p := range []*Pool{p, runPool(t, Config{Command: []string{"/nonexistent/plugin"}})} {
		start := time.Now()
		var err error
		for range 5 {
			if _, err = call(t, p, "echo", 1); err == nil {
				t.Fatal("a broken plugin answered")
			}
			var e *Error
			if errors.As(err, &e) && e.Code == CodeUnavailable {
				break
			}
			wantCode(t, err, CodeCrashed)
		}
		wantCode(t, err, CodeUnavailable)
		if d := time.Since(start); d > 20*time.Second {
			t.Fatalf("took %v", d)
		}
	}
}

func TestPoolReconfigure(t *testing.T) {
	cfg := Config{Workers: 2, Command: []string{python(t), "testdata/plugin.py"}, Env: []string{"V=1"}}
	p := runPool(t, cfg)
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := call(t, p, "sleep", 0.01); err != nil {
					errs <- err
				}
			}
		})
	}
	for v := range 3 {
		cfg.Env = []string{"V=" + string(rune('2'+v))}
		cfg.Workers = 1 + v
		if err := p.Reconfigure(cfg); err != nil {
			t.Fatal(err)
		}
		want := `"` + string(rune('2'+v)) + `"`
		testenv.WaitFor(t, 20*time.Second, func() error {
			res, err := call(t, p, "env", "V")
			if err != nil {
				return err
			}
			if string(res) != want {
				return errors.New("still " + string(res))
			}
			return nil
		})
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
