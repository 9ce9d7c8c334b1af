package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warrenrpc/warren/daemon"
	"github.com/warrenrpc/warren/internal/simple"
	"github.com/warrenrpc/warren/internal/tlsflags"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/metrics"
	"github.com/warrenrpc/warren/tower"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/wire"
)

type daemonCmd struct {
	Start  daemonStartCmd  `cmd:"" help:"Run the daemon (in the foreground unless --detach)."`
	Stop   daemonStopCmd   `cmd:"" help:"Stop the running daemon: it drains, as on SIGTERM."`
	Status daemonStatusCmd `cmd:"" help:"Ask the running daemon for its status (JSON)."`
	Reload daemonReloadCmd `cmd:"" help:"Make the running daemon re-read its config (as SIGHUP does) and print what changed."`
	Config daemonConfigCmd `cmd:"" help:"Check a config file, or test its broker settings."`
}

func (c *daemonCmd) Help() string {
	return `The Warren daemon serves plugins written in any language, configured by
one YAML file (-c, default /etc/warren/warren.yaml; annotated example:
examples/warren.yaml; reference: docs/plugins.md).`
}

// builtinServices are the Go services of every warren binary: the
// example actor /simple/* of `warren agent`.
var builtinServices = []daemon.GoService{
	daemon.Service("simple", func(env daemon.Env) (any, error) { return simple.Simple{Identity: env.Identity}, nil }),
}

// goServices are the Go services compiled into this binary: the built-in
// ones and those given to daemonmain.Main.
var goServices = builtinServices

// SetGoServices makes svcs available to `daemon start`, next to the
// built-in ones (a service of the same name replaces a built-in). Call it
// before Main (daemonmain.Main does).
func SetGoServices(svcs ...daemon.GoService) {
	goServices = append(append([]daemon.GoService(nil), builtinServices...), svcs...)
}

// daemonConfigFlag names the config file.
type daemonConfigFlag struct {
	Config string `name:"config" short:"c" env:"WARREN_DAEMON_CONFIG" default:"/etc/warren/warren.yaml" help:"The daemon's YAML config file."`
}

func (f daemonConfigFlag) load() (*daemon.Config, error) {
	return daemon.Load(f.Config)
}

// loadServed is load, also checking that the config's Go services are
// compiled into this binary (start and config check need them; status,
// stop and reload only talk to the daemon).
func (f daemonConfigFlag) loadServed() (*daemon.Config, error) {
	cfg, err := daemon.Load(f.Config)
	if err != nil {
		return nil, err
	}
	if err := daemon.Check(cfg, daemon.WithGoServices(goServices...)); err != nil {
		return nil, err
	}
	return cfg, nil
}

type daemonStartCmd struct {
	daemonConfigFlag
	Detach  bool   `name:"detach" short:"d" help:"Run in the background: return once the daemon serves (or failed to start). Under systemd, do not: run in the foreground."`
	Pidfile string `name:"pidfile" short:"P" help:"Write the daemon's pid to this file while it runs (default: the config's pidfile)."`
	LogFile string `name:"log-file" help:"With --detach: append the daemon's log to this file (default: discarded)."`
}

func (c *daemonStartCmd) Help() string {
	return `Starts the daemon: it checks that no daemon with its identity runs,
starts every plugin's workers (failing when one dies at start), registers
its agent and serves. SIGTERM or SIGINT drains it (it stops taking work,
finishes what is in hand, unregisters, exits 0); SIGHUP reloads its config.`
}

// notifyFD is the environment variable naming the pipe a detached
// daemon reports its start on.
const notifyFD = "WARREN_DAEMON_NOTIFY_FD"

func (c *daemonStartCmd) Run(g *Globals) error {
	cfg, err := c.loadServed()
	if err != nil {
		return err
	}
	if c.Pidfile != "" {
		cfg.Pidfile, _ = filepath.Abs(c.Pidfile)
	}
	if c.Detach {
		return c.detach(g, cfg)
	}
	notify := func(string) {}
	if fd := os.Getenv(notifyFD); fd != "" {
		n, _ := strconv.Atoi(fd)
		f := os.NewFile(uintptr(n), "notify")
		os.Unsetenv(notifyFD)
		notify = func(msg string) {
			if f != nil {
				fmt.Fprintln(f, msg)
				f.Close()
				f = nil
			}
		}
		defer func() { notify("exited") }()
	}
	if cfg.Pidfile != "" {
		if err := writePidfile(cfg.Pidfile); err != nil {
			notify("error " + err.Error())
			return err
		}
		defer os.Remove(cfg.Pidfile)
	}
	ctx := g.Context()
	tr, plain, secureMode, err := dialConfig(ctx, g, cfg, "daemon "+cfg.Identity)
	if err != nil {
		notify("error " + err.Error())
		return err
	}
	defer tr.Close()
	base := tr // for the Tower: not counted as the agents' work
	var reg *prometheus.Registry
	if cfg.MetricsAddr != "" {
		reg = newMetricsRegistry()
		if err := metrics.Connection(plain, reg); err != nil {
			return err
		}
		if tr, err = metrics.Agent(tr, reg); err != nil {
			return err
		}
	}
	opts := []daemon.Option{daemon.WithGoServices(goServices...)}
	if secureMode {
		opts = append(opts, daemon.WithSecureMode())
	}
	d, err := daemon.New(cfg, tr, append(opts, daemon.WithLogger(g.Logger()))...)
	if err != nil {
		return err
	}
	if reg != nil {
		if err := metrics.Daemon(d, reg); err != nil {
			return err
		}
		ms, err := serveMetrics(g, cfg.MetricsAddr, reg)
		if err != nil {
			notify("error " + err.Error())
			return err
		}
		defer ms.stop()
	}
	if cfg.Tower.Listen != "" {
		stop, err := startDaemonTower(ctx, g, cfg, base, secureMode)
		if err != nil {
			notify("error " + err.Error())
			return err
		}
		defer stop()
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				res, err := d.ReloadFile()
				if err != nil {
					g.Logger().Error("reload failed: the config in use stays", "err", err)
					continue
				}
				g.Logger().Warn("config reloaded", "added", res.Added, "removed", res.Removed, "restarted", res.Restarted, "needs_restart", res.NeedsRestart)
			}
		}
	}()
	go func() {
		select {
		case <-d.Ready():
			g.Logger().Warn("daemon serving", "identity", cfg.Identity, "pid", os.Getpid(), "services", d.Status().Services)
			notify(fmt.Sprintf("ok %d", os.Getpid()))
		case <-ctx.Done():
		}
	}()
	if err := d.Run(ctx); err != nil {
		notify("error " + err.Error())
		return err
	}
	return nil
}

// detach starts the daemon again in its own session, and waits for it to
// report that it serves or failed.
func (c *daemonStartCmd) detach(g *Globals, cfg *daemon.Config) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var args []string
	for _, a := range os.Args[1:] {
		if a != "--detach" && a != "-d" {
			args = append(args, a)
		}
	}
	if c.Pidfile == "" && cfg.Pidfile != "" {
		args = append(args, "--pidfile", cfg.Pidfile)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), notifyFD+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if c.LogFile != "" {
		lf, err := os.OpenFile(c.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			w.Close()
			return err
		}
		defer lf.Close()
		cmd.Stdout, cmd.Stderr = lf, lf
	}
	if err := cmd.Start(); err != nil {
		w.Close()
		return err
	}
	w.Close()
	_ = cmd.Process.Release()
	line, _ := bufio.NewReader(r).ReadString('\n')
	line = strings.TrimSpace(line)
	switch {
	case strings.HasPrefix(line, "ok "):
		fmt.Fprintf(g.Out(), "warren daemon %s started (pid %s)\n", cfg.Identity, strings.TrimPrefix(line, "ok "))
		return nil
	case strings.HasPrefix(line, "error "):
		return errors.New(strings.TrimPrefix(line, "error "))
	}
	return errors.New("the daemon exited before serving; run it in the foreground (without --detach) or with --log-file to see why")
}

// writePidfile writes the pid, refusing when the file names a live process.
func writePidfile(path string) error {
	if pid, err := readPidfile(path); err == nil && alive(pid) {
		return fmt.Errorf("pidfile %s: the daemon already runs (pid %d)", path, pid)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("pidfile: %w", err)
	}
	return os.Rename(tmp, path)
}

func readPidfile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pidfile %s holds no pid", path)
	}
	return pid, nil
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// dialConfig connects as the config says: its broker URLs (tried in order,
// and failed over between at every reconnection: amqp.Dial takes the list),
// TLS, secure mode. It reports whether secure mode is on.
func dialConfig(ctx context.Context, g *Globals, cfg *daemon.Config, name string) (transport.Transport, *amqp.Transport, bool, error) {
	urls, err := cfg.BrokerURLs()
	if err != nil {
		return nil, nil, false, err
	}
	return dialOne(ctx, g, cfg, strings.Join(urls, ","), name)
}

// dialOne connects to the broker URL u (credentials included) with the
// config's TLS and secure mode.
func dialOne(ctx context.Context, g *Globals, cfg *daemon.Config, u, name string) (transport.Transport, *amqp.Transport, bool, error) {
	t, s := cfg.Broker.TLS, cfg.Secure
	b := brokerFlags{
		Broker: u,
		TLS:    tlsflags.Flags{CA: t.CA, Cert: t.Cert, Key: t.Key, ServerName: t.ServerName, Insecure: t.InsecureSkipVerify},
		Secure: secureFlags{Cert: s.Cert, Key: s.Key, CA: s.CA, Deny: s.Deny, SignOnly: s.SignOnly},
	}
	tr, certID, plain, err := b.dialAMQP(ctx, g, name)
	if err != nil {
		return nil, nil, false, err
	}
	if certID != "" && certID != cfg.Identity {
		tr.Close()
		return nil, nil, false, fmt.Errorf("%s: identity %q differs from the secure certificate's %q", cfg.File, cfg.Identity, certID)
	}
	return tr, plain, certID != "", nil
}

// controlFlags are the flags of the commands that talk to a running daemon.
type controlFlags struct {
	daemonConfigFlag
	Timeout time.Duration `name:"timeout" default:"10s" help:"How long to wait for the daemon's answer."`
}

// call sends a control request to the daemon the config names.
func (f controlFlags) call(g *Globals, verb string, then func(ctx context.Context, m *mapper.Mapper, cfg *daemon.Config, body json.RawMessage) error) error {
	if f.Timeout <= 0 {
		return usageError{fmt.Errorf("--timeout %v: want a positive duration", f.Timeout)}
	}
	cfg, err := f.load()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(g.Context(), f.Timeout)
	defer cancel()
	tr, _, secureMode, err := dialConfig(ctx, g, cfg, "daemon control")
	if err != nil {
		return err
	}
	defer tr.Close()
	mapperID := ""
	if secureMode {
		mapperID = cfg.Identity // the certificate's, which the transport signs as
	}
	return runMapper(ctx, g, tr, mapperID, func(m *mapper.Mapper) error {
		r, err := m.Request(ctx, daemon.ControlPath(cfg.Identity, verb), nil, mapper.Select(mapper.Identity(cfg.Identity)))
		if err == nil {
			err = r.Err
		}
		var re *wire.RemoteError
		switch {
		case errors.Is(err, mapper.ErrNoAgent):
			return fmt.Errorf("no daemon %s runs on this broker", cfg.Identity)
		case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, mapper.ErrTimeout):
			return fmt.Errorf("daemon %s is registered but did not answer within %v", cfg.Identity, f.Timeout)
		case errors.As(err, &re):
			return fmt.Errorf("daemon %s: %s", cfg.Identity, re.Message)
		case err != nil:
			return err
		}
		return then(ctx, m, cfg, r.Body)
	})
}

type daemonStatusCmd struct{ controlFlags }

func (c *daemonStatusCmd) Run(g *Globals) error {
	return c.call(g, daemon.VerbStatus, func(_ context.Context, _ *mapper.Mapper, _ *daemon.Config, body json.RawMessage) error {
		return printJSON(g.Out(), body)
	})
}

type daemonReloadCmd struct{ controlFlags }

func (c *daemonReloadCmd) Help() string {
	return `Asks the running daemon to re-read its config file. Kept services restart
their workers after the calls in hand; added services start; removed ones
stop after their calls in hand. A config with errors changes nothing: the
errors are printed with their lines and the command exits 1.`
}

func (c *daemonReloadCmd) Run(g *Globals) error {
	return c.call(g, daemon.VerbReload, func(_ context.Context, _ *mapper.Mapper, _ *daemon.Config, body json.RawMessage) error {
		return printJSON(g.Out(), body)
	})
}

type daemonStopCmd struct {
	controlFlags
	Pidfile string        `name:"pidfile" short:"P" help:"Stop the daemon whose pid this file holds, with SIGTERM, instead of asking over the fabric (default: the config's pidfile, when it exists)."`
	Wait    time.Duration `name:"wait" default:"2m" help:"How long to wait for the daemon to finish draining."`
}

func (c *daemonStopCmd) Help() string {
	return `Stops the running daemon as SIGTERM does: it stops taking work, finishes
the requests in hand, unregisters and exits. With a pidfile the daemon is
sent SIGTERM; otherwise it is asked over the fabric. Returns once it is gone.`
}

func (c *daemonStopCmd) Run(g *Globals) error {
	pidfile := c.Pidfile
	if pidfile == "" {
		if cfg, err := c.load(); err == nil && cfg.Pidfile != "" {
			if _, err := os.Stat(cfg.Pidfile); err == nil {
				pidfile = cfg.Pidfile
			}
		}
	}
	if pidfile != "" {
		pid, err := readPidfile(pidfile)
		if err != nil {
			return err
		}
		if !alive(pid) {
			return fmt.Errorf("no daemon runs: pidfile %s names pid %d, which is gone", pidfile, pid)
		}
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			return fmt.Errorf("stop pid %d: %w", pid, err)
		}
		return c.waitGone(g, fmt.Sprintf("pid %d", pid), func() bool { return !alive(pid) })
	}
	return c.call(g, daemon.VerbStop, func(ctx context.Context, m *mapper.Mapper, cfg *daemon.Config, body json.RawMessage) error {
		var r struct {
			PID int `json:"pid"`
		}
		_ = json.Unmarshal(body, &r)
		return c.waitGone(g, fmt.Sprintf("daemon %s (pid %d)", cfg.Identity, r.PID), func() bool {
			for _, a := range m.Agents() {
				if a.Identity == cfg.Identity {
					return false
				}
			}
			return true
		})
	})
}

func (c *daemonStopCmd) waitGone(g *Globals, what string, gone func() bool) error {
	deadline := time.Now().Add(c.Wait)
	for !gone() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s is still draining after %v", what, c.Wait)
		}
		select {
		case <-g.Context().Done():
			return g.Context().Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	fmt.Fprintf(g.Out(), "%s stopped\n", what)
	return nil
}

type daemonConfigCmd struct {
	Check  daemonConfigCheckCmd  `cmd:"" help:"Validate a config file; errors point at file:line."`
	Broker daemonConfigBrokerCmd `cmd:"" help:"Show the broker settings (password redacted); --test connects with them."`
}

type daemonConfigCheckCmd struct{ daemonConfigFlag }

func (c *daemonConfigCheckCmd) Run(g *Globals) error {
	cfg, err := c.loadServed()
	if err != nil {
		return err
	}
	paths := cfg.Paths()
	for name, s := range cfg.Services {
		if s.Go {
			paths = append(paths, "/"+name+"/* (go)")
		}
	}
	slices.Sort(paths)
	fmt.Fprintf(g.Out(), "%s: ok: daemon %s serves %s\n", cfg.File, cfg.Identity, strings.Join(paths, " "))
	return nil
}

type daemonConfigBrokerCmd struct {
	daemonConfigFlag
	Test bool `name:"test" short:"t" help:"Connect with the configured credentials and report."`
}

func (c *daemonConfigBrokerCmd) Run(g *Globals) error {
	cfg, err := c.load()
	if err != nil {
		return err
	}
	urls, err := cfg.BrokerURLs()
	if err != nil {
		return err
	}
	shown := make([]string, len(urls))
	for i, u := range urls {
		shown[i] = amqp.RedactURL(u)
	}
	b := cfg.Broker
	if !c.Test {
		return printJSON(g.Out(), map[string]any{
			"urls": shown, "password_env": b.PasswordEnv, "password_file": b.PasswordFile,
			"tls": b.TLS, "secure": cfg.Secure.Enabled(),
		})
	}
	ctx, cancel := context.WithTimeout(g.Context(), 30*time.Second)
	defer cancel()
	failed := 0
	for i, u := range urls {
		tr, _, _, err := dialOne(ctx, g, cfg, u, "daemon config test")
		if err != nil {
			failed++
			fmt.Fprintf(g.Out(), "%s: failed: %s\n", shown[i], escape(err.Error())) // may quote the broker
			continue
		}
		tr.Close()
		fmt.Fprintf(g.Out(), "%s: connected\n", shown[i])
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d brokers failed", failed, len(urls))
	}
	return nil
}

// startDaemonTower serves the Control Tower the config's tower section
// describes, on tr, until ctx ends; stop waits for it. In secure mode its
// mapper signs as the daemon.
func startDaemonTower(ctx context.Context, g *Globals, cfg *daemon.Config, tr transport.Transport, secureMode bool) (func(), error) {
	token, password, err := cfg.TowerSecrets()
	if err != nil {
		return nil, err
	}
	tcfg := tower.Config{Token: token, User: cfg.Tower.User, Password: password, History: cfg.Tower.History}
	if err := tower.CheckAddr(cfg.Tower.Listen, tcfg); err != nil {
		return nil, fmt.Errorf("%s: tower.listen: %w", cfg.File, err)
	}
	if urls, err := cfg.BrokerURLs(); err == nil {
		tcfg.Broker = amqp.RedactURL(strings.Join(urls, ","))
	}
	if secureMode {
		tcfg.Mapper.Identity = cfg.Identity
	}
	t, err := tower.New(tr, tcfg, tower.WithLogger(g.Logger()))
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Tower.Listen)
	if err != nil {
		return nil, fmt.Errorf("tower.listen: %w", err)
	}
	tctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := t.Serve(tctx, ln); err != nil && tctx.Err() == nil {
			g.Logger().Error("Control Tower stopped", "err", err)
		}
	}()
	g.Logger().Warn("Control Tower serving", "url", "http://"+ln.Addr().String()+"/")
	return func() { cancel(); <-done }, nil
}
