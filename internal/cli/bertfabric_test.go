package cli

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/bert"
	"github.com/warrenrpc/warren/bertrpc"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport/amqp"
)

// TestBertBridgeToAgents: `warren bert` with a fabric module routes
// {call, ACTOR, fn, Args} to the Go agents serving /ACTOR/fn, for a Go
// BERT-RPC client and for a Ruby one (Debian's ruby-bert).
func TestBertBridgeToAgents(t *testing.T) {
	url := testenv.AMQPURL(t)
	actor := fabrictest.Actor()
	tr, err := amqp.Dial(t.Context(), url, amqp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	a, err := agent.New(fabrictest.Recording(t, url, tr), agent.Config{Identity: actor + "-go"}, agent.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.Handle("/"+actor+"/add", agent.Func(func(_ context.Context, xs []float64) (float64, error) {
		return xs[0] + xs[1], nil
	})))
	must(a.Handle("/"+actor+"/greet", agent.Func(func(_ context.Context, who string) (map[string]any, error) {
		return map[string]any{"hello": who, "n": 1}, nil
	})))
	must(a.Handle("/"+actor+"/fail", agent.Func(func(_ context.Context, s string) (any, error) {
		return nil, fmt.Errorf("refused: %s", s)
	})))
	actx, acancel := context.WithCancel(t.Context())
	adone := make(chan error, 1)
	go func() { adone <- a.Run(actx) }()
	defer func() { acancel(); <-adone }()
	<-a.Ready()

	// A free port for the server.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cfg := filepath.Join(t.TempDir(), "bert.cfg")
	must(os.WriteFile(cfg, []byte(fmt.Sprintf("[{module, %s}, {type, fabric}, {selector, \"least_loaded\"}].\n", actor)), 0o644))
	sctx, scancel := context.WithCancel(t.Context())
	sdone := make(chan int, 1)
	var out, errOut bytes.Buffer
	go func() {
		sdone <- Main(sctx, []string{"bert", "-c", cfg, "-p", strconv.Itoa(port), "--host", "127.0.0.1", "--broker", url}, &out, &errOut)
	}()
	defer func() {
		scancel()
		if code := <-sdone; code != 0 {
			t.Errorf("warren bert exit %d: %s", code, errOut.String())
		}
	}()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var got any
	testenv.WaitFor(t, 10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		got, err = bertrpc.Call(ctx, addr, actor, "add", 2, 3.5)
		return err
	})
	if !bert.Equal(got, 5.5) {
		t.Fatalf("add: %s", bert.Format(got))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	got, err = bertrpc.Call(ctx, addr, actor, "greet", []byte("ernie"))
	must(err)
	if s := bert.Format(got); !strings.Contains(s, `<<"hello">>`) || !strings.Contains(s, `<<"ernie">>`) {
		t.Fatalf("greet: %s", s)
	}
	_, err = bertrpc.Call(ctx, addr, actor, "fail", []byte("no"))
	if err == nil || !bertrpc.IsErrorType(err, bertrpc.UserError) || !strings.Contains(err.Error(), "refused: no") {
		t.Fatalf("fail: %v", err)
	}
	_, err = bertrpc.Call(ctx, addr, actor, "nothing", 1)
	if err == nil {
		t.Fatal("call to a path no agent serves succeeded")
	}

	// A Ruby program with the bert gem calls the Go agent.
	if _, err := exec.LookPath("ruby"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("ruby missing under CI: scripts/deps.d/ruby-erlang installs it")
		}
		t.Skip("ruby not installed")
	}
	rb := exec.Command("ruby", "../../bertrpc/testdata/ruby/client.rb", strconv.Itoa(port), actor, "add", "[40, 2]")
	rbOut, err := rb.CombinedOutput()
	if err != nil || strings.TrimSpace(string(rbOut)) != "42" {
		t.Fatalf("ruby client: %q %v", rbOut, err)
	}
}
