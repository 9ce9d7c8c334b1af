package bertrpc_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/warrenrpc/warren/bert"
	"github.com/warrenrpc/warren/bertrpc"
	"github.com/warrenrpc/warren/bertrpc/nat"
	"github.com/warrenrpc/warren/internal/testenv"
)

// TestMain doubles as an external worker: with BERTRPC_TEST_WORKER set, the
// test binary speaks Ernie's external protocol on fds 3 and 4, so worker
// tests do not need Ruby.
func TestMain(m *testing.M) {
	if os.Getenv("BERTRPC_TEST_WORKER") != "" {
		os.Exit(testWorker())
	}
	if os.Getenv(fdServerEnv) != "" {
		os.Exit(fdServer())
	}
	goleak.VerifyTestMain(m)
}

// goWorkerCommand is the command line of the Go test worker for module mod.
func goWorkerCommand(t *testing.T, stateDir string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("BERTRPC_TEST_WORKER=1 EXT_STATE_DIR=%s exec %s", stateDir, exe)
}

func testWorker() int {
	in := os.NewFile(3, "in")
	out := os.NewFile(4, "out")
	dir := os.Getenv("EXT_STATE_DIR")
	for {
		payload, err := bert.ReadPacket(in, 1<<20)
		if err != nil {
			return 0
		}
		term, err := bert.Unmarshal(payload)
		if err != nil {
			return 1
		}
		req := term.(bert.Tuple)
		fun := string(req[2].(bert.Atom))
		args := req[3].(bert.List)
		var res any
		switch fun {
		case "add":
			res = args[0].(int) + args[1].(int)
		case "echo":
			res = args[0]
		case "pid":
			res = os.Getpid()
		case "argv":
			l := bert.List{}
			for _, a := range os.Args[1:] {
				l = append(l, a)
			}
			res = l
		case "crash":
			return 3
		case "sleep_ms":
			time.Sleep(time.Duration(args[0].(int)) * time.Millisecond)
			res = bert.Atom("ok")
		case "sleep_pid":
			time.Sleep(time.Duration(args[0].(int)) * time.Millisecond)
			res = os.Getpid()
		case "wait_file": // block until the test creates the file
			for {
				if _, err := os.Stat(filepath.Join(dir, "go")); err == nil {
					break
				}
				time.Sleep(2 * time.Millisecond)
			}
			res = bert.Atom("ok")
		case "record":
			f, err := os.OpenFile(filepath.Join(dir, "order"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				return 1
			}
			fmt.Fprintln(f, string(args[0].([]byte)))
			f.Close()
			res = args[0]
		case "garbage": // a reply that is not a BERP the server accepts
			out.Write([]byte{0xff, 0xff, 0xff, 0xff})
			return 0
		case "notbert": // a well-framed reply that is not BERT
			bert.WritePacket(out, []byte{131, 200, 1, 2})
			continue
		case "request": // the request bytes as the worker received them
			res = payload
		case "sleep_record": // sleep args[0] ms, then record args[1]
			time.Sleep(time.Duration(args[0].(int)) * time.Millisecond)
			f, err := os.OpenFile(filepath.Join(dir, "order"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				return 1
			}
			fmt.Fprintln(f, string(args[1].([]byte)))
			f.Close()
			res = args[1]
		default:
			reply, _ := bert.Marshal(bert.Tuple{bert.Atom("error"), bert.Tuple{bert.Atom("server"), 0, []byte("Ernie::ServerError"), []byte("No such function 'ext:" + fun + "'"), bert.List{}}})
			bert.WritePacket(out, reply)
			continue
		}
		if req[0] == bert.Atom("cast") {
			reply, _ := bert.Marshal(bert.Tuple{bert.Atom("noreply")})
			bert.WritePacket(out, reply)
			continue
		}
		reply, err := bert.Marshal(bert.Tuple{bert.Atom("reply"), res})
		if err != nil {
			return 1
		}
		if err := bert.WritePacket(out, reply); err != nil {
			return 0
		}
	}
}

// natRegistry returns a registry with the nat example module.
func natRegistry(t testing.TB) *bertrpc.Registry {
	t.Helper()
	r := bertrpc.NewRegistry()
	if err := nat.Register(r); err != nil {
		t.Fatal(err)
	}
	return r
}

// startServer runs a server on 127.0.0.1:0 until the test ends.
func startServer(t *testing.T, cfg bertrpc.Config, opts ...bertrpc.Option) *bertrpc.Server {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	opts = append([]bertrpc.Option{bertrpc.WithLogger(testenv.Logger(t)), bertrpc.WithDrainTimeout(5 * time.Second)}, opts...)
	s, err := bertrpc.New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-s.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	return s
}

func addrOf(s *bertrpc.Server) string { return s.Addr().String() }

func call(t *testing.T, s *bertrpc.Server, mod, fun string, args ...any) (any, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	return bertrpc.Call(ctx, addrOf(s), mod, fun, args...)
}

func mustCall(t *testing.T, s *bertrpc.Server, mod, fun string, args ...any) any {
	t.Helper()
	v, err := call(t, s, mod, fun, args...)
	if err != nil {
		t.Fatalf("%s:%s: %v", mod, fun, err)
	}
	return v
}

func wantError(t *testing.T, err error, typ bertrpc.ErrorType, code int, class string) *bertrpc.Error {
	t.Helper()
	var e *bertrpc.Error
	if !errors.As(err, &e) {
		t.Fatalf("want %s error, got %v", typ, err)
	}
	if e.Type != typ || e.Code != code || (class != "" && e.Class != class) {
		t.Fatalf("want {%s,%d,%s}, got %+v", typ, code, class, e)
	}
	return e
}

// stat reads one key of __admin__:stats.
func stat(t *testing.T, s *bertrpc.Server, key string) string {
	t.Helper()
	v := mustCall(t, s, "__admin__", "stats")
	for line := range strings.SplitSeq(string(v.([]byte)), "\n") {
		if k, val, ok := strings.Cut(line, "="); ok && k == key {
			return val
		}
	}
	t.Fatalf("stats have no %s: %q", key, v)
	return ""
}

func statInt(t *testing.T, s *bertrpc.Server, key string) int {
	n, err := strconv.Atoi(stat(t, s, key))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
