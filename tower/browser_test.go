package tower_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/wire"
)

// chromium returns the headless browser for the browser test: $CHROMIUM
// (printed by scripts/deps.d/chromium), else chromium on the PATH. Without
// one the test skips, or fails under CI.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no chromium under CI: scripts/deps.d/chromium must install it")
	}
	t.Skip("no chromium: run scripts/deps.d/chromium (Debian's chromium package)")
	return ""
}

func uniqueName(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// buildWarren builds the warren binary into a temporary directory.
func buildWarren(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "warren")
	cmd := exec.Command("go", "build", "-o", bin, "../cmd/warren")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// privateVHost returns the broker URL of a vhost of the test's own
// (testenv.PrivateVHost), so that the page shows only the test's agents and
// dead letters; else the shared default vhost.
func privateVHost(t *testing.T, amqpURL string) (string, bool) {
	t.Helper()
	return testenv.PrivateVHost(t, amqpURL, "warren-test-tower-")
}

// process is a warren command run by the test.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func start(t *testing.T, bin, broker string, env []string, args ...string) (*process, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "WARREN_BROKER="+broker, "WARREN_LOG_LEVEL=error")
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = testWriter{t}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.stop(syscall.SIGTERM) })
	return p, bufio.NewScanner(out)
}

func (p *process) stop(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// TestBrowser drives the real `warren tower` binary, on RabbitMQ, in
// headless Chromium: it sees two agents appear, sends a fan-out and reads
// both results, sees an agent it killed dropped, and replays a dead
// letter. With WARREN_TOWER_SCREENSHOTS=DIR it saves a screenshot of each
// page there (docs/ keeps them).
func TestBrowser(t *testing.T) {
	browser := chromium(t)
	broker, private := privateVHost(t, testenv.AMQPURL(t))
	bin := buildWarren(t)
	shots := os.Getenv("WARREN_TOWER_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	} else if !filepath.IsAbs(shots) {
		shots = filepath.Join("..", shots) // relative to the module root
	}
	token := uniqueName("token-")

	// The Tower, on a free port it prints.
	_, out := start(t, bin, broker, []string{"WARREN_TOWER_TOKEN=" + token}, "tower", "--addr", "127.0.0.1:0", "--history", "1m")
	var base string
	for out.Scan() {
		if _, after, ok := strings.Cut(out.Text(), "Control Tower on "); ok {
			base = after
			break
		}
	}
	if base == "" {
		t.Fatalf("warren tower printed no address: %v", out.Err())
	}
	go func() {
		for out.Scan() {
		}
	}()

	// On a vhost of its own the test's names need not be unique (and the
	// screenshots read better).
	tag := uniqueName("t")
	fred, bob, path := tag+"-fred", tag+"-bob", "/"+tag+"/charge"
	if private {
		tag, fred, bob, path = "blue", "fred", "bob", "/billing/charge"
	}
	start(t, bin, broker, nil, "agent", "--token", fred, "--tag", tag, "--ping", "500ms")
	bobProc, _ := start(t, bin, broker, nil, "agent", "--token", bob, "--tag", tag, "--ping", "500ms")

	ctx, cancel := chromedp.NewExecAllocator(t.Context(),
		chromedp.ExecPath(browser),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 860),
	)
	defer cancel()
	ctx, cancelTab := chromedp.NewContext(ctx, chromedp.WithLogf(t.Logf))
	defer cancelTab()
	ctx, cancelTimeout := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelTimeout()

	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			// Bounded: a query without a deadline retries for ever, and
			// the test would hang instead of failing.
			hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			html, _ := chromedp.Run(hctx, chromedp.OuterHTML(chromedp.CSS("main")))
			t.Fatalf("%s: %v\npage: %.3000s", what, err, html)
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	shot := func(name string) {
		t.Helper()
		do("settle", chromedp.Sleep(300*time.Millisecond))
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(shots, name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	css := func(format string, a ...any) chromedp.CSS { return chromedp.CSS(fmt.Sprintf(format, a...)) }
	row := func(id string) chromedp.CSS { return css(`#agents tr[data-agent=%q]`, id) }

	// Two agents appear, live.
	do("open the Tower and see two agents",
		chromedp.Navigate(base+"?token="+token),
		chromedp.WaitVisible(row(fred)),
		chromedp.WaitVisible(row(bob)),
		chromedp.WaitVisible(css(`#live.on`)),
	)
	page, err := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("html")))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(page, token) || strings.Contains(page, ":guest@") {
		t.Fatal("the page shows the token or the broker password")
	}

	// A fan-out from the Send page: both results.
	do("send a fan-out",
		chromedp.Click(css(`nav a[data-tab="send"]`)),
		chromedp.WaitVisible(css(`#send-form`)),
		chromedp.SetValue(css(`#send-form [name=path]`), "/simple/whoami"),
		chromedp.SetValue(css(`#send-form [name=selector]`), "all"),
		chromedp.SetValue(css(`#send-form [name=tags]`), tag),
		chromedp.Click(css(`#send-button`)),
		chromedp.WaitVisible(css(`#send-result tr[data-agent=%q]`, fred)),
		chromedp.WaitVisible(css(`#send-result tr[data-agent=%q]`, bob)),
	)
	fredResult := text(fmt.Sprintf(`#send-result tr[data-agent=%q] pre`, fred))
	bobResult := text(fmt.Sprintf(`#send-result tr[data-agent=%q] pre`, bob))
	summary := text(`#send-result p`)
	if fredResult != `"`+fred+`"` || bobResult != `"`+bob+`"` || !strings.Contains(summary, "2 ok") {
		t.Fatalf("results: fred %q, bob %q, summary %q", fredResult, bobResult, summary)
	}
	shot("tower-send.png")
	// A long request: its progress shows before its result.
	do("send a request that reports progress",
		chromedp.SetValue(css(`#send-form [name=path]`), "/simple/sleep"),
		chromedp.SetValue(css(`#send-form [name=selector]`), "least_loaded"),
		chromedp.SetValue(css(`#send-form [name=target]`), fred),
		chromedp.SetValue(css(`#send-form [name=payload]`), "0.5"),
		chromedp.Click(css(`#send-button`)),
		chromedp.WaitVisible(css(`#send-result p.progress[data-agent=%q]`, fred)),
		chromedp.WaitVisible(css(`#send-result tr[data-agent=%q] pre`, fred)),
	)
	if r := text(fmt.Sprintf(`#send-result tr[data-agent=%q] pre`, fred)); !strings.Contains(r, "slept") {
		t.Fatalf("sleep result %q", r)
	}
	do("services", chromedp.Click(css(`nav a[data-tab="services"]`)),
		chromedp.WaitVisible(css(`#services tr[data-path="/simple/whoami"]`)))
	shot("tower-services.png")

	// A dead letter, replayed from the page to a queue of the test's own.
	tr, err := amqp.Dial(t.Context(), broker, amqp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := wire.Topology(t.Context(), tr); err != nil {
		t.Fatal(err)
	}
	q, err := tr.DeclareQueue(t.Context(), transport.Queue{Name: uniqueName("tower-test-replayed-"), AutoDelete: true})
	if err != nil {
		t.Fatal(err)
	}
	replayed, err := tr.Consume(t.Context(), q, transport.ConsumeOptions{AutoAck: true})
	if err != nil {
		t.Fatal(err)
	}
	letterID, otherID := uniqueName("msg-"), uniqueName("msg-")
	for i, id := range []string{letterID, otherID} {
		msg := transport.Message{Type: wire.TypePush, MessageID: id, AppID: fred, ContentType: wire.ContentJSON,
			Body: fmt.Appendf(nil, `{"order":%d,"amount":"12.50"}`, 1041+i), Timestamp: time.Now(),
			Headers: map[string]any{wire.HeaderPath: path, wire.HeaderReason: wire.CodeHandler, wire.HeaderError: "card declined: insufficient funds",
				wire.HeaderAgent: fred, wire.HeaderOriginalExchange: "", wire.HeaderOriginalRoutingKey: q}}
		if err := tr.Publish(t.Context(), wire.DeadLetterExchange, "", msg, transport.PublishOptions{Confirm: true}); err != nil {
			t.Fatal(err)
		}
	}
	letter := fmt.Sprintf(`#dlq tr[data-id=%q]`, letterID)
	do("list the dead letters",
		chromedp.Click(css(`nav a[data-tab="dlq"]`)),
		chromedp.SetValue(css(`#dlq-filter [name=path]`), path),
		chromedp.Click(css(`#dlq-refresh`)),
	)
	// Another consumer of the dead-letter queue (a test on the shared
	// vhost) may hold the letter for a moment: refresh until it shows.
	testenv.WaitFor(t, 60*time.Second, func() error {
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf(`document.querySelectorAll(%q).length`, letter)))
		if err != nil {
			return err
		}
		if n == 1 {
			return nil
		}
		_ = chromedp.Do(ctx, chromedp.Click(css(`#dlq-refresh`)), chromedp.Sleep(200*time.Millisecond))
		return fmt.Errorf("dead letter %s not listed", letterID)
	})
	do("show it", chromedp.Click(chromedp.CSS(letter+` button[data-action="show"]`)),
		chromedp.WaitVisible(css(`#letter pre.body`)))
	shot("tower-dlq.png")
	do("replay it", chromedp.Click(chromedp.CSS(letter+` button[data-action="replay"]`)),
		chromedp.WaitVisible(css(`#dlq-action p[data-op="replay"][data-count="1"]`)))
	select {
	case d := <-replayed:
		if d.MessageID != letterID || string(d.Body) != `{"order":1041,"amount":"12.50"}` {
			t.Fatalf("replayed %q %s", d.MessageID, d.Body)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the replayed letter did not arrive")
	}

	// Kill bob: the Tower drops him when his pings stop.
	do("back to the agents", chromedp.Click(css(`nav a[data-tab="agents"]`)),
		chromedp.WaitVisible(row(fred)))
	shot("tower-agents.png")
	bobProc.stop(syscall.SIGKILL)
	do("see bob dropped",
		chromedp.WaitNotPresent(row(bob)),
		chromedp.WaitVisible(css(`#events li.ev-expired`)),
		chromedp.WaitVisible(row(fred)),
	)
	if evs := text(`#events`); !strings.Contains(evs, bob+" expired") || !strings.Contains(evs, fred+" joined") {
		t.Fatalf("events: %q", evs)
	}
}
