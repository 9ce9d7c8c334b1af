package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
	"github.com/warrenrpc/warren/worker"
)

// Control verbs: the daemon's own services, on its agent (ControlPath).
const (
	VerbStatus = "status"
	VerbReload = "reload"
	VerbStop   = "stop"
)

// ControlPath is the path of a control verb of the daemon identity:
// /daemon.IDENTITY/VERB. Each daemon has its own, so that their shared
// queues never mix (a request for one daemon's status never reaches
// another).
func ControlPath(identity, verb string) string { return "/" + Reserved + "." + identity + "/" + verb }

// Codes of the daemon's own errors.
const (
	CodeInvalidConfig = "invalid_config"
	CodeReload        = "reload_failed"
)

// ErrIdentityInUse is returned by Run when a daemon with the same identity
// answers on the fabric.
var ErrIdentityInUse = errors.New("daemon: identity in use")

// Option sets what only Go can pass.
type Option func(*options)

type options struct {
	log        *slog.Logger
	probe      time.Duration
	secureMode bool
	goSvcs     map[string]GoService
}

// WithLogger sets the logger; the default discards.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithIdentityProbe sets how long Run listens for agents answering a
// mapper's announce before it checks that its identity is free; 0 skips
// the check. The default is 500ms.
func WithIdentityProbe(d time.Duration) Option { return func(o *options) { o.probe = d } }

// WithSecureMode tells the daemon its transport is in secure mode, where
// an agent's identity is its certificate's: services added by a reload
// cannot be served by a second agent, so such a reload is refused.
func WithSecureMode() Option { return func(o *options) { o.secureMode = true } }

// Daemon serves the plugins of a Config on the fabric: one agent whose
// handlers call external worker processes.
type Daemon struct {
	tr      transport.Transport
	log     *slog.Logger
	o       options
	started time.Time

	reloadMu sync.Mutex // one reload at a time

	mu       sync.Mutex
	cfg      *Config
	services map[string]*service // by name
	routes   map[string]*service // served paths → their service
	units    []*unit             // agents, the first carries the daemon's identity
	gen      int
	reloads  int
	lastLoad time.Time
	lastErr  string
	runCtx   context.Context
	stop     context.CancelFunc
	bg       sync.WaitGroup // pools and retiring units

	status atomic.Pointer[statusValue]
	ready  chan struct{}
}

type statusValue struct{ v any }

// service is one plugin: its pool and counters, or a Go service's actor.
type service struct {
	name    string
	methods []string
	pool    *worker.Pool // nil for a Go service
	actor   any          // a Go service's
	cancel  context.CancelFunc
	done    chan struct{}

	inflight, handled, failed atomic.Int64
}

// unit is one agent of the daemon.
type unit struct {
	a      *agent.Agent
	paths  []string
	cancel context.CancelFunc
	done   chan error
}

// New returns a daemon serving cfg on tr. It starts nothing until Run.
func New(cfg *Config, tr transport.Transport, opts ...Option) (*Daemon, error) {
	if cfg == nil || tr == nil {
		return nil, errors.New("daemon: nil config or transport")
	}
	o := options{probe: 500 * time.Millisecond}
	for _, f := range opts {
		if f != nil {
			f(&o)
		}
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	if err := checkGo(cfg, o.goSvcs); err != nil {
		return nil, err
	}
	d := &Daemon{
		tr: tr, o: o, cfg: cfg,
		log:      o.log.With("component", "daemon", "daemon", cfg.Identity),
		services: map[string]*service{},
		routes:   map[string]*service{},
		ready:    make(chan struct{}),
	}
	d.setStatic(cfg)
	return d, nil
}

// Ready is closed once the daemon serves.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// Identity returns the daemon's identity.
func (d *Daemon) Identity() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg.Identity
}

// Stop makes Run drain and return, as cancelling its context does.
func (d *Daemon) Stop() {
	d.mu.Lock()
	stop := d.stop
	d.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// Run checks that no other daemon has the identity, starts the plugins'
// workers and waits until they run, starts the agent, and serves until ctx
// ends or Stop is called. Then it drains: the agents stop taking work and
// finish what is in hand, and the workers stop after them.
func (d *Daemon) Run(ctx context.Context) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	d.mu.Lock()
	if d.runCtx != nil {
		d.mu.Unlock()
		return errors.New("daemon: Run called twice")
	}
	d.runCtx, d.stop = ctx, stop
	d.started = time.Now()
	cfg := d.cfg
	d.mu.Unlock()

	if err := d.checkIdentity(ctx); err != nil {
		return err
	}
	defer d.shutdown()
	for _, name := range slices.Sorted(maps.Keys(cfg.Services)) {
		if err := d.startService(name, cfg); err != nil {
			return err
		}
	}
	if err := d.awaitHealthy(ctx, slices.Collect(maps.Keys(cfg.Services))); err != nil {
		return err
	}
	d.mu.Lock()
	for _, s := range d.services {
		for _, m := range s.methods {
			d.routes["/"+s.name+"/"+m] = s
		}
	}
	d.mu.Unlock()
	if cfg.Status.Source == "command" {
		d.bg.Go(func() { d.runStatusCommand(ctx) })
	}
	var goNames []string
	for _, name := range slices.Sorted(maps.Keys(cfg.Services)) {
		if cfg.Services[name].Go {
			goNames = append(goNames, name)
		}
	}
	u, err := d.startUnit(ctx, cfg.Identity, cfg.Paths(), goNames, true)
	if err != nil {
		return err
	}
	d.log.Info("daemon serving", "services", u.paths, "pid", os.Getpid())
	close(d.ready)
	select {
	case <-ctx.Done():
	case err := <-u.done:
		// The agent stopped by itself (the transport closed under it).
		u.done <- err
		if err != nil {
			return fmt.Errorf("daemon: agent: %w", err)
		}
	}
	return nil
}

// shutdown drains every agent at once, then stops the workers. It waits
// for a reload in progress (which gives up starting agents once Run's
// context ended), so that no agent starts after it.
func (d *Daemon) shutdown() {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	d.mu.Lock()
	units := slices.Clone(d.units)
	d.mu.Unlock()
	for _, u := range units {
		u.cancel()
	}
	for _, u := range units {
		if err := <-u.done; err != nil {
			d.log.Warn("agent stopped with an error", "agent", u.a.Identity(), "err", err)
		}
	}
	d.mu.Lock()
	svcs := slices.Collect(maps.Values(d.services))
	d.mu.Unlock()
	for _, s := range svcs {
		s.cancel()
	}
	d.bg.Wait()
	d.log.Info("daemon stopped")
}

// checkIdentity refuses to start when a daemon with this identity answers
// its status path: two daemons with one identity would share its queue and
// its registry record.
func (d *Daemon) checkIdentity(ctx context.Context) error {
	if d.o.probe <= 0 {
		return nil
	}
	var mcfg mapper.Config
	if d.o.secureMode {
		// The transport signs as the certificate's identity: the
		// mapper must carry it.
		mcfg.Identity = d.cfg.Identity
	}
	m, err := mapper.New(d.tr, mcfg)
	if err != nil {
		return err
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(mctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-m.Ready():
	case err := <-done:
		done <- err
		return fmt.Errorf("daemon: identity check: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}
	t := time.NewTimer(d.o.probe)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	id := d.cfg.Identity
	var clash []string
	for _, a := range m.Agents() {
		if a.Identity == id || strings.HasPrefix(a.Identity, id+".") {
			clash = append(clash, a.Identity)
		}
	}
	if len(clash) == 0 {
		return nil
	}
	// Registered, but alive? A daemon that was killed stays registered
	// until its pings are overdue: ask it.
	rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
	defer rcancel()
	r, err := m.Request(rctx, ControlPath(id, VerbStatus), nil, mapper.Select(mapper.Identity(id)))
	if err != nil {
		if errors.Is(err, mapper.ErrNoAgent) && slices.Contains(clash, id) {
			return fmt.Errorf("%w: agent %s runs on this broker, and it is not a warren daemon: give this one another identity", ErrIdentityInUse, id)
		}
		d.log.Info("an agent with this identity is registered but does not answer: taking its place", "agents", clash)
		return nil
	}
	var st Status
	_ = json.Unmarshal(r.Body, &st)
	return fmt.Errorf("%w: daemon %s already runs (pid %d on %s, up %s): give this one another identity",
		ErrIdentityInUse, id, st.PID, st.Host, st.Uptime)
}

// startService starts the pool of service name.
func (d *Daemon) startService(name string, cfg *Config) error {
	if sc := cfg.Services[name]; sc.Go {
		actor, methods, err := newGoActor(d.o.goSvcs[name], Env{
			Name: name, Identity: cfg.Identity, Config: json.RawMessage(sc.configJSON), Log: d.o.log.With("service", name),
		})
		if err != nil {
			return err
		}
		done := make(chan struct{})
		close(done)
		d.mu.Lock()
		d.services[name] = &service{name: name, methods: methods, actor: actor, cancel: func() {}, done: done}
		d.mu.Unlock()
		return nil
	}
	p, err := worker.New(cfg.PoolConfig(name), d.o.log.With("component", "plugin"))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &service{name: name, methods: slices.Clone(cfg.Services[name].Methods), pool: p, cancel: cancel, done: make(chan struct{})}
	d.bg.Go(func() {
		defer close(s.done)
		_ = p.Run(ctx)
	})
	d.mu.Lock()
	d.services[name] = s
	d.mu.Unlock()
	return nil
}

// awaitHealthy waits until every named plugin runs, failing when one
// keeps dying at start. A plugin that says nothing either way within 10s
// is let be (its calls will tell).
func (d *Daemon) awaitHealthy(ctx context.Context, names []string) error {
	deadline := time.Now().Add(10 * time.Second)
	slices.Sort(names)
	for {
		pending := 0
		for _, n := range names {
			d.mu.Lock()
			s := d.services[n]
			d.mu.Unlock()
			if s.pool == nil {
				continue
			}
			ok, err := s.pool.Healthy()
			if err != nil {
				return fmt.Errorf("daemon: service %s does not start: %w", n, err)
			}
			if !ok {
				pending++
			}
		}
		if pending == 0 || time.Now().After(deadline) {
			return nil
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// startUnit starts an agent serving paths (and, for the daemon's own
// identity, the control paths) and waits until it is registered.
func (d *Daemon) startUnit(ctx context.Context, identity string, paths, goNames []string, control bool) (*unit, error) {
	d.mu.Lock()
	cfg := d.cfg
	d.mu.Unlock()
	a, err := agent.New(d.tr, agent.Config{
		Identity: identity, Tags: cfg.Tags, PingInterval: cfg.PingInterval,
		Prefetch: cfg.Prefetch, DrainTimeout: cfg.DrainTimeout,
	}, agent.WithLogger(d.o.log), agent.WithStatus(d.statusNow))
	if err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	for _, p := range paths {
		if err := a.Handle(p, d.handler(p), agent.Active(func() bool { return d.route(p) != nil })); err != nil {
			return nil, fmt.Errorf("daemon: %w", err)
		}
	}
	for _, name := range goNames {
		d.mu.Lock()
		s := d.services[name]
		d.mu.Unlock()
		if err := a.Expose(name, s.actor); err != nil {
			return nil, fmt.Errorf("daemon: %w", err)
		}
		for _, m := range s.methods {
			paths = append(paths, "/"+name+"/"+m)
		}
	}
	if control {
		for verb, h := range map[string]agent.HandlerFunc{VerbStatus: d.serveStatus, VerbReload: d.serveReload, VerbStop: d.serveStop} {
			if err := a.Handle(ControlPath(identity, verb), h); err != nil {
				return nil, fmt.Errorf("daemon: %w", err)
			}
		}
	}
	uctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	u := &unit{a: a, paths: paths, cancel: cancel, done: make(chan error, 1)}
	go func() { u.done <- a.Run(uctx) }()
	select {
	case <-a.Ready():
	case err := <-u.done:
		cancel()
		return nil, fmt.Errorf("daemon: agent %s: %w", identity, err)
	case <-ctx.Done():
		cancel()
		<-u.done
		return nil, ctx.Err()
	}
	d.mu.Lock()
	d.units = append(d.units, u)
	d.mu.Unlock()
	return u, nil
}

func (d *Daemon) route(path string) *service {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.routes[path]
}

// acquire returns the service routed path, counting the call in flight
// (under the lock, so that retire sees it), or nil.
func (d *Daemon) acquire(path string) *service {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.routes[path]
	if s != nil {
		s.inflight.Add(1)
	}
	return s
}

// handler calls the plugin serving path.
func (d *Daemon) handler(path string) agent.Handler {
	method := path[strings.LastIndexByte(path, '/')+1:]
	return agent.HandlerFunc(func(ctx context.Context, req *agent.Request) (any, error) {
		if req.ContentType != "" && req.ContentType != wire.ContentJSON {
			return nil, fmt.Errorf("%w: content type %q: plugins take %s", agent.ErrBadRequest, req.ContentType, wire.ContentJSON)
		}
		s := d.acquire(path)
		if s == nil {
			// Removed by a reload: another agent may still serve it.
			return nil, agent.ErrDecline
		}
		defer s.inflight.Add(-1)
		res, err := s.pool.Call(ctx, worker.Request{Method: method, Params: req.Payload, Push: req.Push, From: req.From})
		var we *worker.Error
		switch {
		case err == nil:
			s.handled.Add(1)
			return res, nil
		case errors.As(err, &we):
			s.failed.Add(1)
			return nil, &agent.Error{Code: we.Code, Message: we.Message}
		default:
			s.failed.Add(1)
			return nil, err
		}
	})
}

// setStatic sets the status source of cfg (load average by default).
func (d *Daemon) setStatic(cfg *Config) {
	switch cfg.Status.Source {
	case "constant":
		d.status.Store(&statusValue{cfg.Status.Value})
	case "command":
		if d.status.Load() == nil {
			d.status.Store(&statusValue{0.0})
		}
	default:
		d.status.Store(nil)
	}
}

func (d *Daemon) statusNow() any {
	if v := d.status.Load(); v != nil {
		return v.v
	}
	l, err := agent.LoadAverage()
	if err != nil {
		return 0.0
	}
	return l
}

// runStatusCommand runs the status command every ping interval; its
// output, JSON or else a string, becomes the status.
func (d *Daemon) runStatusCommand(ctx context.Context) {
	for {
		d.mu.Lock()
		cfg := d.cfg
		d.mu.Unlock()
		interval := cfg.PingInterval
		if interval <= 0 {
			interval = 15 * time.Second
		}
		if cfg.Status.Source == "command" {
			cctx, cancel := context.WithTimeout(ctx, interval)
			out, err := exec.CommandContext(cctx, "/bin/sh", "-c", cfg.Status.Command).Output()
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				d.log.Warn("status command failed: keeping the last status", "err", err)
			} else {
				s := strings.TrimSpace(string(out))
				var v any
				if json.Unmarshal([]byte(s), &v) != nil {
					v = s
				}
				d.status.Store(&statusValue{v})
			}
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Status is what `warren daemon status` prints: the reply of its status path (ControlPath).
type Status struct {
	Time          time.Time      `json:"time"`
	Identity      string         `json:"identity"`
	Host          string         `json:"host"`
	PID           int            `json:"pid"`
	Started       time.Time      `json:"started"`
	Uptime        string         `json:"uptime"`
	UptimeSeconds float64        `json:"uptime_seconds"`
	Config        string         `json:"config,omitempty"`
	Agents        []string       `json:"agents"`
	Services      []string       `json:"services"`
	Plugins       []PluginStatus `json:"plugins"`
	InFlight      int64          `json:"in_flight"`
	Handled       int64          `json:"handled"`
	Failed        int64          `json:"failed"`
	Reloads       int            `json:"reloads"`
	LastReload    *time.Time     `json:"last_reload,omitempty"`
	LastReloadErr string         `json:"last_reload_error,omitempty"`
}

// PluginStatus is one plugin in a Status.
type PluginStatus struct {
	Name     string   `json:"name"`
	Methods  []string `json:"methods"`
	Protocol string   `json:"protocol"`
	Workers  int      `json:"workers"` // configured
	Running  int      `json:"running"` // worker processes alive
	Busy     int      `json:"busy"`    // worker processes in a call
	InFlight int64    `json:"in_flight"`
	Handled  int64    `json:"handled"` // calls answered with a result
	Failed   int64    `json:"failed"`  // calls answered with an error
	Restarts int64    `json:"restarts"`
	// LastError is the latest reason a worker was replaced.
	LastError string `json:"last_error,omitempty"`
}

// Status returns the daemon's status.
func (d *Daemon) Status() Status {
	host, _ := os.Hostname()
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	up := now.Sub(d.started).Round(time.Second)
	st := Status{
		Time: now, Identity: d.cfg.Identity, Host: host, PID: os.Getpid(), Started: d.started,
		Uptime: up.String(), UptimeSeconds: now.Sub(d.started).Seconds(), Config: d.cfg.File,
		Services: slices.Sorted(maps.Keys(d.routes)), Reloads: d.reloads, LastReloadErr: d.lastErr,
		Plugins: []PluginStatus{}, Agents: []string{},
	}
	if !d.lastLoad.IsZero() {
		t := d.lastLoad
		st.LastReload = &t
	}
	for _, u := range d.units {
		st.Agents = append(st.Agents, u.a.Identity())
	}
	for _, name := range slices.Sorted(maps.Keys(d.services)) {
		s := d.services[name]
		if s.pool == nil {
			st.Plugins = append(st.Plugins, PluginStatus{Name: name, Methods: s.methods, Protocol: "go"})
			continue
		}
		ws := s.pool.Stats()
		ps := PluginStatus{
			Name: name, Methods: s.methods, Protocol: ws.Protocol, Workers: ws.Workers, Running: ws.Running, Busy: ws.Busy,
			InFlight: s.inflight.Load(), Handled: s.handled.Load(), Failed: s.failed.Load(), Restarts: ws.Restarts, LastError: ws.LastError,
		}
		st.Plugins = append(st.Plugins, ps)
		st.InFlight += ps.InFlight
		st.Handled += ps.Handled
		st.Failed += ps.Failed
	}
	return st
}

func (d *Daemon) serveStatus(ctx context.Context, req *agent.Request) (any, error) {
	return d.Status(), nil
}

func (d *Daemon) serveStop(ctx context.Context, req *agent.Request) (any, error) {
	d.log.Info("stop requested over the fabric", "from", req.From)
	// The agent's drain waits for this handler: the reply goes out first.
	d.Stop()
	return map[string]any{"stopping": true, "pid": os.Getpid()}, nil
}

func (d *Daemon) serveReload(ctx context.Context, req *agent.Request) (any, error) {
	d.log.Info("reload requested over the fabric", "from", req.From)
	res, err := d.ReloadFile()
	if err != nil {
		var ce ConfigErrors
		if errors.As(err, &ce) {
			return nil, &agent.Error{Code: CodeInvalidConfig, Message: err.Error()}
		}
		return nil, &agent.Error{Code: CodeReload, Message: err.Error()}
	}
	return res, nil
}

// ReloadResult says what a reload changed.
type ReloadResult struct {
	Added     []string `json:"added"`     // services started
	Removed   []string `json:"removed"`   // services stopped (after their calls in hand)
	Restarted []string `json:"restarted"` // services whose workers restart (after their calls in hand)
	Agents    []string `json:"agents"`    // the daemon's agents after the reload
	// NeedsRestart lists changed keys a reload does not apply (the old
	// values stay until the daemon restarts).
	NeedsRestart []string `json:"needs_restart,omitempty"`
}

// ReloadFile re-reads the config file and applies it with Reload.
func (d *Daemon) ReloadFile() (*ReloadResult, error) {
	d.mu.Lock()
	file := d.cfg.File
	d.mu.Unlock()
	if file == "" {
		return nil, errors.New("daemon: the config was not read from a file")
	}
	cfg, err := Load(file)
	if err != nil {
		d.noteReload(err)
		return nil, err
	}
	return d.Reload(cfg)
}

func (d *Daemon) noteReload(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lastLoad = time.Now()
	if err != nil {
		d.lastErr = err.Error()
		return
	}
	d.reloads++
	d.lastErr = ""
}

// Reload applies cfg's services and status source: new services start
// (on a second agent, <identity>.<n>, since an agent's services are fixed
// once it runs), removed ones stop once their calls in hand finished, and
// every other service's workers restart with the new config after their
// calls in hand. No request is lost or failed by it. Changes to the keys
// that need a restart (identity, broker, tags, ...) are reported, not
// applied.
func (d *Daemon) Reload(cfg *Config) (*ReloadResult, error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	d.mu.Lock()
	old, ctx := d.cfg, d.runCtx
	d.mu.Unlock()
	select {
	case <-d.ready:
	default:
		return nil, errors.New("daemon: not running")
	}
	res := &ReloadResult{Added: []string{}, Removed: []string{}, Restarted: []string{}, NeedsRestart: restartKeys(old, cfg)}
	// Keep what needs a restart as it was.
	cfg.Identity, cfg.Tags, cfg.PingInterval, cfg.Prefetch = old.Identity, old.Tags, old.PingInterval, old.Prefetch
	cfg.DrainTimeout, cfg.Broker, cfg.Secure, cfg.Pidfile = old.DrainTimeout, old.Broker, old.Secure, old.Pidfile
	cfg.MetricsAddr, cfg.Tower = old.MetricsAddr, old.Tower
	cfg.File = old.File
	// Go services are compiled in and bound to the agent: a reload keeps
	// them as they are.
	for name, sc := range old.Services {
		if sc.Go {
			if n, ok := cfg.Services[name]; !ok || !n.Go || !bytes.Equal(n.configJSON, sc.configJSON) {
				res.NeedsRestart = append(res.NeedsRestart, "services."+name)
			}
			cfg.Services[name] = sc
		}
	}
	for name, sc := range cfg.Services {
		if o, ok := old.Services[name]; sc.Go && (!ok || !o.Go) {
			res.NeedsRestart = append(res.NeedsRestart, "services."+name)
			delete(cfg.Services, name)
		}
	}

	served := map[string]bool{}
	d.mu.Lock()
	for _, u := range d.units {
		for _, p := range u.paths {
			served[p] = true
		}
	}
	d.mu.Unlock()
	var fresh []string
	for _, p := range cfg.Paths() {
		if !served[p] {
			fresh = append(fresh, p)
		}
	}
	if len(fresh) > 0 && d.o.secureMode {
		err := fmt.Errorf("daemon: secure mode: new services (%s) need a restart: the agent's identity is its certificate's, and its services are fixed once it runs", strings.Join(fresh, ", "))
		d.noteReload(err)
		return nil, err
	}

	// Start the new plugins, reconfigure the kept ones.
	var added []string
	for _, name := range slices.Sorted(maps.Keys(cfg.Services)) {
		d.mu.Lock()
		s := d.services[name]
		d.mu.Unlock()
		if s != nil && s.pool == nil {
			continue // a Go service
		}
		if s == nil {
			if err := d.startService(name, cfg); err != nil {
				d.noteReload(err)
				return nil, err
			}
			added = append(added, name)
			continue
		}
		if err := s.pool.Reconfigure(cfg.PoolConfig(name)); err != nil {
			d.noteReload(err)
			return nil, err
		}
		d.mu.Lock()
		s.methods = slices.Clone(cfg.Services[name].Methods)
		d.mu.Unlock()
		res.Restarted = append(res.Restarted, name)
	}
	if err := d.awaitHealthy(ctx, added); err != nil {
		for _, name := range added {
			d.retire(name)
		}
		d.noteReload(err)
		return nil, err
	}
	if added != nil {
		res.Added = added
	}

	// Route the paths of the new config; the others are declined (and
	// advertised inactive) from now on.
	d.mu.Lock()
	routes := map[string]*service{}
	for name, sc := range cfg.Services {
		for _, m := range sc.Methods {
			routes["/"+name+"/"+m] = d.services[name]
		}
	}
	d.routes = routes
	d.cfg = cfg
	d.setStatic(cfg)
	for name := range d.services {
		if _, keep := cfg.Services[name]; !keep {
			res.Removed = append(res.Removed, name)
		}
	}
	d.mu.Unlock()
	slices.Sort(res.Removed)
	for _, name := range res.Removed {
		d.retire(name)
	}

	if len(fresh) > 0 {
		d.mu.Lock()
		d.gen++
		id := d.cfg.Identity + "." + strconv.Itoa(d.gen)
		d.mu.Unlock()
		if _, err := d.startUnit(ctx, id, fresh, nil, false); err != nil {
			d.noteReload(err)
			return nil, err
		}
	}
	d.retireIdleUnits()
	d.mu.Lock()
	for _, u := range d.units {
		res.Agents = append(res.Agents, u.a.Identity())
	}
	d.mu.Unlock()
	d.noteReload(nil)
	d.log.Info("config reloaded", "added", res.Added, "removed", res.Removed, "restarted", res.Restarted, "needs_restart", res.NeedsRestart)
	return res, nil
}

// retire forgets service name and stops its workers once its calls in
// hand (and those already routed to it) are done.
func (d *Daemon) retire(name string) {
	d.mu.Lock()
	s := d.services[name]
	delete(d.services, name)
	for p, r := range d.routes {
		if r == s {
			delete(d.routes, p)
		}
	}
	d.mu.Unlock()
	if s == nil {
		return
	}
	d.bg.Go(func() {
		for s.inflight.Load() > 0 {
			time.Sleep(20 * time.Millisecond)
		}
		s.cancel()
		<-s.done
	})
}

// retireIdleUnits drains the extra agents none of whose paths is served
// any more.
func (d *Daemon) retireIdleUnits() {
	d.mu.Lock()
	var keep, gone []*unit
	for i, u := range d.units {
		used := i == 0
		for _, p := range u.paths {
			if d.routes[p] != nil {
				used = true
			}
		}
		if used {
			keep = append(keep, u)
		} else {
			gone = append(gone, u)
		}
	}
	d.units = keep
	d.mu.Unlock()
	for _, u := range gone {
		u.cancel()
		d.bg.Go(func() {
			if err := <-u.done; err != nil {
				d.log.Warn("retired agent stopped with an error", "agent", u.a.Identity(), "err", err)
			}
		})
	}
}

// restartKeys lists the keys whose change a reload does not apply.
func restartKeys(old, cfg *Config) []string {
	var ks []string
	for _, c := range []struct {
		key    string
		differ bool
	}{
		{"identity", old.Identity != cfg.Identity},
		{"tags", !slices.Equal(old.Tags, cfg.Tags)},
		{"ping_interval", old.PingInterval != cfg.PingInterval},
		{"prefetch", old.Prefetch != cfg.Prefetch},
		{"drain_timeout", old.DrainTimeout != cfg.DrainTimeout},
		{"broker", !reflect.DeepEqual(old.Broker, cfg.Broker)},
		{"secure", old.Secure != cfg.Secure},
		{"metrics_addr", old.MetricsAddr != cfg.MetricsAddr},
		{"tower", old.Tower != cfg.Tower},
	} {
		if c.differ {
			ks = append(ks, c.key)
		}
	}
	return ks
}
