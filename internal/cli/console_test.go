package cli

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/simple"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport/mem"
)

// TestConsoleCommands runs a script of console commands on the embedded
// broker, without a terminal.
func TestConsoleCommands(t *testing.T) {
	b := mem.NewBroker()
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for _, id := range []string{"fred", "bob"} {
		tr := b.Connect()
		defer tr.Close()
		a, err := agent.New(tr, agent.Config{Identity: id, Tags: []string{"t-" + id}}, agent.WithStatus(func() any { return "<\x1b[2J>" }))
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Expose("simple", simple.Simple{Identity: id}); err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { _ = a.Run(ctx) })
	}
	tr := b.Connect()
	defer tr.Close()
	con := &console{timeout: 5 * time.Second}
	m, err := mapper.New(tr, mapper.Config{}, mapper.WithEvents(con.event))
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { _ = m.Run(ctx) })
	<-m.Ready()
	con.m = m
	testenv.WaitFor(t, 5*time.Second, func() error {
		if len(m.Agents()) != 2 {
			return io.ErrUnexpectedEOF
		}
		return nil
	})
	script := strings.Join([]string{
		"help",
		"agents --tag t-bob",
		"services",
		`request /simple/echo "hi" --selector all`,
		"request /simple/whoami --to bob",
		"request /simple/fail \"boom\" --to fred",
		"push /simple/echo 1",
		"request /simple/echo not-json",
		"request /nobody/here --timeout 200ms",
		"frobnicate",
		"quit",
		"agents", // not run: after quit
	}, "\n")
	var out bytes.Buffer
	if err := con.run(ctx, strings.NewReader(script), &out, nil); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		"request PATH [JSON]",
		"bob ", `\u001b[2J`,
		"/simple/echo    bob fred",
		"{\n  \"bob\": \"hi\",\n  \"fred\": \"hi\"\n}",
		"from bob:\n\"bob\"",
		"handler_error",
		"pushed (",
		`error: payload "not-json" is not JSON`,
		"error: mapper: no agent serves this service",
		`error: unknown command "frobnicate"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(got, "\x1b") {
		t.Error("a remote escape sequence reached the terminal")
	}
	if strings.Count(got, "IDENTITY") != 1 || strings.Contains(got, "fred  ") && strings.Contains(got, "t-fred") {
		t.Errorf("agents --tag t-bob listed fred, or agents ran after quit:\n%s", got)
	}
	if t.Failed() {
		t.Logf("output:\n%s", got)
	}
}

func TestConsoleComplete(t *testing.T) {
	b := mem.NewBroker()
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	atr := b.Connect()
	defer atr.Close()
	a, err := agent.New(atr, agent.Config{Identity: "fred"})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Expose("simple", simple.Simple{Identity: "fred"}); err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { _ = a.Run(ctx) })
	tr := b.Connect()
	defer tr.Close()
	m, err := mapper.New(tr, mapper.Config{})
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { _ = m.Run(ctx) })
	<-m.Ready()
	testenv.WaitFor(t, 5*time.Second, func() error {
		if len(m.Agents()) != 1 {
			return io.ErrUnexpectedEOF
		}
		return nil
	})
	con := &console{m: m}
	for _, c := range []struct{ line, want, listed string }{
		{"req", "request ", ""},
		{"request /simple/wh", "request /simple/whoami ", ""},
		{"push /simple/e", "push /simple/echo ", ""},
		{"request /simple/", "", "/simple/echo  /simple/fail"},
		{"request /simple/echo 1 --sel", "request /simple/echo 1 --selector ", ""},
		{"request /simple/echo 1 --selector r", "", "random  round_robin"},
		{"request /simple/echo 1 --to f", "request /simple/echo 1 --to fred ", ""},
		{"w", "watch ", ""},
		{"zzz", "", ""},
	} {
		var out bytes.Buffer
		line, pos, ok := con.complete(&out, c.line, len(c.line))
		if c.want == "" {
			if ok && !strings.HasPrefix(line, c.line) {
				t.Errorf("complete(%q) = %q", c.line, line)
			}
		} else if !ok || line != c.want || pos != len(c.want) {
			t.Errorf("complete(%q) = %q, %d, %v; want %q", c.line, line, pos, ok, c.want)
		}
		if !strings.Contains(out.String(), c.listed) {
			t.Errorf("complete(%q) listed %q, want %q", c.line, out.String(), c.listed)
		}
	}
}

// TestConsolePTY drives `warren console` through a pseudo-terminal, on
// RabbitMQ: tab completion of a command and a live service path, a
// request, the history (up arrow) and the history file.
func TestConsolePTY(t *testing.T) {
	url := testenv.AMQPURL(t)
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	tag := fabrictest.Actor()
	startAgentWith(t, bin, url, tag, "fred")
	hist := filepath.Join(t.TempDir(), "history")
	cmd := exec.Command(bin, "console", "--history", hist)
	cmd.Env = append(os.Environ(), "WARREN_BROKER="+url, "TERM=xterm")
	f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 200})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	defer func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	}()
	var mu sync.Mutex
	var screen bytes.Buffer
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := f.Read(buf)
			mu.Lock()
			screen.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	expect := func(what string, count int) {
		t.Helper()
		testenv.WaitFor(t, 30*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			if n := strings.Count(screen.String(), what); n < count {
				return &consoleWait{what, screen.String()}
			}
			return nil
		})
	}
	send := func(s string) {
		t.Helper()
		if _, err := f.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	expect("warren> ", 1)
	// The agent may take a moment to reach the console's registry.
	testenv.WaitFor(t, 30*time.Second, func() error {
		mu.Lock()
		before := screen.Len()
		prompts := strings.Count(screen.String(), "warren> ")
		mu.Unlock()
		send("agents\r")
		// Counted before sending: the answer and its prompt may be
		// on the screen before the count is taken.
		expect("warren> ", prompts+1)
		mu.Lock()
		defer mu.Unlock()
		if !strings.Contains(screen.String()[before:], tag+"-fred") {
			return &consoleWait{"agent " + tag + "-fred", screen.String()[before:]}
		}
		return nil
	})
	send("req\t")
	expect("request ", 1)
	send("/simple/wh\t")
	expect("request /simple/whoami ", 1)
	send("--to " + tag + "-fred\r")
	result := `"` + tag + `-fred"`
	expect(result, 1)
	send("\x1b[A\r") // up arrow: the same request again
	expect(result, 2)
	send("quit\r")
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("console exit: %v", waitErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("console did not quit")
	}
	b, err := os.ReadFile(hist)
	if err != nil {
		t.Fatal(err)
	}
	if want := "request /simple/whoami --to " + tag + "-fred\nquit\n"; !strings.HasSuffix(string(b), want) {
		t.Fatalf("history file %q, want it to end with %q", b, want)
	}
}

type consoleWait struct{ what, screen string }

func (e *consoleWait) Error() string {
	return "waiting for " + e.what + "; screen:\n" + e.screen[max(0, len(e.screen)-2000):]
}
