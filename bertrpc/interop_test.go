package bertrpc_test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/bert"
	"github.com/warrenrpc/warren/bertrpc"
	"github.com/warrenrpc/warren/internal/testenv"
)

// needTool skips the test when a peer is not installed, and fails it under
// CI (scripts/deps.d/ruby-erlang installs them).
func needTool(t *testing.T, name string, check ...string) {
	t.Helper()
	_, err := exec.LookPath(name)
	if err == nil && len(check) > 0 {
		err = exec.Command(check[0], check[1:]...).Run()
	}
	if err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s unavailable under CI (scripts/deps.d/ruby-erlang installs it): %v", name, err)
	}
	t.Skipf("%s unavailable: %v (run scripts/deps.d/ruby-erlang)", name, err)
}

func needRuby(t *testing.T) {
	needTool(t, "ruby", "ruby", "-e", "require 'bert'")
}

func rubyDir(t testing.TB) string {
	dir, err := filepath.Abs(filepath.Join("testdata", "ruby"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// rubyWorkerCommand runs the Ernie-style handler ext.rb with our ernie.rb,
// or with Ernie's own lib/ernie.rb when BERTRPC_ERNIE_LIB names the
// directory holding it (a checkout of github.com/mojombo/ernie's lib, or
// the lib directory of its gem): every Ruby worker test then runs against
// Ernie's real library.
//
// The command is kept short (see shortTempDir) (paths relative to the package directory, which
// workers inherit as theirs) so that Ernie's procline padding is not used up.
func rubyWorkerCommand(t testing.TB, stateDir string) string {
	dir := filepath.Join("testdata", "ruby")
	lib := ""
	if ernie := os.Getenv("BERTRPC_ERNIE_LIB"); ernie != "" {
		if _, err := os.Stat(filepath.Join(ernie, "ernie.rb")); err != nil {
			t.Fatalf("BERTRPC_ERNIE_LIB: %v", err)
		}
		lib = "-I " + ernie + " "
	}
	return "EXT_STATE_DIR=" + stateDir + " ruby " + lib + "-I " + dir + " " + filepath.Join(dir, "ext.rb")
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func interopServer(t *testing.T) *bertrpc.Server {
	cfg := bertrpc.Config{Modules: []bertrpc.ModuleConfig{
		{Module: "nat", Type: bertrpc.TypeNative},
		{Module: "ext", Type: bertrpc.TypeExternal, Command: rubyWorkerCommand(t, shortTempDir(t)), Count: 2},
	}}
	return startServer(t, cfg, bertrpc.WithNative(natRegistry(t)))
}

func portOf(s *bertrpc.Server) string {
	return strconv.Itoa(s.Addr().(*net.TCPAddr).Port)
}

func TestInteropRubyClient(t *testing.T) {
	needRuby(t)
	s := interopServer(t)
	client := filepath.Join(rubyDir(t), "client.rb")
	port := portOf(s)
	tests := []struct {
		mod, fun, args, prio, want string
	}{
		{"nat", "add", "[1, 2]", "", "3"},
		{"nat", "echo", `["h\u00e9"]`, "", `"h\xC3\xA9"`}, // the gem decodes binaries as bytes
		{"nat", "add", "[40, 2]", "low", "42"},
		{"ext", "add", "[1, 2]", "", "3"},
		{"ext", "echo", `[[1, {"a" => :b}]]`, "low", `[1, {"a"=>:b}]`},
		{"nope", "x", "[]", "", "ERROR server 1 ServerError No such module 'nope'"},
		{"nat", "nope", "[]", "", "ERROR server 2 ServerError No such function 'nat:nope'"},
		{"nat", "fail", `["oops"]`, "", "ERROR user 0 RuntimeError oops"},
		{"ext", "raise_error", `["bad"]`, "", "ERROR user 0 ArgumentError bad"},
		{"ext", "nope", `[]`, "", "ERROR server 0 Ernie::ServerError No such function 'ext:nope'"},
	}
	for _, tc := range tests {
		t.Run(tc.mod+":"+tc.fun, func(t *testing.T) {
			args := []string{client, port, tc.mod, tc.fun, tc.args}
			if tc.prio != "" {
				args = append(args, tc.prio)
			}
			if got := run(t, "ruby", args...); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestInteropRubyWorker(t *testing.T) {
	needRuby(t)
	s := interopServer(t)
	if v := mustCall(t, s, "ext", "add", 1, 2); v != 3 {
		t.Fatalf("add = %v", v)
	}
	v := mustCall(t, s, "ext", "echo", bert.List{1, []byte("x"), bert.Atom("y"), 2.5, bert.Tuple{bert.Atom("t")}})
	if !bert.Equal(v, bert.List{1, []byte("x"), bert.Atom("y"), 2.5, bert.Tuple{bert.Atom("t")}}) {
		t.Fatalf("echo = %s", bert.Format(v))
	}
	if v := mustCall(t, s, "ext", "chatty", []byte("quiet")); string(v.([]byte)) != "quiet" {
		t.Fatalf("chatty = %s", bert.Format(v))
	}
	argv := mustCall(t, s, "ext", "argv").(bert.List)
	if len(argv) != 2 || string(argv[0].([]byte)) != "--procline" || strings.Trim(string(argv[1].([]byte)), "x") != "" {
		t.Fatalf("argv = %s", bert.Format(argv))
	}
	_, err := call(t, s, "ext", "raise_error", []byte("no"))
	wantError(t, err, bertrpc.UserError, 0, "ArgumentError")

	// A cast is answered at once and then run.
	c, err := bertrpc.Dial(t.Context(), addrOf(s))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Cast(t.Context(), "ext", "add", 1, 1); err != nil {
		t.Fatal(err)
	}
	// Kept-open connection to a Ruby worker.
	for i := range 3 {
		v, err := c.Call(t.Context(), "ext", "add", i, i)
		if err != nil || v != 2*i {
			t.Fatalf("add(%d,%d) = %v, %v", i, i, v, err)
		}
	}

	// A crashing worker: error reply, then a fresh worker serves.
	_, err = call(t, s, "ext", "crash")
	wantError(t, err, bertrpc.ServerError, 0, "WorkerError")
	if v := mustCall(t, s, "ext", "add", 2, 3); v != 5 {
		t.Fatalf("after crash: %v", v)
	}

	// reload-handlers: every worker is replaced.
	before := map[any]bool{}
	for range 4 {
		before[mustCall(t, s, "ext", "pid")] = true
	}
	mustCall(t, s, "__admin__", "reload_handlers")
	testenv.WaitFor(t, 20*time.Second, func() error {
		if p := mustCall(t, s, "ext", "pid"); before[p] {
			return errors.New("answered by a pre-reload worker")
		}
		return nil
	})
}

func TestInteropErlangClient(t *testing.T) {
	needTool(t, "escript")
	needRuby(t)
	s := interopServer(t)
	script, err := filepath.Abs(filepath.Join("testdata", "erlang", "client.escript"))
	if err != nil {
		t.Fatal(err)
	}
	port := portOf(s)
	tests := []struct {
		name, mod, fun, args, mode, want string
	}{
		{"native", "nat", "add", "[1,2]", "", "{reply,3}"},
		{"native kept open", "nat", "add", "[1,2]", "keep", "{reply,3}\n{reply,3}"},
		{"native low", "nat", "add", "[1,2]", "low", "{reply,3}"},
		{"string args", "nat", "echo", `[[1,2,3]]`, "", "{reply,[1,2,3]}"},
		{"external", "ext", "add", "[1,2]", "", "{reply,3}"},
		{"external kept open", "ext", "add", "[1,2]", "keep", "{reply,3}\n{reply,3}"},
		{"external binary", "ext", "echo", `[<<"hi">>]`, "low", `{reply,<<"hi">>}`},
		// term_to_binary writes floats as NEW_FLOAT_EXT, which the Ruby
		// worker's bert gem cannot read: the server re-encodes.
		{"external float", "ext", "add", "[1.5,2]", "", "{reply,3.5}"},
		// OTP 26's default encoding: every atom SMALL_ATOM_UTF8_EXT.
		{"external utf8 atoms", "ext", "echo", "[[2.25,abc]]", "utf8", "{reply,[2.25,abc]}"},
		// An atom from a hand-written ATOM_UTF8_EXT (118) term, with the
		// request itself in OTP 26's encoding.
		{"external utf8 atom ext", "ext", "echo", "[binary_to_term(<<131,118,0,2,104,105>>)]", "utf8", "{reply,hi}"},
		{"no module", "nope", "x", "[]", "", `{error,{server,1,<<"ServerError">>,<<"No such module 'nope'">>,[]}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{script, port, tc.mod, tc.fun, tc.args}
			if tc.mode != "" {
				args = append(args, tc.mode)
			}
			want := strings.ReplaceAll(tc.want, "\\n", "\n")
			if got := run(t, "escript", args...); got != want {
				t.Fatalf("got %q, want %q", got, want)
			}
		})
	}
}

// shortTempDir is a temporary directory with a short path (t.TempDir's
// include the test's name), removed at the end of the test.
func shortTempDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "ext")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
