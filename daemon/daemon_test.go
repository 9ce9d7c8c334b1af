package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/simple"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/secure"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

func needPython(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
}

// parse reads a config written in a test; relative paths are relative to
// this package.
func parse(t *testing.T, yml string) *Config {
	t.Helper()
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse([]byte(yml), "test.yaml", dir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// start runs a daemon on tr until the end of the test and returns it once
// it serves.
func start(t *testing.T, cfg *Config, tr transport.Transport, opts ...Option) *Daemon {
	t.Helper()
	d, err := New(cfg, tr, append([]Option{WithLogger(testenv.Logger(t))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	fabrictest.RunUntilCleanup(t, "daemon "+cfg.Identity, d.Run, d.Ready())
	return d
}

func request(t *testing.T, m *mapper.Mapper, path string, payload any, opts ...mapper.CallOption) (json.RawMessage, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	r, err := m.Request(ctx, path, payload, opts...)
	if err != nil {
		return nil, err
	}
	return r.Body, r.Err
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	var re *wire.RemoteError
	if !errors.As(err, &re) || re.Code != code {
		t.Fatalf("err = %v, want code %s", err, code)
	}
}

func TestDaemonServesPlugins(t *testing.T) {
	needPython(t)
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		id, svc, flt := fabrictest.Actor(), fabrictest.Actor(), fabrictest.Actor()
		cfg := parse(t, fmt.Sprintf(`
identity: %s
status: {source: constant, value: 7}
services:
  %s:
    command: [python3, ../examples/plugins/echo.py]
    methods: [echo, upcase, greet]
    workers: 2
    config: {greeting: hey}
  %s:
    command: [python3, testdata/faulty.py]
    methods: [crash, pid, garbage, sleep]
    timeout: 2s
`, id, svc, flt))
		start(t, cfg, connect(t))
		m := fabrictest.RunMapper(t, connect(t), mapper.Config{})

		for _, c := range []struct {
			path    string
			payload any
			want    string
		}{
			{"/" + svc + "/upcase", "hi", `"HI"`},
			{"/" + svc + "/greet", "bob", `"hey, bob"`},
			{"/" + svc + "/echo", map[string]any{"a": []int{1}}, `{"a":[1]}`},
		} {
			res, err := request(t, m, c.path, c.payload)
			if err != nil || string(res) != c.want {
				t.Fatalf("%s = %s, %v; want %s", c.path, res, err, c.want)
			}
		}
		_, err := request(t, m, "/"+svc+"/upcase", 5)
		wantCode(t, err, "bad_request")

		// A worker crashing in the middle of a call fails that call
		// clearly; a fresh worker serves the next.
		before, err := request(t, m, "/"+flt+"/pid", nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = request(t, m, "/"+flt+"/crash", nil)
		wantCode(t, err, "worker_crashed")
		after, err := request(t, m, "/"+flt+"/pid", nil)
		if err != nil || string(after) == string(before) {
			t.Fatalf("after the crash: pid %s (before %s), %v", after, before, err)
		}
		_, err = request(t, m, "/"+flt+"/garbage", nil)
		wantCode(t, err, "worker_malformed")
		_, err = request(t, m, "/"+flt+"/sleep", 60)
		wantCode(t, err, "worker_timeout")

		// The registry shows the status source; the status path the rest.
		testenv.WaitFor(t, 10*time.Second, func() error {
			for _, a := range m.Agents() {
				if a.Identity == id && fmt.Sprint(a.Status) == "7" {
					return nil
				}
			}
			return fmt.Errorf("agents %v", m.Agents())
		})
		res, err := request(t, m, ControlPath(id, VerbStatus), nil, mapper.Select(mapper.Identity(id)))
		if err != nil {
			t.Fatal(err)
		}
		var st Status
		if err := json.Unmarshal(res, &st); err != nil {
			t.Fatal(err)
		}
		if st.Identity != id || len(st.Plugins) != 2 || st.Handled != 5 || st.Failed != 4 || st.InFlight != 0 || len(st.Services) != 7 {
			t.Fatalf("status = %s", res)
		}
		for _, p := range st.Plugins {
			if p.Name == flt && (p.Restarts < 2 || p.Handled != 2 || p.Failed != 3 || p.Workers != 1) {
				t.Fatalf("plugin %s: %+v", flt, p)
			}
		}
	})
}

// TestDaemonReloadUnderLoad: reloads that restart every worker, add a
// service and remove it again, while callers keep the daemon busy: no
// call fails, and each reload takes effect.
func TestDaemonReloadUnderLoad(t *testing.T) {
	needPython(t)
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		id, a, b := fabrictest.Actor(), fabrictest.Actor(), fabrictest.Actor()
		conf := func(v string, workers int, withB bool) *Config {
			y := fmt.Sprintf(`
identity: %s
services:
  %s:
    command: [python3, testdata/faulty.py]
    methods: [sleep, env]
    workers: %d
    env: {V: "%s"}
`, id, a, workers, v)
			if withB {
				y += fmt.Sprintf(`
  %s:
    command: [python3, ../examples/plugins/echo.py]
    methods: [upcase]
`, b)
			}
			return parse(t, y)
		}
		d := start(t, conf("1", 2, false), connect(t))
		m := fabrictest.RunMapper(t, connect(t), mapper.Config{})

		var ok, failed atomic.Int64
		var errs sync.Map
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 6 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := request(t, m, "/"+a+"/sleep", 0.005); err != nil {
						failed.Add(1)
						errs.Store(err.Error(), true)
					} else {
						ok.Add(1)
					}
				}
			})
		}
		waitCalls := func(n int64) {
			base := ok.Load()
			testenv.WaitFor(t, 30*time.Second, func() error {
				if ok.Load() < base+n {
					return fmt.Errorf("%d calls", ok.Load()-base)
				}
				return nil
			})
		}
		waitEnv := func(want string) {
			testenv.WaitFor(t, 30*time.Second, func() error {
				res, err := request(t, m, "/"+a+"/env", "V")
				if err != nil {
					return err
				}
				if string(res) != `"`+want+`"` {
					return fmt.Errorf("V = %s", res)
				}
				return nil
			})
		}
		waitCalls(20)

		res, err := d.Reload(conf("2", 3, true))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Added) != 1 || res.Added[0] != b || len(res.Restarted) != 1 || len(res.Agents) != 2 {
			t.Fatalf("reload = %+v", res)
		}
		waitEnv("2")
		if r, err := request(t, m, "/"+b+"/upcase", "x"); err != nil || string(r) != `"X"` {
			t.Fatalf("added service: %s, %v", r, err)
		}
		waitCalls(20)

		res, err = d.Reload(conf("3", 1, false))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Removed) != 1 || res.Removed[0] != b || len(res.Agents) != 1 {
			t.Fatalf("reload = %+v", res)
		}
		waitEnv("3")
		waitCalls(20)
		close(stop)
		wg.Wait()
		if failed.Load() > 0 {
			var all []string
			errs.Range(func(k, _ any) bool { all = append(all, k.(string)); return true })
			t.Fatalf("%d of %d calls failed during the reloads: %s", failed.Load(), failed.Load()+ok.Load(), strings.Join(all, "; "))
		}
		t.Logf("%d calls, none failed, through 2 reloads", ok.Load())
		st := d.Status()
		if st.Reloads != 2 || len(st.Plugins) != 1 || st.Plugins[0].Workers != 1 {
			t.Fatalf("status = %+v", st)
		}
		testenv.WaitFor(t, 30*time.Second, func() error {
			for _, ag := range m.Agents() {
				if ag.Identity == id+".1" {
					return fmt.Errorf("the retired agent %s is still registered", ag.Identity)
				}
			}
			return nil
		})
	})
}

// TestDaemonStopDrains: stopping the daemon lets the calls in hand finish.
func TestDaemonStopDrains(t *testing.T) {
	needPython(t)
	b := mem.NewBroker()
	id, a := fabrictest.Actor(), fabrictest.Actor()
	cfg := parse(t, fmt.Sprintf(`
identity: %s
services:
  %s:
    command: [python3, testdata/faulty.py]
    methods: [sleep]
    workers: 3
`, id, a))
	tr := b.Connect()
	defer tr.Close()
	d, err := New(cfg, tr, WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(context.Background()) }()
	<-d.Ready()
	m := fabrictest.RunMapper(t, b.Connect(), mapper.Config{})
	results := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := request(t, m, "/"+a+"/sleep", 1)
			results <- err
		}()
	}
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n := d.Status().InFlight; n != 3 {
			return fmt.Errorf("%d in flight", n)
		}
		return nil
	})
	d.Stop()
	for range 3 {
		if err := <-results; err != nil {
			t.Errorf("call in hand at stop: %v", err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestDaemonIdentityInUse(t *testing.T) {
	needPython(t)
	b := mem.NewBroker()
	id, a := fabrictest.Actor(), fabrictest.Actor()
	yml := fmt.Sprintf(`
identity: %s
services:
  %s:
    command: [python3, ../examples/plugins/echo.py]
    methods: [echo]
`, id, a)
	start(t, parse(t, yml), b.Connect())
	d2, err := New(parse(t, yml), b.Connect(), WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	err = d2.Run(t.Context())
	if !errors.Is(err, ErrIdentityInUse) || !strings.Contains(err.Error(), "already runs (pid") {
		t.Fatalf("second daemon: %v", err)
	}
}

func TestDaemonPluginDiesAtStart(t *testing.T) {
	b := mem.NewBroker()
	cfg := parse(t, `
identity: broken
services:
  broken:
    command: "echo 'cannot import foo' >&2; exit 1"
    methods: [x]
`)
	d, err := New(cfg, b.Connect(), WithLogger(testenv.Logger(t)), WithIdentityProbe(0))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err = d.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "service broken does not start") || !strings.Contains(err.Error(), "exit status 1") {
		t.Fatalf("Run = %v", err)
	}
}

// TestDaemonErnieHandler: an Ernie external handler in Ruby (Ernie's
// library and a module exposed with Ernie.expose) served as a plugin.
func TestDaemonErnieHandler(t *testing.T) {
	if err := exec.Command("ruby", "-e", `require "bert"`).Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("ruby with the bert gem not installed under CI (scripts/deps.d/ruby-erlang): %v", err)
		}
		t.Skip("ruby with the bert gem not installed (scripts/deps.d/ruby-erlang)")
	}
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		id, svc := fabrictest.Actor(), fabrictest.Actor()
		start(t, parse(t, fmt.Sprintf(`
identity: %s
services:
  %s:
    protocol: ernie
    module: ext
    command: [ruby, -I, ../bertrpc/testdata/ruby, ../bertrpc/testdata/ruby/ext.rb]
    methods: [add, echo, raise_error, crash, pid, argv]
    workers: 2
`, id, svc)), connect(t))
		m := fabrictest.RunMapper(t, connect(t), mapper.Config{})
		p := "/" + svc + "/"
		for _, c := range []struct {
			method  string
			payload any
			want    string
		}{
			{"add", []int{1, 2}, `3`},
			{"echo", map[string]any{"a": []any{"b", 1.5, true, nil}}, `{"a":["b",1.5,true,null]}`},
			{"echo", "solo", `"solo"`},
		} {
			res, err := request(t, m, p+c.method, c.payload)
			if err != nil || string(res) != c.want {
				t.Fatalf("%s = %s, %v; want %s", c.method, res, err, c.want)
			}
		}
		res, err := request(t, m, p+"argv", nil)
		if err != nil || !strings.Contains(string(res), `"--procline"`) {
			t.Fatalf("argv = %s, %v", res, err)
		}
		_, err = request(t, m, p+"raise_error", []string{"boom"})
		wantCode(t, err, "handler_error")
		if !strings.Contains(err.Error(), "ArgumentError: boom") {
			t.Fatalf("raise_error: %v", err)
		}
		_, err = request(t, m, p+"crash", nil)
		wantCode(t, err, "worker_crashed")
		if res, err := request(t, m, p+"add", []int{2, 2}); err != nil || string(res) != "4" {
			t.Fatalf("after the crash: %s, %v", res, err)
		}
	})
}

// TestExampleConfigServes: examples/warren.yaml serves each of its example
// plugins (Python, Ruby, shell with jq, an Ernie handler in Ruby).
func TestExampleConfigServes(t *testing.T) {
	for _, p := range []string{"python3", "ruby", "jq"} {
		if _, err := exec.LookPath(p); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s not installed under CI (scripts/deps.d)", p)
			}
			t.Skipf("%s not installed", p)
		}
	}
	cfg, err := Load("../examples/warren.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b := mem.NewBroker()
	start(t, cfg, b.Connect(), WithGoServices(Service("simple", func(env Env) (any, error) {
		return simple.Simple{Identity: env.Identity}, nil
	})))
	m := fabrictest.RunMapper(t, b.Connect(), mapper.Config{})
	for _, c := range []struct {
		path    string
		payload any
		want    string
	}{
		{"/echo/greet", "bob", `"hello from Warren, bob"`},
		{"/words/top", "a b a c", `["a","b","c"]`},
		{"/calc/add", []int{2, 3}, `5`},
		{"/calc/mean", []any{[]int{1, 2}}, `1.5`},
		{"/sysinfo/disk_free", "/", ""},
		{"/simple/whoami", nil, `"warren-example"`},
	} {
		res, err := request(t, m, c.path, c.payload)
		if err != nil || (c.want != "" && string(res) != c.want) {
			t.Fatalf("%s = %s, %v; want %s", c.path, res, err, c.want)
		}
	}
	_, err = request(t, m, "/calc/fail", []string{"nope"})
	wantCode(t, err, "handler_error")
}

type adder struct{ Base int }

func (a *adder) Add(ctx context.Context, n int) (int, error) { return a.Base + n, nil }
func (a *adder) Fail(ctx context.Context) error              { return errors.New("no") }

// TestDaemonGoService: a Go service compiled in serves next to a plugin,
// gets its config, survives a reload (which reports its change as needing
// a restart), and a config naming a Go service the binary lacks is refused.
func TestDaemonGoService(t *testing.T) {
	needPython(t)
	b := mem.NewBroker()
	id, plug := fabrictest.Actor(), fabrictest.Actor()
	conf := func(base int) *Config {
		return parse(t, fmt.Sprintf(`
identity: %s
services:
  calc:
    go: true
    config: {Base: %d}
  %s:
    command: [python3, ../examples/plugins/echo.py]
    methods: [upcase]
`, id, base, plug))
	}
	newAdder := func(env Env) (any, error) {
		if env.Identity != id || env.Name != "calc" {
			return nil, fmt.Errorf("env %+v", env)
		}
		a := &adder{}
		return a, json.Unmarshal(env.Config, a)
	}
	if _, err := New(conf(1), b.Connect()); err == nil || !strings.Contains(err.Error(), `test.yaml:5:5: services.calc.go: this binary has no Go service "calc"`) {
		t.Fatalf("New without the Go service: %v", err)
	}
	d := start(t, conf(40), b.Connect(), WithGoServices(Service("calc", newAdder)))
	m := fabrictest.RunMapper(t, b.Connect(), mapper.Config{})
	if res, err := request(t, m, "/calc/add", 2); err != nil || string(res) != "42" {
		t.Fatalf("/calc/add = %s, %v", res, err)
	}
	_, err := request(t, m, "/calc/fail", nil)
	wantCode(t, err, "handler_error")
	res, err := d.Reload(conf(0))
	if err != nil || strings.Join(res.NeedsRestart, ",") != "services.calc" {
		t.Fatalf("reload = %+v, %v", res, err)
	}
	if res, err := request(t, m, "/calc/add", 2); err != nil || string(res) != "42" {
		t.Fatalf("/calc/add after the reload = %s, %v", res, err)
	}
	st := d.Status()
	if len(st.Plugins) != 2 || st.Plugins[0].Protocol != "go" || strings.Join(st.Plugins[0].Methods, ",") != "add,fail" {
		t.Fatalf("status plugins %+v", st.Plugins)
	}
	if _, err := Parse([]byte("services:\n  calc:\n    go: true\n    command: [x]\n"), "w.yaml", "."); err == nil || !strings.Contains(err.Error(), "w.yaml:3:5: services.calc.go: a Go service takes only config") {
		t.Fatalf("go with a command: %v", err)
	}
}

// TestDaemonSecureMode: in secure mode the daemon serves its plugins under
// its certificate's identity; a reload that restarts workers works, one
// that adds a service is refused with the reason (a second agent would
// need a certificate of its own).
func TestDaemonSecureMode(t *testing.T) {
	needPython(t)
	ca, err := secure.NewCA("warren test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b := mem.NewBroker()
	wrap := func(name string) transport.Transport {
		id, err := ca.Issue(name, secure.CertOptions{})
		if err != nil {
			t.Fatal(err)
		}
		tr, err := secure.Wrap(b.Connect(), secure.Config{Identity: id, Authority: ca.Authority()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		return tr
	}
	id, a, extra := fabrictest.Actor(), fabrictest.Actor(), fabrictest.Actor()
	conf := func(withExtra bool) *Config {
		y := fmt.Sprintf("identity: %s\nservices:\n  %s:\n    command: [python3, ../examples/plugins/echo.py]\n    methods: [upcase]\n", id, a)
		if withExtra {
			y += fmt.Sprintf("  %s:\n    command: [python3, ../examples/plugins/echo.py]\n    methods: [upcase]\n", extra)
		}
		return parse(t, y)
	}
	d := start(t, conf(false), wrap(id), WithSecureMode())
	caller := fabrictest.Actor()
	m := fabrictest.RunMapper(t, wrap(caller), mapper.Config{Identity: caller})
	if res, err := request(t, m, "/"+a+"/upcase", "s"); err != nil || string(res) != `"S"` {
		t.Fatalf("secure call: %s, %v", res, err)
	}
	if _, err := d.Reload(conf(false)); err != nil {
		t.Fatalf("reload restarting workers: %v", err)
	}
	_, err = d.Reload(conf(true))
	if err == nil || !strings.Contains(err.Error(), "secure mode: new services (/"+extra+"/upcase) need a restart") {
		t.Fatalf("reload adding a service: %v", err)
	}
	if st := d.Status(); !strings.Contains(st.LastReloadErr, "secure mode") || len(st.Plugins) != 1 {
		t.Fatalf("status after the refused reload: %+v", st)
	}
	if res, err := request(t, m, "/"+a+"/upcase", "t"); err != nil || string(res) != `"T"` {
		t.Fatalf("secure call after the reloads: %s, %v", res, err)
	}
}

// TestDaemonStatusCommand: status source command advertises the
// command's output (JSON, else a string).
func TestDaemonStatusCommand(t *testing.T) {
	needPython(t)
	b := mem.NewBroker()
	id, a := fabrictest.Actor(), fabrictest.Actor()
	start(t, parse(t, fmt.Sprintf(`
identity: %s
ping_interval: 100ms
status: {source: command, command: "echo 0.25"}
services:
  %s:
    command: [python3, ../examples/plugins/echo.py]
    methods: [upcase]
`, id, a)), b.Connect())
	m := fabrictest.RunMapper(t, b.Connect(), mapper.Config{})
	testenv.WaitFor(t, 20*time.Second, func() error {
		for _, ag := range m.Agents() {
			if ag.Identity == id && fmt.Sprint(ag.Status) == "0.25" {
				return nil
			}
		}
		return fmt.Errorf("agents %+v", m.Agents())
	})
}
