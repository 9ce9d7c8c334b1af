package bertrpc_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/warrenrpc/warren/bert"
	"github.com/warrenrpc/warren/bertrpc"
	"github.com/warrenrpc/warren/internal/testenv"
)

// wantClosed waits (at most 15 s) for the server to close r's connection.
func (r *rawConn) wantClosed(why string) {
	r.t.Helper()
	_ = r.c.SetReadDeadline(time.Now().Add(15 * time.Second))
	_, err := r.br.ReadByte()
	if err == nil {
		r.t.Fatalf("%s: the server sent more instead of closing", why)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		r.t.Fatalf("%s: the connection is still open", why)
	}
}

// recvError reads a reply that must be an error of the given type, code
// and class, and returns it.
func (r *rawConn) recvError(typ bertrpc.ErrorType, code int, class string) (detail string) {
	r.t.Helper()
	v := r.recv()
	t, ok := v.(bert.Tuple)
	if !ok || len(t) != 2 || t[0] != bert.Atom("error") {
		r.t.Fatalf("want an error reply, got %s", bert.Format(v))
	}
	e, ok := t[1].(bert.Tuple)
	if !ok || len(e) != 5 || e[0] != bert.Atom(typ) || e[1] != code || string(e[2].([]byte)) != class {
		r.t.Fatalf("want {error, {%s, %d, <<%q>>, ...}}, got %s", typ, code, class, bert.Format(v))
	}
	return string(e[3].([]byte))
}

// TestMaxConnectionsEvictsLongestIdle: with max_connections 50, each of 10
// further connections closes the connection idle longest, and is served.
func TestMaxConnectionsEvictsLongestIdle(t *testing.T) {
	const limit, total = 50, 60
	cfg := natConfig()
	cfg.MaxConnections = limit
	s := startServer(t, cfg, bertrpc.WithNative(natRegistry(t)))
	conns := make([]*rawConn, total)
	for i := range total {
		conns[i] = dialRaw(t, s)
		conns[i].send(callTerm("nat", "add", i, 1))
		wantTerm(t, conns[i].recv(), bert.Tuple{bert.Atom("reply"), i + 1})
	}
	// The 10 oldest were closed, in order, to make room.
	for i := range total - limit {
		conns[i].wantClosed(fmt.Sprintf("connection %d of %d over max_connections %d", i, total, limit))
	}
	// The others serve on.
	for i := total - limit; i < total; i++ {
		conns[i].send(callTerm("nat", "add", i, 2))
		wantTerm(t, conns[i].recv(), bert.Tuple{bert.Atom("reply"), i + 2})
	}
	// The stats call's own connection closes one more.
	if n := statInt(t, s, "tcp.evicted"); n != total-limit+1 {
		t.Errorf("tcp.evicted = %d, want %d", n, total-limit+1)
	}
	if n := statInt(t, s, "tcp.open"); n > limit {
		t.Errorf("tcp.open = %d over max_connections %d", n, limit)
	}
}

// blocker is a native function nat:block that holds its caller until
// released, and counts the callers in hand.
type blocker struct {
	in      atomic.Int64
	release chan struct{}
}

func newBlocker(t *testing.T, reg *bertrpc.Registry) *blocker {
	b := &blocker{release: make(chan struct{})}
	if err := reg.Register("nat", "block", 0, func(ctx context.Context, _ bert.List) (any, error) {
		b.in.Add(1)
		defer b.in.Add(-1)
		select {
		case <-b.release:
			return bert.Atom("ok"), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}); err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *blocker) waitIn(t *testing.T, n int64) {
	t.Helper()
	testenv.WaitFor(t, 15*time.Second, func() error {
		if got := b.in.Load(); got != n {
			return fmt.Errorf("%d callers in hand, want %d", got, n)
		}
		return nil
	})
}

// TestMaxConnectionsRefusesWhenAllBusy: when every connection has a call
// in hand, a new one is refused with a clear error; once calls end, new
// connections are served again.
func TestMaxConnectionsRefusesWhenAllBusy(t *testing.T) {
	const limit = 5
	reg := natRegistry(t)
	b := newBlocker(t, reg)
	cfg := natConfig()
	cfg.MaxConnections = limit
	s := startServer(t, cfg, bertrpc.WithNative(reg))
	busy := make([]*rawConn, limit)
	for i := range busy {
		busy[i] = dialRaw(t, s)
		busy[i].send(callTerm("nat", "block"))
	}
	b.waitIn(t, limit)

	r := dialRaw(t, s)
	r.send(callTerm("nat", "add", 1, 2))
	detail := r.recvError(bertrpc.ServerError, 0, "BusyError")
	if !strings.Contains(detail, "too many connections") || !strings.Contains(detail, "max_connections") {
		t.Fatalf("detail %q", detail)
	}
	r.wantClosed("refused connection")

	close(b.release)
	for _, c := range busy {
		wantTerm(t, c.recv(), bert.Tuple{bert.Atom("reply"), bert.Atom("ok")})
	}
	if v := mustCall(t, s, "nat", "add", 1, 2); v != 3 {
		t.Fatalf("add after the calls ended = %v", v)
	}
	if n := statInt(t, s, "tcp.refused"); n != 1 {
		t.Errorf("tcp.refused = %d, want 1", n)
	}
}

// TestMaxPendingCasts: casts over max_pending_casts are answered with an
// error instead of {noreply} and not run; calls still work, and casts are
// accepted again once the pending ones finish.
func TestMaxPendingCasts(t *testing.T) {
	const limit, total = 50, 60
	reg := natRegistry(t)
	b := newBlocker(t, reg)
	cfg := natConfig()
	cfg.MaxPendingCasts = limit
	s := startServer(t, cfg, bertrpc.WithNative(reg))
	r := dialRaw(t, s)
	cast := bert.Tuple{bert.Atom("cast"), bert.Atom("nat"), bert.Atom("block"), bert.List{}}
	for i := range total {
		r.send(cast)
		if i < limit {
			wantTerm(t, r.recv(), bert.Tuple{bert.Atom("noreply")})
			continue
		}
		detail := r.recvError(bertrpc.ServerError, 0, "BusyError")
		if !strings.Contains(detail, "max_pending_casts") || !strings.Contains(detail, "not run") {
			t.Fatalf("detail %q", detail)
		}
	}
	b.waitIn(t, limit) // and no more: the refused ones did not run
	if n := statInt(t, s, "casts.pending"); n != limit {
		t.Errorf("casts.pending = %d, want %d", n, limit)
	}
	r.send(callTerm("nat", "add", 1, 2))
	wantTerm(t, r.recv(), bert.Tuple{bert.Atom("reply"), 3})

	close(b.release)
	testenv.WaitFor(t, 15*time.Second, func() error {
		if n := statInt(t, s, "casts.pending"); n != 0 {
			return fmt.Errorf("casts.pending = %d", n)
		}
		return nil
	})
	r.send(cast)
	wantTerm(t, r.recv(), bert.Tuple{bert.Atom("noreply")})
	if n := statInt(t, s, "casts.refused"); n != total-limit {
		t.Errorf("casts.refused = %d, want %d", n, total-limit)
	}
}

// TestFrameTimeout: a client that announces a large frame and sends it
// byte by byte (slow loris) is answered with a protocol error and closed
// after frame_timeout, long before the idle timeout; one that stops inside
// the length header likewise.
func TestFrameTimeout(t *testing.T) {
	const conns = 50
	cfg := natConfig()
	cfg.FrameTimeout = 500 * time.Millisecond
	cfg.IdleTimeout = time.Minute
	s := startServer(t, cfg, bertrpc.WithNative(natRegistry(t)))
	loris := make([]*rawConn, conns)
	for i := range loris {
		loris[i] = dialRaw(t, s)
		var hdr [5]byte
		binary.BigEndian.PutUint32(hdr[:], 16<<20)
		hdr[4] = 131
		if _, err := loris[i].c.Write(hdr[:]); err != nil {
			t.Fatal(err)
		}
	}
	half := dialRaw(t, s)
	if _, err := half.c.Write([]byte{0, 0}); err != nil {
		t.Fatal(err)
	}
	for _, r := range loris {
		detail := r.recvError(bertrpc.ProtocolError, bertrpc.CodeNoData, "ProtocolError")
		if !strings.Contains(detail, "frame_timeout") {
			t.Fatalf("detail %q", detail)
		}
		r.wantClosed("slow loris")
	}
	half.recvError(bertrpc.ProtocolError, bertrpc.CodeNoHeader, "ProtocolError")
	half.wantClosed("cut header")
	if v := mustCall(t, s, "nat", "add", 1, 2); v != 3 {
		t.Fatalf("add = %v", v)
	}
}

// TestIdleTimeoutNotRenewedByInfo: info BERPs alone do not keep a
// connection open past the idle timeout; requests do.
func TestIdleTimeoutNotRenewedByInfo(t *testing.T) {
	cfg := natConfig()
	cfg.IdleTimeout = 800 * time.Millisecond
	s := startServer(t, cfg, bertrpc.WithNative(natRegistry(t)))
	r := dialRaw(t, s)
	r.send(callTerm("nat", "add", 1, 2))
	wantTerm(t, r.recv(), bert.Tuple{bert.Atom("reply"), 3})
	info, _ := bert.Marshal(bert.Tuple{bert.Atom("info"), bert.Atom("priority"), bert.List{bert.Atom("low")}})
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		_ = r.c.SetReadDeadline(time.Now().Add(15 * time.Second))
		_, _ = r.br.ReadByte()
	}()
	start := time.Now()
	for {
		select {
		case <-closed:
			return
		case <-time.After(200 * time.Millisecond):
		}
		if _, err := r.c.Write(appendBERP(info)); err != nil {
			<-closed
			return
		}
		if time.Since(start) > 12*time.Second {
			t.Fatal("info BERPs kept the connection open past the idle timeout")
		}
	}
}

func appendBERP(b []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)
}

// fdServerEnv makes the test binary a server with a low descriptor limit
// (see fdServer).
const fdServerEnv = "BERTRPC_TEST_FDSERVER"

// fdServer runs a server whose process may open only a few descriptors:
// it prints its address, serves until stdin ends, and returns the exit
// status.
func fdServer() int {
	limit, err := strconv.Atoi(os.Getenv(fdServerEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	rl.Cur = uint64(limit)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	reg := bertrpc.NewRegistry()
	_ = reg.Register("nat", "add", 2, func(_ context.Context, a bert.List) (any, error) { return a[0].(int) + a[1].(int), nil })
	cfg := natConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.MaxConnections = -1 // the descriptors run out first
	cfg.IdleTimeout = 10 * time.Minute
	s, err := bertrpc.New(cfg, bertrpc.WithNative(reg), bertrpc.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-s.Ready()
	fmt.Println(s.Addr().String())
	_, _ = io.Copy(io.Discard, os.Stdin)
	cancel()
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestAcceptUnderDescriptorExhaustion: a server out of file descriptors
// (RLIMIT_NOFILE 32, 60 idle connections) closes its longest-idle
// connections to accept new ones, so a client is served at once rather
// than after the idle timeout.
func TestAcceptUnderDescriptorExhaustion(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), fdServerEnv+"=32")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr testenv.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("server: %v\n%s", err, stderr.String())
			}
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("server did not stop\n%s", stderr.String())
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("server address: %v\n%s", err, stderr.String())
	}
	addr := strings.TrimSpace(line)

	for range 60 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	v, err := bertrpc.Call(ctx, addr, "nat", "add", 1, 2)
	if err != nil || v != 3 {
		t.Fatalf("call while out of descriptors: %v, %v\nserver log:\n%s", v, err, tail(stderr.String(), 2000))
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
