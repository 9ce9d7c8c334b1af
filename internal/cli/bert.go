package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/warrenrpc/warren/bertrpc"
	"github.com/warrenrpc/warren/bertrpc/nat"
	"github.com/warrenrpc/warren/metrics"
)

// bertCmd is `warren bert`: Ernie's command line on Warren's BERT-RPC
// server. With no subcommand it starts the server.
type bertCmd struct {
	Port int    `short:"p" placeholder:"PORT" help:"Port to listen on, or of the server to talk to (default 8000, or the YAML config's listen)."`
	Host string `placeholder:"HOST" help:"Address to listen on (default all), or of the server to talk to (default localhost)."`

	Serve          bertServeCmd `cmd:"" default:"withargs" help:"Start the server (the default when no command is given)."`
	Stats          bertAdminCmd `cmd:"" help:"Print the server's connection, worker and queue statistics (key=value lines)."`
	ReloadHandlers bertAdminCmd `cmd:"" name:"reload-handlers" help:"Gracefully restart all external workers: each finishes its request, then runs the new code."`
	Halt           bertAdminCmd `cmd:"" help:"Gracefully halt the server: stop accepting, finish the requests in hand, exit."`
	Bench          bertBenchCmd `cmd:"" help:"Measure calls/s and latency against a running server."`
}

// Help is the detail `warren bert --help` prints.
func (bertCmd) Help() string {
	return `Warren's BERT-RPC server speaks Ernie's protocols: its clients (bertrpc gem,
Erlang gen_tcp {packet, 4}), its external handlers (Ruby "Ernie.expose",
fds 3/4), its config file, access log and admin calls. Serve flags: see
"warren bert serve --help" (-c CONFIG -l LEVEL -a ACCESSLOG -d -P PIDFILE).

Examples:
  warren bert -d -p 9999 -c example.cfg
      Start the server in the background on port 9999 with example.cfg.
  warren bert reload-handlers -p 9999
      Restart the external handlers of the server on port 9999 with new code.
  warren bert stats -p 9999
      Print connections.total, workers.idle.MODULE, queue.high, ... lines.
  warren bert bench -p 9999 -m nat -f add -n 8 --keep
      Measure calls/s of nat:add(1, 2) with 8 clients on kept-open connections.`
}

// bertServeCmd starts the server; its flags are Ernie's.
type bertServeCmd struct {
	Config          string        `short:"c" placeholder:"CONFIG" required:"" help:"Config file: Ernie's Erlang terms ([{module, ext}, {type, external}, ...].), or YAML when it ends in .yaml/.yml."`
	Level           *int          `short:"l" name:"level" placeholder:"0-4" help:"Ernie's log level: 0 fatal, 1 error, 2 warn, 3 info, 4 debug (overrides --log-level)."`
	AccessLog       string        `short:"a" name:"access-log" placeholder:"LOGFILE" help:"Access log file (Ernie's ACC/ERR lines; reopened when moved or deleted)."`
	Detached        bool          `short:"d" help:"Run as a daemon (in the background, detached from the terminal)."`
	Pidfile         string        `short:"P" placeholder:"PIDFILE" help:"Write the server's pid to this file."`
	Timeout         time.Duration `placeholder:"DURATION" help:"Per-call timeout (default 30s; negative: none, as in Ernie)."`
	CastTimeout     time.Duration `name:"cast-timeout" placeholder:"DURATION" help:"Per-cast timeout (default: none, as in Ernie)."`
	Broker          string        `placeholder:"URL" help:"AMQP URL of the Warren broker, for fabric modules."`
	CloseAfterReply bool          `name:"close-after-reply" help:"Close each connection after its reply, as Ernie does (default: keep it open for more requests)."`
	MaxConnections  int           `name:"max-connections" placeholder:"N" help:"Most client connections open at once (default 1024; negative: no bound). Over it the longest-idle connection is closed; when all have a call in hand, the new one is refused with a BusyError."`
	MaxPendingCasts int           `name:"max-pending-casts" placeholder:"N" help:"Most casts acknowledged and not yet finished (default 1024; negative: no bound). Casts over it are answered with a BusyError and not run."`
	FrameTimeout    time.Duration `name:"frame-timeout" placeholder:"DURATION" help:"Time a frame may take to arrive once its first byte has (default 1m; negative: none)."`
	IdleTimeout     time.Duration `name:"idle-timeout" placeholder:"DURATION" help:"Close a kept-open connection that sends no request for this long (default 5m; negative: never)."`
	MetricsAddr     string        `name:"metrics-addr" placeholder:"HOST:PORT" help:"Serve Prometheus metrics on http://HOST:PORT/metrics: requests, connections, queues, idle workers, and the fabric mapper's (no authentication: bind a private address)."`

	Name   string     `placeholder:"NAME" help:"Erlang node name (accepted for Ernie compatibility; ignored)."`
	Sname  string     `placeholder:"SNAME" help:"Erlang short node name (accepted; ignored)."`
	Erlang erlangOpts `short:"E" placeholder:"ERLANG_OPTIONS" help:"Options for the Erlang VM, such as '-run mymodule' (accepted; ignored)."`
}

// erlangOpts is the value of -E: options Ernie passes to the Erlang VM,
// which usually start with '-' ("-run mymodule"). kong's string flags
// refuse such values as flags of their own; Ernie takes the next argument
// whatever it is, and so does this.
type erlangOpts string

// Decode implements kong.MapperValue.
func (e *erlangOpts) Decode(ctx *kong.DecodeContext) error {
	t := ctx.Scan.Pop()
	if t.IsEOL() {
		return errors.New("-E needs a value (options for the Erlang VM)")
	}
	*e = erlangOpts(t.String())
	return nil
}

// BeforeApply maps Ernie's numeric log levels given with --log-level
// (Ernie's long name for -l, "--log-level 3") to Warren's names, before
// the global flag's enum (debug, info, warn, error) is checked.
func (c *bertServeCmd) BeforeApply(kctx *kong.Context) error {
	for _, p := range kctx.Path {
		if p.Flag == nil || p.Flag.Name != "log-level" {
			continue
		}
		v := kctx.Value(p)
		if v.Kind() != reflect.String {
			continue
		}
		n, err := strconv.Atoi(v.String())
		if err != nil {
			continue // a name: the enum check decides
		}
		lvl, err := ernieLevel(n)
		if err != nil {
			return usageError{fmt.Errorf("--log-level %d: Ernie's levels are 0-4 (or use debug, info, warn, error)", n)}
		}
		v.SetString(lvl)
	}
	return nil
}

// detachedEnv marks the re-executed daemon process.
const detachedEnv = "WARREN_BERT_DETACHED"

func (c *bertServeCmd) Run(g *Globals, parent *bertCmd) error {
	if c.Level != nil {
		lvl, err := ernieLevel(*c.Level)
		if err != nil {
			return usageError{err}
		}
		g.LogLevel = lvl
	}
	log := g.Logger()
	if c.Name != "" || c.Sname != "" || c.Erlang != "" {
		log.Warn("--name, --sname and -E are Erlang VM options; ignored")
	}
	cfg, err := bertrpc.LoadConfig(c.Config)
	if err != nil {
		return err
	}
	if parent.Port != 0 || parent.Host != "" || cfg.Listen == "" {
		port := parent.Port
		if port == 0 {
			port = 8000
		}
		cfg.Listen = net.JoinHostPort(parent.Host, strconv.Itoa(port))
	}
	if c.AccessLog != "" {
		cfg.AccessLog = c.AccessLog
	}
	if c.Timeout != 0 {
		cfg.CallTimeout = c.Timeout
	}
	if c.CastTimeout != 0 {
		cfg.CastTimeout = c.CastTimeout
	}
	if c.CloseAfterReply {
		cfg.CloseAfterReply = true
	}
	if c.MaxConnections != 0 {
		cfg.MaxConnections = c.MaxConnections
	}
	if c.MaxPendingCasts != 0 {
		cfg.MaxPendingCasts = c.MaxPendingCasts
	}
	if c.FrameTimeout != 0 {
		cfg.FrameTimeout = c.FrameTimeout
	}
	if c.IdleTimeout != 0 {
		cfg.IdleTimeout = c.IdleTimeout
	}

	if c.Detached && os.Getenv(detachedEnv) == "" {
		return daemonize(g.Out())
	}

	reg := bertrpc.NewRegistry()
	if err := nat.Register(reg); err != nil {
		return err
	}
	var mreg *prometheus.Registry
	if c.MetricsAddr != "" {
		mreg = newMetricsRegistry()
	}
	opts := []bertrpc.Option{bertrpc.WithLogger(log), bertrpc.WithNative(reg), bertrpc.WithWorkerOutput(os.Stderr)}
	if cfg.HasFabric() {
		fab, stop, err := newBertFabric(g.Context(), g, c.Broker, mreg)
		if err != nil {
			return err
		}
		defer stop()
		opts = append(opts, bertrpc.WithFabric(fab))
		if g.tracer != nil { // set up by the fabric's dial when OTEL_* ask for tracing
			opts = append(opts, bertrpc.WithTracerProvider(g.tracer))
		}
	}
	srv, err := bertrpc.New(cfg, opts...)
	if err != nil {
		return err
	}
	if mreg != nil {
		if err := metrics.BERT(srv.Stats, mreg); err != nil {
			return err
		}
		ms, err := serveMetrics(g, c.MetricsAddr, mreg)
		if err != nil {
			return err
		}
		defer ms.stop()
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(g.Context()) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		return err
	}
	if c.Pidfile != "" {
		if err := os.WriteFile(c.Pidfile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			srv.Halt()
			<-done
			return fmt.Errorf("write pid file: %w", err)
		}
		defer os.Remove(c.Pidfile)
	}
	log.Info("warren bert serving", "addr", srv.Addr().String(), "config", c.Config)
	return <-done
}

// newBertFabric connects to the broker at url and runs a mapper that
// serves fabric modules. stop stops the mapper and closes the connection.
func newBertFabric(ctx context.Context, g *Globals, url string, reg *prometheus.Registry) (bertrpc.Fabric, func(), error) {
	if url == "" {
		return nil, nil, usageError{errors.New("fabric modules need --broker")}
	}
	tr, _, plain, err := brokerFlags{Broker: url}.dialAMQP(ctx, g, "bert")
	if err != nil {
		return nil, nil, err
	}
	closeTr := tr.Close
	if reg != nil {
		if err := metrics.Connection(plain, reg); err == nil {
			tr, err = metrics.Mapper(tr, reg)
		}
		if err != nil {
			closeTr()
			return nil, nil, err
		}
	}
	fab, stop, err := startFabric(ctx, g, tr)
	if err != nil {
		closeTr()
		return nil, nil, err
	}
	if reg != nil {
		if err := metrics.Registry(fab.m, reg); err != nil {
			stop()
			closeTr()
			return nil, nil, err
		}
	}
	return fab, func() { stop(); closeTr() }, nil
}

// ernieLevel maps Ernie's 0-4 log levels to slog level names.
func ernieLevel(n int) (string, error) {
	switch n {
	case 0, 1:
		return "error", nil
	case 2:
		return "warn", nil
	case 3:
		return "info", nil
	case 4:
		return "debug", nil
	}
	return "", fmt.Errorf("log level %d: want 0-4", n)
}

// daemonize re-executes this command detached from the terminal (new
// session, stdio on /dev/null) and returns; the child serves.
func daemonize(out io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("daemonize: %w", err)
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("daemonize: %w", err)
	}
	defer devnull.Close()
	cmd := exec.Command(exe, stripDetached(os.Args[1:])...)
	cmd.Env = append(os.Environ(), detachedEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("daemonize: %w", err)
	}
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	_, err = fmt.Fprintf(out, "warren bert started in the background, pid %d\n", pid)
	return err
}

// stripDetached removes -d/--detached from args (the child must not fork
// again; the environment marker guards too).
func stripDetached(args []string) []string {
	return slices.DeleteFunc(slices.Clone(args), func(a string) bool {
		return a == "-d" || a == "--detached" || strings.HasPrefix(a, "--detached=")
	})
}

// bertAdminCmd sends one __admin__ call (stats, reload_handlers, halt) and
// prints the answer, as `ernie stats -p PORT` does.
type bertAdminCmd struct{}

func (bertAdminCmd) Run(g *Globals, parent *bertCmd, kctx *kong.Context) error {
	fn := strings.ReplaceAll(strings.TrimPrefix(kctx.Command(), "bert "), "-", "_")
	ctx, cancel := context.WithTimeout(g.Context(), 30*time.Second)
	defer cancel()
	res, err := bertrpc.Call(ctx, parent.addr(), "__admin__", fn)
	if err != nil {
		return err
	}
	text := fmt.Sprint(res)
	if b, ok := res.([]byte); ok {
		text = string(b)
	}
	_, err = fmt.Fprintln(g.Out(), escapeLines(strings.TrimRight(text, "\n")))
	return err
}

func (c *bertCmd) addr() string {
	host, port := c.Host, c.Port
	if host == "" {
		host = "localhost"
	}
	if port == 0 {
		port = 8000
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// bertBenchCmd measures a running server.
type bertBenchCmd struct {
	Module   string        `short:"m" default:"nat" help:"Module to call."`
	Function string        `short:"f" default:"add" help:"Function to call with arguments [1, 2]."`
	Clients  int           `short:"n" default:"1" help:"Concurrent clients."`
	Duration time.Duration `default:"5s" help:"How long to run."`
	Keep     bool          `help:"Keep one connection open per client (default: a new connection per call, like Ernie's clients)."`
}

func (c *bertBenchCmd) Run(g *Globals, parent *bertCmd) error {
	if c.Clients < 1 {
		return usageError{errors.New("--clients must be at least 1")}
	}
	ctx := g.Context()
	stop := time.Now().Add(c.Duration)
	addr := parent.addr()
	var (
		mu   sync.Mutex
		lats []time.Duration
		fail error
		wg   sync.WaitGroup
	)
	start := time.Now()
	for range c.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine, err := benchClient(ctx, stop, addr, c.Module, c.Function, c.Keep)
			mu.Lock()
			defer mu.Unlock()
			lats = append(lats, mine...)
			if err != nil && fail == nil {
				fail = err
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if fail != nil {
		return fail
	}
	if len(lats) == 0 {
		return errors.New("bench: no call completed")
	}
	slices.Sort(lats)
	pct := func(p float64) time.Duration { return lats[int(p*float64(len(lats)-1))] }
	mode := "new connection per call"
	if c.Keep {
		mode = "kept-open connections"
	}
	_, err := fmt.Fprintf(g.Out(), "%s:%s, %d client(s), %s: calls=%d calls/s=%.0f p50=%v p99=%v max=%v\n",
		c.Module, c.Function, c.Clients, mode, len(lats), float64(len(lats))/elapsed.Seconds(),
		pct(0.5).Round(time.Microsecond), pct(0.99).Round(time.Microsecond), lats[len(lats)-1].Round(time.Microsecond))
	return err
}

// benchClient calls until stop and returns each call's latency.
func benchClient(ctx context.Context, stop time.Time, addr, mod, fun string, keep bool) ([]time.Duration, error) {
	var lats []time.Duration
	var cl *bertrpc.Client
	defer func() {
		if cl != nil {
			cl.Close()
		}
	}()
	for time.Now().Before(stop) && ctx.Err() == nil {
		callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		t0 := time.Now()
		var (
			res any
			err error
		)
		if keep {
			if cl == nil {
				if cl, err = bertrpc.Dial(callCtx, addr); err != nil {
					cancel()
					return lats, err
				}
			}
			res, err = cl.Call(callCtx, mod, fun, 1, 2)
		} else {
			res, err = bertrpc.Call(callCtx, addr, mod, fun, 1, 2)
		}
		cancel()
		if err != nil {
			return lats, err
		}
		if res != 3 {
			return lats, fmt.Errorf("bench: %s:%s(1, 2) = %v, want 3", mod, fun, res)
		}
		lats = append(lats, time.Since(t0))
	}
	return lats, nil
}
