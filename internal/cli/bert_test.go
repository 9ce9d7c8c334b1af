package cli

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/bertrpc"
	"github.com/warrenrpc/warren/internal/testenv"
)

// runBertServer runs `warren bert -c CFG -p PORT --host 127.0.0.1 ARGS...`
// until nat:add answers, stops it, and returns its stderr.
func runBertServer(t *testing.T, args ...string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	cfg := filepath.Join(t.TempDir(), "bert.cfg")
	if err := os.WriteFile(cfg, []byte("[{module, nat}, {type, native}].\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	var out, errOut testenv.Buffer
	go func() {
		done <- Main(ctx, append([]string{"bert", "-c", cfg, "-p", port, "--host", "127.0.0.1"}, args...), &out, &errOut)
	}()
	addr := net.JoinHostPort("127.0.0.1", port)
	testenv.WaitFor(t, 10*time.Second, func() error {
		select {
		case code := <-done:
			t.Fatalf("warren bert %s exited %d: %s", strings.Join(args, " "), code, errOut.String())
		default:
		}
		cctx, ccancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer ccancel()
		_, err := bertrpc.Call(cctx, addr, "nat", "add", 1, 2)
		return err
	})
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("warren bert exit %d: %s", code, errOut.String())
	}
	return errOut.String()
}

// TestBertErnieFlags: Ernie's command line works as is: -E with a value
// that starts with '-', and --log-level with Ernie's numeric levels.
func TestBertErnieFlags(t *testing.T) {
	t.Run("-E and --log-level 3", func(t *testing.T) {
		log := runBertServer(t, "-E", "-run mymodule", "--log-level", "3", "--sname", "ernie")
		if !strings.Contains(log, "level=INFO") || !strings.Contains(log, "msg=listening") {
			t.Fatalf("--log-level 3 (info) did not log the listening line:\n%s", log)
		}
		if !strings.Contains(log, "-E are Erlang VM options; ignored") {
			t.Fatalf("no warning about -E:\n%s", log)
		}
	})
	t.Run("--log-level 1", func(t *testing.T) {
		if log := runBertServer(t, "--log-level", "1", "-E", "+K true"); strings.Contains(log, "level=INFO") || strings.Contains(log, "level=WARN") {
			t.Fatalf("--log-level 1 (error) logged below error:\n%s", log)
		}
	})
	t.Run("--erlang= and warren's names", func(t *testing.T) {
		if log := runBertServer(t, "--erlang=-run mymodule", "--log-level", "info"); !strings.Contains(log, "msg=listening") {
			t.Fatalf("--log-level info:\n%s", log)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"-E without value", []string{"bert", "-c", "x.cfg", "-E"}, "-E needs a value"},
		{"level out of range", []string{"bert", "-c", "x.cfg", "--log-level", "7"}, "Ernie's levels are 0-4"},
		{"numeric level outside bert", []string{"demo", "--log-level", "3"}, "log-level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := run(t, t.Context(), tc.args...)
			if code != 2 || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", code, errOut, tc.want)
			}
		})
	}
}

// TestBertLimitFlags: the limit flags reach the server (it logs them when
// it listens), and override the config file's.
func TestBertLimitFlags(t *testing.T) {
	log := runBertServer(t, "--log-level", "info", "--max-connections", "7", "--max-pending-casts=-1",
		"--frame-timeout", "3s", "--idle-timeout", "4s")
	want := "max_connections=7 max_pending_casts=-1 frame_timeout=3s idle_timeout=4s"
	if !strings.Contains(log, want) {
		t.Fatalf("no %q in the log:\n%s", want, log)
	}
	log = runBertServer(t, "--log-level", "info")
	want = "max_connections=1024 max_pending_casts=1024 frame_timeout=1m0s idle_timeout=5m0s"
	if !strings.Contains(log, want) {
		t.Fatalf("defaults: no %q in the log:\n%s", want, log)
	}
}
