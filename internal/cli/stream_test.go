package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/simple"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/wire"
)

// TestRequestStream sends a file with warren request --stream and from
// standard input with --stream -, to /ACTOR/digest.
func TestRequestStream(t *testing.T) {
	tr, url := rabbit(t)
	actor := fabrictest.Actor()
	id := actor + "-a"
	fabrictest.DeleteQueues(t, url, wire.ServiceQueue("/"+actor+"/digest"), wire.AgentQueue(id))
	a, err := agent.New(tr, agent.Config{Identity: id, PingInterval: time.Second}, agent.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Expose(actor, simple.Simple{}); err != nil {
		t.Fatal(err)
	}
	fabrictest.RunAgent(t, a)
	data := make([]byte, 3<<20+5)
	_, _ = rand.Read(data)
	sum := sha256.Sum256(data)
	file := filepath.Join(t.TempDir(), "data.bin")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	check := func(out string) {
		t.Helper()
		var d simple.Digest
		if err := json.Unmarshal([]byte(out), &d); err != nil || d.Size != int64(len(data)) || d.SHA256 != hex.EncodeToString(sum[:]) {
			t.Fatalf("digest %q (%v)", out, err)
		}
	}
	testenv.WaitFor(t, 15*time.Second, func() error {
		code, out, errOut := run(t, t.Context(), "request", "/"+actor+"/digest", `"data.bin"`, "--stream", file, "--broker", url, "--log-level", "error")
		if code != 0 {
			return fmt.Errorf("exit %d: %s", code, errOut)
		}
		check(out)
		return nil
	})
	// Standard input is the file: Main reads os.Stdin.
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stdin := os.Stdin
	os.Stdin = f
	code, out, errOut := run(t, t.Context(), "request", "/"+actor+"/digest", "--stream", "-", "--broker", url, "--log-level", "error")
	os.Stdin = stdin
	if code != 0 {
		t.Fatalf("--stream -: exit %d %s", code, errOut)
	}
	check(out)
	for _, args := range [][]string{
		{"request", "/" + actor + "/digest", "--stream", file, "--selector", "all"},
		{"request", "/" + actor + "/digest", "-", "--stream", "-"},
		{"request", "/" + actor + "/digest", "--stream", filepath.Join(t.TempDir(), "nope")},
	} {
		if code, _, errOut := run(t, t.Context(), append(args, "--broker", url, "--log-level", "error")...); code != 2 {
			t.Errorf("%v: exit %d %s; want usage error", args, code, errOut)
		}
	}
}

// TestRequestOutput takes a streamed result with warren request --output.
func TestRequestOutput(t *testing.T) {
	tr, url := rabbit(t)
	actor := fabrictest.Actor()
	id := actor + "-a"
	fabrictest.DeleteQueues(t, url, wire.ServiceQueue("/"+actor+"/get"), wire.AgentQueue(id))
	data := make([]byte, 1<<20+7)
	_, _ = rand.Read(data)
	a, err := agent.New(tr, agent.Config{Identity: id, PingInterval: time.Second}, agent.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Handle("/"+actor+"/get", agent.Func(func(_ context.Context, name string) (*agent.StreamResult, error) {
		return &agent.StreamResult{Data: bytes.NewReader(data), Meta: name}, nil
	})); err != nil {
		t.Fatal(err)
	}
	fabrictest.RunAgent(t, a)
	file := filepath.Join(t.TempDir(), "out.bin")
	testenv.WaitFor(t, 15*time.Second, func() error {
		code, out, errOut := run(t, t.Context(), "request", "/"+actor+"/get", `"f.bin"`, "--output", file, "--broker", url, "--log-level", "error")
		if code != 0 {
			return fmt.Errorf("exit %d: %s", code, errOut)
		}
		if out != "\"f.bin\"\n" {
			return fmt.Errorf("stdout %q", out)
		}
		return nil
	})
	got, err := os.ReadFile(file)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("--output wrote %d bytes (%v), want %d", len(got), err, len(data))
	}
	code, out, errOut := run(t, t.Context(), "request", "/"+actor+"/get", `"f.bin"`, "-o", "-", "--broker", url, "--log-level", "error")
	if code != 0 || out != string(data) || errOut != "\"f.bin\"\n" {
		t.Fatalf("-o -: exit %d, %d bytes on stdout, stderr %q", code, len(out), errOut)
	}
	// Without --output the caller does not take streams: a clear error.
	code, _, errOut = run(t, t.Context(), "request", "/"+actor+"/get", `"f.bin"`, "--broker", url, "--log-level", "error")
	if code != 1 || !strings.Contains(errOut, "AcceptStream") {
		t.Errorf("without --output: exit %d %s", code, errOut)
	}
}

// TestPushStream sends a file with warren push --stream, which exits once
// the agent holds it; the handler gets the whole data.
func TestPushStream(t *testing.T) {
	tr, url := rabbit(t)
	actor := fabrictest.Actor()
	id := actor + "-a"
	fabrictest.DeleteQueues(t, url, wire.ServiceQueue("/"+actor+"/keep"), wire.AgentQueue(id))
	a, err := agent.New(tr, agent.Config{Identity: id, PingInterval: time.Second}, agent.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 4)
	if err := a.Handle("/"+actor+"/keep", agent.HandlerFunc(func(_ context.Context, r *agent.Request) (any, error) {
		h := sha256.New()
		if r.Stream != nil {
			_, _ = io.Copy(h, r.Stream)
		}
		got <- fmt.Sprintf("%s %t %x", r.Payload, r.Push, h.Sum(nil))
		return nil, nil
	})); err != nil {
		t.Fatal(err)
	}
	fabrictest.RunAgent(t, a)
	data := make([]byte, 2<<20+3)
	_, _ = rand.Read(data)
	file := filepath.Join(t.TempDir(), "data.bin")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 15*time.Second, func() error {
		code, out, errOut := run(t, t.Context(), "push", "/"+actor+"/keep", `"data.bin"`, "--stream", file, "--broker", url, "--log-level", "error")
		if code != 0 || out != "" {
			return fmt.Errorf("exit %d: %q %s", code, out, errOut)
		}
		return nil
	})
	select {
	case s := <-got:
		if want := fmt.Sprintf(`"data.bin" true %x`, sha256.Sum256(data)); s != want {
			t.Fatalf("handler got %q, want %q", s, want)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the handler did not run")
	}
	for _, args := range [][]string{
		{"push", "/" + actor + "/keep", "--stream", file, "--selector", "all"},
		{"push", "/" + actor + "/keep", "-", "--stream", "-"},
		{"push", "/" + actor + "/keep", "--stream", filepath.Join(t.TempDir(), "nope")},
	} {
		if code, _, errOut := run(t, t.Context(), append(args, "--broker", url, "--log-level", "error")...); code != 2 {
			t.Errorf("%v: exit %d %s; want usage error", args, code, errOut)
		}
	}
}
