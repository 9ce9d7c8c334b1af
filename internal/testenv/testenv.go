// Package testenv holds what Warren's tests share about their environment:
// where the RabbitMQ broker is, how to wait for a condition without sleeping,
// how tests log, and how fault tests drive rabbitmqctl.
//
// Tests that need RabbitMQ read its URL from WARREN_AMQP_URL with [AMQPURL].
// Developers start a broker with scripts/rabbitmq-up (scripts/test does it
// for them); CI (env CI non-empty) fails instead of skipping, so a broken
// CI setup cannot pass by skipping everything.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// AMQPURL returns the URL of the RabbitMQ broker for tests, from the
// environment variable WARREN_AMQP_URL. When it is unset the test is skipped,
// or fails when the environment variable CI is non-empty.
func AMQPURL(t testing.TB) string {
	t.Helper()
	if u := os.Getenv("WARREN_AMQP_URL"); u != "" {
		return u
	}
	if os.Getenv("CI") != "" {
		t.Fatal("WARREN_AMQP_URL unset under CI: .ci/run must start RabbitMQ (scripts/rabbitmq-up)")
	}
	t.Skip("WARREN_AMQP_URL unset: run scripts/rabbitmq-up and export WARREN_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ (or use scripts/test)")
	return ""
}

// WaitFor calls cond until it returns nil, and fails the test with cond's
// last error when timeout passes first or the test's context ends. The pause
// between calls starts at 1ms and grows to 50ms.
func WaitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	pause := time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		tick := time.NewTimer(pause)
		select {
		case <-deadline.C:
			tick.Stop()
			t.Fatalf("condition not met within %v: %v", timeout, err)
		case <-t.Context().Done():
			tick.Stop()
			t.Fatalf("test ended while waiting: %v", err)
		case <-tick.C:
		}
		pause = min(2*pause, 50*time.Millisecond)
	}
}

// Logger returns a logger for the code under test. It writes text to
// t.Output() when the environment variable WARREN_TEST_LOG is set to debug,
// info, warn or error (the minimum level; any other non-empty value means
// debug) and discards everything otherwise. Records arriving after the test
// has finished are dropped.
func Logger(t testing.TB) *slog.Logger {
	v := strings.ToLower(os.Getenv("WARREN_TEST_LOG"))
	if v == "" {
		return slog.New(slog.DiscardHandler)
	}
	var level slog.Level
	switch v {
	case "info":
		level = slog.LevelInfo
	case "warn", "warning":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	default:
		level = slog.LevelDebug
	}
	w := &testWriter{w: t.Output()}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// testWriter forwards to a test's output until the test is over.
type testWriter struct {
	mu   sync.Mutex
	w    io.Writer
	done bool
}

func (tw *testWriter) Write(p []byte) (int, error) {
	tw.mu.Lock()
	defer tw.mu.Unlock()
	if tw.done {
		return len(p), nil
	}
	return tw.w.Write(p)
}

func (tw *testWriter) stop() {
	tw.mu.Lock()
	tw.done = true
	tw.mu.Unlock()
}

// Disruptive reports whether tests may disrupt the shared broker: restart
// it, raise resource alarms. That breaks whatever else is using the broker,
// so such tests are named TestDisruptive..., skip unless the environment
// variable WARREN_TEST_DISRUPT is set, and scripts/test runs them in a
// separate pass, one package at a time, after everything else.
func Disruptive() bool {
	return os.Getenv("WARREN_TEST_DISRUPT") != ""
}

// RequireDisruptive skips the test unless [Disruptive] is true.
func RequireDisruptive(t testing.TB) {
	t.Helper()
	if !Disruptive() {
		t.Skip("disrupts the shared broker: set WARREN_TEST_DISRUPT=1 and run alone (scripts/test does)")
	}
}

// RabbitmqctlAvailable reports whether rabbitmqctl is on PATH, which fault
// tests need to stop and start the broker.
func RabbitmqctlAvailable() bool {
	_, err := exec.LookPath("rabbitmqctl")
	return err == nil
}

// Rabbitmqctl runs rabbitmqctl with args and returns its standard output. It
// skips the test when rabbitmqctl is not installed (fails under CI) and fails
// it when the command fails or takes more than two minutes.
func Rabbitmqctl(t testing.TB, args ...string) string {
	t.Helper()
	if !RabbitmqctlAvailable() {
		if os.Getenv("CI") != "" {
			t.Fatal("rabbitmqctl not on PATH under CI")
		}
		t.Skip("rabbitmqctl not on PATH: fault tests need a local broker (scripts/rabbitmq-up)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr strings.Builder
	cmd := exec.CommandContext(ctx, "rabbitmqctl", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("rabbitmqctl %s: %v\n%s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String()
}

// RestartRabbitMQ stops and starts the RabbitMQ application of the local node
// (rabbitmqctl stop_app, start_app, await_startup), which drops every
// connection and loses non-durable entities.
func RestartRabbitMQ(t testing.TB) {
	t.Helper()
	Rabbitmqctl(t, "stop_app")
	Rabbitmqctl(t, "start_app")
	Rabbitmqctl(t, "await_startup", "--timeout", "120")
}

// Buffer is a bytes.Buffer that one goroutine (a logger, a server, a
// child's output) may write while the test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what has been written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ClusterURLs returns the AMQP URLs of the three nodes of the local test
// cluster (scripts/rabbitmq-cluster up prints them), from the environment
// variable WARREN_CLUSTER_URLS, comma-separated. When it is unset the test
// is skipped, or fails when the environment variable CI is non-empty.
func ClusterURLs(t testing.TB) []string {
	t.Helper()
	if u := os.Getenv("WARREN_CLUSTER_URLS"); u != "" {
		return strings.Split(u, ",")
	}
	if os.Getenv("CI") != "" {
		t.Fatal("WARREN_CLUSTER_URLS unset under CI: scripts/test must start the cluster (scripts/rabbitmq-cluster up)")
	}
	t.Skip("WARREN_CLUSTER_URLS unset: run scripts/rabbitmq-cluster up and export WARREN_CLUSTER_URLS=$(scripts/rabbitmq-cluster up) (or use scripts/test)")
	return nil
}

// Cluster runs scripts/rabbitmq-cluster with args (kill 1, start 1, ...)
// and returns its standard output; it fails the test when the script fails
// or takes more than three minutes.
func Cluster(t testing.TB, args ...string) string {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr strings.Builder
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "rabbitmq-cluster"), args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("scripts/rabbitmq-cluster %s: %v\n%s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String()
}

// repoRoot is the directory of the module's go.mod, found from the working
// directory up (go test runs a test in its package's directory).
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testenv: no go.mod above the working directory")
		}
		dir = parent
	}
}

// PrivateVHost returns the URL of a vhost of the test's own on the broker
// of amqpURL, created through RabbitMQ's management API when
// WARREN_ADMIN_URL is set (as guest, or WARREN_ADMIN_USER and
// WARREN_ADMIN_PASSWORD) and deleted when the test ends, with every
// permission for amqpURL's user; ok is false, and the URL amqpURL, without
// WARREN_ADMIN_URL. Tests whose processes serve the example actor /simple/*
// use one: in the shared vhost, other tests' agents would consume the
// shared queue warren.service./simple/... and run work the test counts.
func PrivateVHost(t testing.TB, amqpURL, prefix string) (vhostURL string, ok bool) {
	t.Helper()
	admin := os.Getenv("WARREN_ADMIN_URL")
	if admin == "" {
		return amqpURL, false
	}
	user, pw := os.Getenv("WARREN_ADMIN_USER"), os.Getenv("WARREN_ADMIN_PASSWORD")
	if user == "" {
		user, pw = "guest", "guest"
	}
	u, err := url.Parse(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	vhost := prefix + hex.EncodeToString(b)
	api := func(method, path, body string) error {
		req, err := http.NewRequestWithContext(context.Background(), method, strings.TrimRight(admin, "/")+path, strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Close = true // no idle connection outlives the test
		req.SetBasicAuth(user, pw)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("%s %s: %s", method, path, resp.Status)
		}
		return nil
	}
	if err := api(http.MethodPut, "/api/vhosts/"+url.PathEscape(vhost), `{}`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := api(http.MethodDelete, "/api/vhosts/"+url.PathEscape(vhost), ""); err != nil {
			t.Errorf("delete vhost: %v", err)
		}
	})
	if err := api(http.MethodPut, "/api/permissions/"+url.PathEscape(vhost)+"/"+url.PathEscape(u.User.Username()),
		`{"configure":".*","write":".*","read":".*"}`); err != nil {
		t.Fatal(err)
	}
	u.Path, u.RawPath = "/"+vhost, "/"+url.PathEscape(vhost)
	return u.String(), true
}
