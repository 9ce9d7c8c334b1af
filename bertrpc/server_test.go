package bertrpc_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/bert"
	"github.com/warrenrpc/warren/bertrpc"
	"github.com/warrenrpc/warren/internal/testenv"
)

func natConfig() bertrpc.Config {
	return bertrpc.Config{Modules: []bertrpc.ModuleConfig{{Module: "nat", Type: bertrpc.TypeNative}}}
}

func TestNativeCall(t *testing.T) {
	s := startServer(t, natConfig(), bertrpc.WithNative(natRegistry(t)))
	if v := mustCall(t, s, "nat", "add", 1, 2); v != 3 {
		t.Fatalf("add(1,2) = %v", v)
	}
	if v := mustCall(t, s, "nat", "echo", "hello"); string(v.([]byte)) != "hello" {
		t.Fatalf("echo = %v", v)
	}
}

// rawConn speaks BERP by hand, for what the Client does not do.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, s *bertrpc.Server) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addrOf(s))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (r *rawConn) sendBytes(b []byte) {
	r.t.Helper()
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(b)))
	if _, err := r.c.Write(append(hdr[:], b...)); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rawConn) send(term any) {
	r.t.Helper()
	b, err := bert.Marshal(term)
	if err != nil {
		r.t.Fatal(err)
	}
	r.sendBytes(b)
}

func (r *rawConn) recv() any {
	r.t.Helper()
	p, err := bert.ReadPacket(r.br, 1<<20)
	if err != nil {
		r.t.Fatalf("read reply: %v", err)
	}
	v, err := bert.Unmarshal(p)
	if err != nil {
		r.t.Fatal(err)
	}
	return v
}

func callTerm(mod, fun string, args ...any) bert.Tuple {
	if args == nil {
		args = []any{}
	}
	return bert.Tuple{bert.Atom("call"), bert.Atom(mod), bert.Atom(fun), bert.List(args)}
}

func wantTerm(t *testing.T, got any, want any) {
	t.Helper()
	if !bert.Equal(got, want) {
		t.Fatalf("got %s, want %s", bert.Format(got), bert.Format(want))
	}
}

func TestKeptOpenConnection(t *testing.T) {
	s := startServer(t, natConfig(), bertrpc.WithNative(natRegistry(t)))
	r := dialRaw(t, s)
	for i := range 3 {
		r.send(callTerm("nat", "add", i, 10))
		wantTerm(t, r.recv(), bert.Tuple{bert.Atom("reply"), i + 10})
	}
	// Pipelined: two requests before reading; replies come in order.
	r.send(callTerm("nat", "add", 1, 1))
	r.send(callTerm("nat", "add", 2, 2))
	wantTerm(t, r.recv(), bert.Tuple{bert.Atom("reply"), 2})
	wantTerm(t, r.recv(), bert.Tuple{bert.Atom("reply"), 4})
}

func TestCloseAfterReply(t *testing.T) {
	cfg := natConfig()
	cfg.CloseAfterReply = true
	s := startServer(t, cfg, bertrpc.WithNative(natRegistry(t)))
	r := dialRaw(t, s)
	r.send(bert.Tuple{bert.Atom("info"), bert.Atom("priority"), bert.List{bert.Atom("low")}})
	r.send(callTerm("nat", "add", 1, 2))
	wantTerm(t, r.recv(), bert.Tuple{bert.Atom("reply"), 3})
	if _, err := r.br.ReadByte(); err != io.EOF {
		t.Fatalf("connection not closed after the reply: %v", err)
	}
}

func TestCast(t *testing.T) {
	reg := natRegistry(t)
	got := make(chan any, 1)
	if err := reg.Register("nat", "note", 1, func(_ context.Context, args bert.List) (any, error) {
		got <- args[0]
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, natConfig(), bertrpc.WithNative(reg))
	r := dialRaw(t, s)
	r.send(bert.Tuple{bert.Atom("cast"), bert.Atom("nat"), bert.Atom("note"), bert.List{7}})
	wantTerm(t, r.recv(), bert.Tuple{bert.Atom("noreply")})
	select {
	case v := <-got:
		if v != 7 {
			t.Fatalf("cast ran with %v", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cast did not run")
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if c := stat(t, s, "connections.completed"); c != "1" {
			return errors.New("completed=" + c)
		}
		return nil
	})
}

func TestErrors(t *testing.T) {
	reg := natRegistry(t)
	_ = reg.Register("nat", "boom", 0, func(context.Context, bert.List) (any, error) { panic("kaboom") })
	_ = reg.Register("nat", "hang", 0, func(context.Context, bert.List) (any, error) {
		time.Sleep(1500 * time.Millisecond) // ignores ctx: the timeout must still answer in time
		return bert.Atom("late"), nil
	})
	cfg := natConfig()
	cfg.CallTimeout = 500 * time.Millisecond
	s := startServer(t, cfg, bertrpc.WithNative(reg), bertrpc.WithDrainTimeout(3*time.Second))

	_, err := call(t, s, "nope", "x")
	e := wantError(t, err, bertrpc.ServerError, bertrpc.CodeNoModule, "ServerError")
	if e.Detail != "No such module 'nope'" {
		t.Errorf("detail %q", e.Detail)
	}
	_, err = call(t, s, "nat", "nope", 1)
	e = wantError(t, err, bertrpc.ServerError, bertrpc.CodeNoFunction, "ServerError")
	if e.Detail != "No such function 'nat:nope'" {
		t.Errorf("detail %q", e.Detail)
	}
	_, err = call(t, s, "nat", "add", 1) // wrong arity: no such function
	wantError(t, err, bertrpc.ServerError, bertrpc.CodeNoFunction, "")
	_, err = call(t, s, "nat", "fail", "bad thing")
	e = wantError(t, err, bertrpc.UserError, 0, "RuntimeError")
	if e.Detail != "bad thing" {
		t.Errorf("detail %q", e.Detail)
	}
	_, err = call(t, s, "nat", "add", "a", 1)
	wantError(t, err, bertrpc.UserError, 0, "ArgumentError")
	_, err = call(t, s, "nat", "boom")
	e = wantError(t, err, bertrpc.UserError, 0, "RuntimeError")
	// With a backtrace, from the panicking handler up, as Ernie's native
	// handlers send Erlang's stacktrace.
	if !strings.Contains(e.Detail, "kaboom") || len(e.Backtrace) == 0 ||
		!strings.Contains(e.Backtrace[0], "TestErrors") || !strings.Contains(e.Backtrace[0], "server_test.go:") {
		t.Errorf("panic error %+v", e)
	}
	for _, f := range e.Backtrace {
		if strings.HasPrefix(f, "runtime.") {
			t.Errorf("runtime frame in the backtrace: %q", f)
		}
	}
	_, err = call(t, s, "nat", "hang")
	wantError(t, err, bertrpc.ServerError, 0, "TimeoutError")

	// Malformed input on a raw connection: protocol errors, connection kept
	// while framing is intact.
	r := dialRaw(t, s)
	r.sendBytes([]byte{131, 200, 1, 2})
	wantErrorTerm(t, r.recv(), "protocol", 0)
	r.send(bert.Tuple{bert.Atom("hello")})
	wantErrorTerm(t, r.recv(), "protocol", 0)
	r.send(bert.Tuple{bert.Atom("call"), bert.Atom("nat"), bert.Atom("add"), 5})
	wantErrorTerm(t, r.recv(), "protocol", 0)
	r.send(callTerm("nat", "add", 1, 2))
	wantTerm(t, r.recv(), bert.Tuple{bert.Atom("reply"), 3})

	// A packet over the limit: protocol error code 2, then the server hangs up.
	r2 := dialRaw(t, s)
	_, _ = r2.c.Write([]byte{0x7f, 0, 0, 0})
	wantErrorTerm(t, r2.recv(), "protocol", bertrpc.CodeNoData)

	// A truncated header: code 1.
	r3 := dialRaw(t, s)
	_, _ = r3.c.Write([]byte{0, 0})
	_ = r3.c.(*net.TCPConn).CloseWrite()
	wantErrorTerm(t, r3.recv(), "protocol", bertrpc.CodeNoHeader)

	// Truncated data: code 2.
	r4 := dialRaw(t, s)
	_, _ = r4.c.Write([]byte{0, 0, 0, 9, 131})
	_ = r4.c.(*net.TCPConn).CloseWrite()
	wantErrorTerm(t, r4.recv(), "protocol", bertrpc.CodeNoData)

	// The server still serves.
	if v := mustCall(t, s, "nat", "add", 2, 2); v != 4 {
		t.Fatal(v)
	}
}

func wantErrorTerm(t *testing.T, v any, typ string, code int) {
	t.Helper()
	tup, ok := v.(bert.Tuple)
	if !ok || len(tup) != 2 || tup[0] != bert.Atom("error") {
		t.Fatalf("want error reply, got %s", bert.Format(v))
	}
	d, ok := tup[1].(bert.Tuple)
	if !ok || len(d) != 5 || d[0] != bert.Atom(typ) || d[1] != code {
		t.Fatalf("want {error,{%s,%d,...}}, got %s", typ, code, bert.Format(v))
	}
}

func TestInfoPriorityForms(t *testing.T) {
	s := startServer(t, natConfig(), bertrpc.WithNative(natRegistry(t)))
	r := dialRaw(t, s)
	for _, info := range []bert.Tuple{
		{bert.Atom("info"), bert.Atom("priority"), bert.List{bert.Atom("low")}},
		{bert.Atom("info"), bert.Atom("priority"), bert.Atom("low")},
		{bert.Atom("info"), bert.Atom("cache"), bert.List{bert.Atom("validation"), []byte("tok")}},
	} {
		r.send(info)
		r.send(callTerm("nat", "add", 1, 2))
		wantTerm(t, r.recv(), bert.Tuple{bert.Atom("reply"), 3})
	}
}

func TestAdmin(t *testing.T) {
	s := startServer(t, natConfig(), bertrpc.WithNative(natRegistry(t)))
	mustCall(t, s, "nat", "add", 1, 2)
	v := mustCall(t, s, "__admin__", "stats")
	// Ernie's lines, then Warren's (tcp.open counts the stats call's own
	// connection, and the add's until the server has seen it close).
	want := regexp.MustCompile(`^connections.total=1\nconnections.completed=1\nworkers.idle.nat=native\nqueue.high=0\nqueue.low=0\n` +
		`tcp.open=[12]\ntcp.evicted=0\ntcp.refused=0\ncasts.pending=0\ncasts.refused=0\n$`)
	if !want.Match(v.([]byte)) {
		t.Fatalf("stats = %q, want %s", v, want)
	}
	if v := mustCall(t, s, "__admin__", "reload_handlers"); string(v.([]byte)) != "Handlers reloaded." {
		t.Fatalf("reload_handlers = %q", v)
	}
	if v := mustCall(t, s, "__admin__", "dance"); string(v.([]byte)) != "Admin function not supported." {
		t.Fatalf("dance = %q", v)
	}
}

func TestHaltFinishesInFlight(t *testing.T) {
	cfg := natConfig()
	cfg.Listen = "127.0.0.1:0"
	s, err := bertrpc.New(cfg, bertrpc.WithNative(natRegistry(t)), bertrpc.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	<-s.Ready()

	slow := make(chan error, 1)
	r := dialRaw(t, s)
	r.send(callTerm("nat", "sleep", 300))
	testenv.WaitFor(t, 5*time.Second, func() error {
		if stat(t, s, "connections.total") != "1" {
			return errors.New("sleep not started")
		}
		return nil
	})
	go func() {
		v := r.recv()
		if !bert.Equal(v, bert.Tuple{bert.Atom("reply"), bert.Atom("ok")}) {
			slow <- errors.New("slow call got " + bert.Format(v))
			return
		}
		slow <- nil
	}()
	if v := mustCall(t, s, "__admin__", "halt"); string(v.([]byte)) != "Halting." {
		t.Fatalf("halt = %q", v)
	}
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after halt")
	}
	if _, err := net.Dial("tcp", addrOf(s)); err == nil {
		t.Fatal("still accepting after halt")
	}
}

func TestAccessLog(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	cfg := natConfig()
	cfg.AccessLog = path
	s := startServer(t, cfg, bertrpc.WithNative(natRegistry(t)))
	mustCall(t, s, "nat", "add", 1, 2)
	_, _ = call(t, s, "nope", "x", []byte("y"))

	acc := regexp.MustCompile(`^ACC \[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\] \d+\.\d{6} \d+\.\d{6} - 0 0 nat high - \{call,nat,add,\[1,2\]\}$`)
	errLine := regexp.MustCompile(`^ERR \[[^]]+\] \d+\.\d{6} \d+\.\d{6} - 0 0 unk high - No such module 'nope' : \{call,nope,x,\[<<"y">>\]\}$`)
	var lines []string
	testenv.WaitFor(t, 5*time.Second, func() error {
		b, _ := os.ReadFile(path)
		lines = strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) < 2 {
			return errors.New("fewer than 2 lines")
		}
		return nil
	})
	if !acc.MatchString(lines[0]) {
		t.Errorf("ACC line %q", lines[0])
	}
	if !errLine.MatchString(lines[1]) {
		t.Errorf("ERR line %q", lines[1])
	}

	// logrotate: move the file away; the server creates a new one.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, func() error {
		mustCall(t, s, "nat", "add", 2, 3)
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "{call,nat,add,[2,3]}") {
			return errors.New("new file lacks the request")
		}
		return nil
	})
}

func TestShadowing(t *testing.T) {
	// nat is native (fib with fib_pred: N >= 10) and external (the Go test
	// worker, which answers echo and pid but has no fib).
	reg := natRegistry(t)
	cfg := bertrpc.Config{Modules: []bertrpc.ModuleConfig{
		{Module: "nat", Type: bertrpc.TypeNative},
		{Module: "nat", Type: bertrpc.TypeExternal, Command: goWorkerCommand(t, t.TempDir()), Count: 1},
	}}
	s := startServer(t, cfg, bertrpc.WithNative(reg))
	// Native function, no predicate.
	if v := mustCall(t, s, "nat", "add", 1, 2); v != 3 {
		t.Fatal(v)
	}
	// Predicate true: native.
	if v := mustCall(t, s, "nat", "fib", 10); v != 55 {
		t.Fatal(v)
	}
	// Predicate false: the external worker, which has no fib.
	_, err := call(t, s, "nat", "fib", 3)
	e := wantError(t, err, bertrpc.ServerError, 0, "Ernie::ServerError")
	if e.Detail != "No such function 'ext:fib'" {
		t.Fatalf("detail %q", e.Detail)
	}
	// Not native at all: external.
	if v := mustCall(t, s, "nat", "pid"); v == os.Getpid() {
		t.Fatal("pid from the wrong process")
	}
	if got := stat(t, s, "workers.idle.nat"); got != "native" {
		t.Fatalf("first workers.idle.nat = %s", got)
	}
}

func TestExternalWorkers(t *testing.T) {
	dir := t.TempDir()
	cfg := bertrpc.Config{
		CallTimeout: 2 * time.Second,
		Modules: []bertrpc.ModuleConfig{
			{Module: "ext", Type: bertrpc.TypeExternal, Command: goWorkerCommand(t, dir), Count: 2},
			{Module: "slow", Type: bertrpc.TypeExternal, Command: goWorkerCommand(t, dir), Count: 1, Timeout: 300 * time.Millisecond},
			{Module: "one", Type: bertrpc.TypeExternal, Command: goWorkerCommand(t, dir), Count: 1},
		},
	}
	s := startServer(t, cfg)

	t.Run("call", func(t *testing.T) {
		if v := mustCall(t, s, "ext", "add", 1, 2); v != 3 {
			t.Fatal(v)
		}
	})
	t.Run("procline", func(t *testing.T) {
		v := mustCall(t, s, "ext", "argv").(bert.List)
		if len(v) != 2 || string(v[0].([]byte)) != "--procline" {
			t.Fatalf("argv %s", bert.Format(v))
		}
		pad := string(v[1].([]byte))
		if strings.Trim(pad, "x") != "" {
			t.Fatalf("padding %q", pad)
		}
		if n := len(goWorkerCommand(t, dir)) + len(" --procline ") + len(pad); n != 150 {
			t.Fatalf("command line length %d, want 150", n)
		}
	})
	t.Run("load balanced", func(t *testing.T) {
		pids := map[any]bool{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		// Two concurrent slow calls must run on both workers at once.
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := call(t, s, "ext", "sleep_pid", 300)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				pids[v] = true
				mu.Unlock()
			}()
		}
		wg.Wait()
		if len(pids) != 2 {
			t.Fatalf("answers from %d workers, want 2: %v", len(pids), pids)
		}
	})
	t.Run("crash", func(t *testing.T) {
		_, err := call(t, s, "ext", "crash")
		wantError(t, err, bertrpc.ServerError, 0, "WorkerError")
		if v := mustCall(t, s, "ext", "add", 2, 2); v != 4 {
			t.Fatal(v)
		}
		testenv.WaitFor(t, 10*time.Second, func() error {
			if n := statInt(t, s, "workers.idle.ext"); n != 2 {
				return errors.New("idle workers: " + stat(t, s, "workers.idle.ext"))
			}
			return nil
		})
	})
	t.Run("garbage reply", func(t *testing.T) {
		_, err := call(t, s, "ext", "garbage")
		wantError(t, err, bertrpc.ServerError, 0, "")
		mustCall(t, s, "ext", "add", 2, 2)
	})
	t.Run("reply not BERT", func(t *testing.T) {
		// Well framed but not BERT: the client gets a WorkerError (not the
		// bytes), and the worker is replaced.
		before := mustCall(t, s, "one", "pid")
		_, err := call(t, s, "one", "notbert")
		e := wantError(t, err, bertrpc.ServerError, 0, "WorkerError")
		if !strings.Contains(e.Detail, "not BERT") {
			t.Fatalf("detail %q", e.Detail)
		}
		if after := mustCall(t, s, "one", "pid"); after == before {
			t.Fatal("the worker that sent garbage still serves")
		}
	})
	t.Run("request re-encoded", func(t *testing.T) {
		// What OTP 26 writes: NEW_FLOAT_EXT (70) and SMALL_ATOM_UTF8_EXT
		// (119). The worker must get the specification's FLOAT_EXT and
		// ATOM_EXT, which Ernie's Ruby library reads.
		otp26 := []byte{131, 104, 4,
			119, 4, 'c', 'a', 'l', 'l', 119, 3, 'e', 'x', 't', 119, 7, 'r', 'e', 'q', 'u', 'e', 's', 't',
			108, 0, 0, 0, 2,
			70, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0, // 1.5
			119, 3, 0xc3, 0xa9, 't', // 'ét'
			106}
		r := dialRaw(t, s)
		r.sendBytes(otp26)
		reply, ok := r.recv().(bert.Tuple)
		if !ok || len(reply) != 2 || reply[0] != bert.Atom("reply") {
			t.Fatalf("reply %s", bert.Format(reply))
		}
		got := reply[1].([]byte)
		want, err := bert.Marshal(callTerm("ext", "request", 1.5, bert.Atom("\xc3\xa9t")))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Fatalf("worker got % x\nwant        % x", got, want)
		}
	})
	t.Run("request that is not BERT", func(t *testing.T) {
		// A map (modern Erlang) cannot be given to an Ernie worker: the
		// client is told so, and the worker is not disturbed.
		before := mustCall(t, s, "one", "pid")
		r := dialRaw(t, s)
		r.sendBytes([]byte{131, 104, 4, 100, 0, 4, 'c', 'a', 'l', 'l', 100, 0, 3, 'o', 'n', 'e', 100, 0, 4, 'e', 'c', 'h', 'o',
			108, 0, 0, 0, 1, 116, 0, 0, 0, 1, 97, 1, 97, 2, 106})
		wantErrorTerm(t, r.recv(), "protocol", 0)
		if after := mustCall(t, s, "one", "pid"); after != before {
			t.Fatal("worker replaced")
		}
	})
	t.Run("casts have no timeout", func(t *testing.T) {
		// slow's calls time out after 300ms; a cast runs to the end.
		if err := os.Remove(filepath.Join(dir, "order")); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		c, err := bertrpc.Dial(t.Context(), addrOf(s))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Cast(t.Context(), "slow", "sleep_record", 900, []byte("slowcast")); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, 10*time.Second, func() error {
			b, _ := os.ReadFile(filepath.Join(dir, "order"))
			if !strings.Contains(string(b), "slowcast") {
				return errors.New("cast not run to its end")
			}
			return nil
		})
	})
	t.Run("timeout", func(t *testing.T) {
		testenv.WaitFor(t, 10*time.Second, func() error { // worker up (its start counts against the timeout)
			_, err := call(t, s, "slow", "pid")
			return err
		})
		before := mustCall(t, s, "slow", "pid")
		_, err := call(t, s, "slow", "sleep_ms", 5000)
		wantError(t, err, bertrpc.ServerError, 0, "TimeoutError")
		testenv.WaitFor(t, 10*time.Second, func() error {
			after, err := call(t, s, "slow", "pid")
			if err != nil {
				return err
			}
			if before == after {
				t.Fatal("timed-out worker was not replaced")
			}
			return nil
		})
	})
	t.Run("reload", func(t *testing.T) {
		before := mustCall(t, s, "one", "pid")
		mustCall(t, s, "__admin__", "reload_handlers")
		testenv.WaitFor(t, 10*time.Second, func() error {
			if mustCall(t, s, "one", "pid") == before {
				return errors.New("same worker after reload")
			}
			return nil
		})
	})
	t.Run("cast", func(t *testing.T) {
		c, err := bertrpc.Dial(t.Context(), addrOf(s))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Cast(t.Context(), "ext", "record", []byte("cast1")); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, 10*time.Second, func() error {
			b, _ := os.ReadFile(filepath.Join(dir, "order"))
			if !strings.Contains(string(b), "cast1") {
				return errors.New("cast not run")
			}
			return nil
		})
	})
}

func TestPriorityQueues(t *testing.T) {
	dir := t.TempDir()
	cfg := bertrpc.Config{Modules: []bertrpc.ModuleConfig{
		{Module: "ext", Type: bertrpc.TypeExternal, Command: goWorkerCommand(t, dir), Count: 1},
	}}
	s := startServer(t, cfg)
	mustCall(t, s, "ext", "pid") // worker up

	ctx := t.Context()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	run := func(f func(*bertrpc.Client) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := bertrpc.Dial(ctx, addrOf(s))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			errs <- f(c)
		}()
	}
	run(func(c *bertrpc.Client) error { _, err := c.Call(ctx, "ext", "wait_file"); return err })
	testenv.WaitFor(t, 10*time.Second, func() error {
		if statInt(t, s, "workers.idle.ext") != 0 {
			return errors.New("worker not busy yet")
		}
		return nil
	})
	run(func(c *bertrpc.Client) error { _, err := c.CallLow(ctx, "ext", "record", []byte("low")); return err })
	testenv.WaitFor(t, 10*time.Second, func() error {
		if statInt(t, s, "queue.low") != 1 {
			return errors.New("low not queued")
		}
		return nil
	})
	run(func(c *bertrpc.Client) error { _, err := c.Call(ctx, "ext", "record", []byte("high")); return err })
	testenv.WaitFor(t, 10*time.Second, func() error {
		if statInt(t, s, "queue.high") != 1 {
			return errors.New("high not queued")
		}
		return nil
	})
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "order"))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(b); got != "high\nlow\n" {
		t.Fatalf("order %q, want high then low", got)
	}
}

func TestNewErrors(t *testing.T) {
	_, err := bertrpc.New(bertrpc.Config{Modules: []bertrpc.ModuleConfig{{Module: "nat", Type: bertrpc.TypeNative}}})
	if !errors.Is(err, bertrpc.ErrInvalidConfig) {
		t.Fatalf("unregistered native: %v", err)
	}
	_, err = bertrpc.New(bertrpc.Config{Modules: []bertrpc.ModuleConfig{{Module: "simple", Type: bertrpc.TypeFabric}}})
	if !errors.Is(err, bertrpc.ErrNoFabric) {
		t.Fatalf("fabric without Fabric: %v", err)
	}
}

func TestClientContext(t *testing.T) {
	s := startServer(t, natConfig(), bertrpc.WithNative(natRegistry(t)))
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := bertrpc.Call(ctx, addrOf(s), "nat", "sleep", 500)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
}

func TestExternalBadCommand(t *testing.T) {
	cfg := bertrpc.Config{CallTimeout: 10 * time.Second, Modules: []bertrpc.ModuleConfig{
		{Module: "bad", Type: bertrpc.TypeExternal, Command: "/nonexistent/worker"},
	}}
	s := startServer(t, cfg)
	_, err := call(t, s, "bad", "x")
	e := wantError(t, err, bertrpc.ServerError, 0, "WorkerError")
	if !strings.Contains(e.Detail, "127") {
		t.Fatalf("detail %q", e.Detail)
	}
}

// TestLyingLengthHeader: connections that announce 16 MiB and send nothing
// more cost next to no memory.
func TestLyingLengthHeader(t *testing.T) {
	s := startServer(t, natConfig(), bertrpc.WithNative(natRegistry(t)))
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var conns []net.Conn
	for range 20 {
		c, err := net.Dial("tcp", addrOf(s))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte{0x00, 0xff, 0xff, 0xff}); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// A call on another connection is answered, so the server has read
	// the headers above by now (it serves connections concurrently).
	if _, err := call(t, s, "nat", "add", 1, 2); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 64<<20 {
		t.Fatalf("20 lying headers grew the heap by %d MiB", grew>>20)
	}
}

// TestCastTimeout: with CastTimeout set, a cast that runs past it has its
// worker killed and replaced, as a call's would be.
func TestCastTimeout(t *testing.T) {
	dir := t.TempDir()
	cfg := bertrpc.Config{CastTimeout: 200 * time.Millisecond, Modules: []bertrpc.ModuleConfig{
		{Module: "ext", Type: bertrpc.TypeExternal, Command: goWorkerCommand(t, dir), Count: 1},
	}}
	s := startServer(t, cfg)
	before := mustCall(t, s, "ext", "pid")
	c, err := bertrpc.Dial(t.Context(), addrOf(s))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Cast(t.Context(), "ext", "sleep_record", 5000, []byte("late")); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, func() error { // the worker has the cast
		if n := statInt(t, s, "workers.idle.ext"); n != 0 {
			return errors.New("worker idle")
		}
		return nil
	})
	// Served by a fresh worker once the cast's worker is killed, long
	// before the cast would have ended.
	start := time.Now()
	if after := mustCall(t, s, "ext", "pid"); after == before {
		t.Fatal("the cast's worker was not replaced")
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("call waited %v: the cast ran to its end", d)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "order")); strings.Contains(string(b), "late") {
		t.Fatal("the cast ran past its timeout")
	}
}

// TestHaltDoesNotHangOnAStuckCast: a native cast handler that ignores its
// context (casts have no timeout) does not keep a halting server from
// returning: the drain timeout ends its request, and Run waits only a
// grace period for the handler itself.
func TestHaltDoesNotHangOnAStuckCast(t *testing.T) {
	reg := bertrpc.NewRegistry()
	release, started := make(chan struct{}), make(chan struct{})
	defer close(release) // the handler ends before goleak looks
	if err := reg.Register("stuck", "wait", 0, func(context.Context, bert.List) (any, error) {
		close(started)
		<-release
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	cfg := bertrpc.Config{Listen: "127.0.0.1:0", Modules: []bertrpc.ModuleConfig{{Module: "stuck", Type: bertrpc.TypeNative}}}
	s, err := bertrpc.New(cfg, bertrpc.WithNative(reg), bertrpc.WithLogger(testenv.Logger(t)), bertrpc.WithDrainTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	<-s.Ready()
	r := dialRaw(t, s)
	r.send(bert.Tuple{bert.Atom("cast"), bert.Atom("stuck"), bert.Atom("wait"), bert.List{}})
	if v := r.recv(); !bert.Equal(v, bert.Tuple{bert.Atom("noreply")}) {
		t.Fatalf("cast answered %s", bert.Format(v))
	}
	<-started
	halted := time.Now()
	mustCall(t, s, "__admin__", "halt")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
		t.Logf("Run returned %v after halt", time.Since(halted).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("Run still blocked 10s after halt by a cast that ignores its context")
	}
}

// TestConnectionsReuseNothing: connections served one after another (on
// reused goroutines and buffers) see nothing of the ones before, whatever
// those left unread or unsent.
func TestConnectionsReuseNothing(t *testing.T) {
	s := startServer(t, natConfig(), bertrpc.WithNative(natRegistry(t)))
	for i := range 20 {
		r := dialRaw(t, s)
		r.send(callTerm("nat", "add", i, 1))
		wantTerm(t, r.recv(), bert.Tuple{bert.Atom("reply"), i + 1})
		switch i % 3 {
		case 0: // half a header left in the server's input
			if _, err := r.c.Write([]byte{0, 0}); err != nil {
				t.Fatal(err)
			}
		case 1: // pipelined requests whose replies are never read
			r.send(callTerm("nat", "add", 1, 1))
			r.send(callTerm("nat", "add", 2, 2))
		}
		r.c.Close()
	}
	r := dialRaw(t, s)
	r.send(callTerm("nat", "add", 40, 2))
	wantTerm(t, r.recv(), bert.Tuple{bert.Atom("reply"), 42})
}
