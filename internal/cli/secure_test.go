package cli

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/secure"
)

// TestSecureModeOnRabbitMQ runs an agent process in secure mode and calls
// it from the command line with a certificate from the same CA; a call
// without one is not executed.
func TestSecureModeOnRabbitMQ(t *testing.T) {
	url := testenv.AMQPURL(t)
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca, err := secure.NewCA("warren test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := ca.WriteFiles(caFile, filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	tag := fabrictest.Actor()
	files := map[string][2]string{}
	for _, name := range []string{tag + "-agent", tag + "-mapper"} {
		id, err := ca.Issue(name, secure.CertOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cert, key := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
		if err := secure.WriteIdentity(id, cert, key); err != nil {
			t.Fatal(err)
		}
		files[name] = [2]string{cert, key}
	}
	secureArgs := func(name string) []string {
		return []string{"--secure-cert", files[name][0], "--secure-key", files[name][1], "--secure-ca", caFile}
	}
	agent := exec.Command(bin, append([]string{"agent", "--broker", url, "--tag", tag, "--ping", "1s"}, secureArgs(tag+"-agent")...)...)
	var stderr bytes.Buffer
	agent.Stderr = &stderr
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		agent.Process.Kill()
		agent.Wait()
		if t.Failed() {
			t.Logf("agent stderr:\n%s", stderr.String())
		}
	})
	call := func(extra ...string) (string, error) {
		args := append([]string{"request", "/simple/whoami", "--broker", url, "--tag", tag, "--timeout", "3s"}, extra...)
		var e bytes.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Stderr = &e
		out, err := cmd.Output()
		if err != nil {
			return e.String(), err
		}
		return string(out), nil
	}
	testenv.WaitFor(t, 15*time.Second, func() error {
		out, err := call(secureArgs(tag + "-mapper")...)
		if err != nil {
			return &exitErr{err, out}
		}
		if strings.TrimSpace(out) != `"`+tag+`-agent"` {
			return &exitErr{nil, out}
		}
		return nil
	})
	// A mapper without a certificate cannot even see the agent (its
	// heartbeats are signed envelopes it does not accept as records) and
	// its requests would be refused.
	if out, err := call(); err == nil {
		t.Fatalf("plain request to a secure agent answered: %s", out)
	}
}
