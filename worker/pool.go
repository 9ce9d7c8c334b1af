package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Error codes of the calls a worker could not answer. They travel to the
// caller as the wire error code (docs/plugins.md).
const (
	// CodeCrashed: the worker exited (or closed its output) during the call.
	CodeCrashed = "worker_crashed"
	// CodeTimeout: the worker did not answer within the call's deadline
	// (the service's timeout or the caller's deadline, the earlier).
	CodeTimeout = "worker_timeout"
	// CodeMalformed: the worker wrote something that is not a reply to the
	// call (not JSON, another id, a line too long).
	CodeMalformed = "worker_malformed"
	// CodeUnavailable: the plugin's workers keep exiting at start.
	CodeUnavailable = "worker_unavailable"
	// CodeStopped: the pool is stopping or stopped.
	CodeStopped = "shutting_down"
	// CodeWorker is the code of a worker's error reply that names none.
	CodeWorker = "handler_error"
)

// Defaults for zero Config fields.
const (
	DefaultTimeout    = 30 * time.Second
	DefaultMaxMessage = 16 << 20
	DefaultGrace      = 2 * time.Second
)

// unavailableAfter is how many workers in a row must die within a second
// of starting before calls fail at once with CodeUnavailable.
const unavailableAfter = 3

// Error is a call that failed: the worker's own error reply, or one of the
// Code constants when the worker could not answer.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// ErrMalformed is wrapped by a Conn's errors for replies that break the
// protocol.
var ErrMalformed = errors.New("malformed reply")

// Request is one call of a worker.
type Request struct {
	// ID is set by the pool: unique within it.
	ID string
	// Method is the method called (for /echo/upcase: "upcase").
	Method string
	// Params is the JSON payload; nil means null.
	Params json.RawMessage
	// Deadline is set by the pool: the earlier of the caller's deadline
	// and the service's timeout. Zero: none.
	Deadline time.Time
	// Push: the caller waits for no result.
	Push bool
	// From is the caller's identity, when it said.
	From string
}

// Protocol frames calls to one kind of worker process.
type Protocol interface {
	// Name names the protocol in logs and status ("jsonlines").
	Name() string
	// Attach sets up cmd's pipes before it starts and returns the
	// connection to it; maxMessage bounds a reply in bytes.
	Attach(cmd *exec.Cmd, maxMessage int) (Conn, error)
}

// Conn is the daemon's end of one worker process's pipes. The pool uses it
// from one goroutine, except Interrupt.
type Conn interface {
	// Started is called once the process started, to close the child's
	// ends of the pipes.
	Started()
	// Exchange sends req and reads its reply before req.Deadline. The
	// worker's error reply is a *Error; a reply that breaks the protocol
	// wraps ErrMalformed; a deadline (or Interrupt) is
	// os.ErrDeadlineExceeded; anything else means the worker is gone.
	Exchange(req *Request) (json.RawMessage, error)
	// Interrupt makes an Exchange in progress return at once. Safe from
	// any goroutine.
	Interrupt()
	// CloseInput closes the worker's input: a worker exits on end of file.
	CloseInput()
	// Close releases our ends of the pipes.
	Close()
}

// Config configures a Pool. The zero value of each field means its default.
type Config struct {
	// Name names the pool (the service) in logs and errors.
	Name string
	// Command is the worker's argv. With Shell, Command[0] is a shell
	// command run by /bin/sh -c and the rest are its $0, $1, ...
	Command []string
	Shell   bool
	// Dir is the worker's working directory; "" is the daemon's.
	Dir string
	// Env is added to the daemon's environment ("KEY=value").
	Env []string
	// Workers is how many processes run; 0 means 1.
	Workers int
	// Timeout bounds each call, waiting for a free worker included;
	// 0 means 30s, negative none (then only the caller's deadline).
	Timeout time.Duration
	// Protocol frames the calls; nil means JSONLines.
	Protocol Protocol
	// MaxMessage bounds a reply in bytes; 0 means 16 MiB.
	MaxMessage int
	// Grace is how long a worker may take to exit after its input closed,
	// before it is killed; 0 means 2s.
	Grace time.Duration
}

func (c Config) withDefaults() Config {
	if c.Workers <= 0 {
		c.Workers = 1
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Protocol == nil {
		c.Protocol = JSONLines{}
	}
	if c.MaxMessage <= 0 {
		c.MaxMessage = DefaultMaxMessage
	}
	if c.Grace <= 0 {
		c.Grace = DefaultGrace
	}
	c.Command = slices.Clone(c.Command)
	c.Env = slices.Clone(c.Env)
	return c
}

func (c Config) validate() error {
	if len(c.Command) == 0 || c.Command[0] == "" {
		return fmt.Errorf("worker: %s: no command", c.Name)
	}
	return nil
}

// Stats are a pool's figures.
type Stats struct {
	Protocol string `json:"protocol"`
	Workers  int    `json:"workers"` // configured
	Running  int    `json:"running"` // processes alive
	Busy     int    `json:"busy"`    // processes in a call
	Handled  int64  `json:"handled"` // calls answered by a worker (a result or its error reply)
	Failed   int64  `json:"failed"`  // calls no worker answered (crash, timeout, malformed, unavailable)
	Restarts int64  `json:"restarts"`
	// LastError is the latest reason a worker was replaced.
	LastError string `json:"last_error,omitempty"`
}

// Pool runs the worker processes of one plugin. Call Run, then Call from
// any goroutine.
type Pool struct {
	log  *slog.Logger
	jobs chan *job

	mu         sync.Mutex
	cfg        Config
	gen        uint64
	genCh      chan struct{} // closed when gen changes
	slots      []bool        // a goroutine runs slot i
	runCtx     context.Context
	startFails int // workers in a row that died within a second of starting
	lastErr    string
	healthy    bool // a worker lived a second or answered a call

	running, busy             atomic.Int64
	handled, failed, restarts atomic.Int64
	nextID                    atomic.Uint64

	wg      sync.WaitGroup
	started atomic.Bool
	stopped chan struct{} // closed when Run's context ended
}

type job struct {
	ctx  context.Context
	req  Request
	done chan result // buffered 1
}

type result struct {
	res json.RawMessage
	err error
}

// New returns a pool; its workers start with Run.
func New(cfg Config, log *slog.Logger) (*Pool, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Pool{
		log:     log.With("service", cfg.Name),
		jobs:    make(chan *job),
		cfg:     cfg,
		genCh:   make(chan struct{}),
		stopped: make(chan struct{}),
	}, nil
}

// Run starts the workers and keeps them running until ctx ends; then it
// lets them finish the calls in hand, stops them and returns.
func (p *Pool) Run(ctx context.Context) error {
	if !p.started.CompareAndSwap(false, true) {
		return errors.New("worker: Run called twice")
	}
	p.mu.Lock()
	p.runCtx = ctx
	p.growLocked()
	p.mu.Unlock()
	<-ctx.Done()
	close(p.stopped)
	p.wg.Wait()
	return nil
}

// growLocked starts the goroutines of the slots the config wants.
func (p *Pool) growLocked() {
	for len(p.slots) < p.cfg.Workers {
		p.slots = append(p.slots, false)
	}
	for i := range p.cfg.Workers {
		if !p.slots[i] {
			p.slots[i] = true
			p.wg.Add(1)
			go p.runSlot(p.runCtx, i)
		}
	}
}

// Reconfigure replaces the pool's config: idle workers restart at once
// with it, busy ones after their call; surplus workers stop after their
// call. Calls in hand are not interrupted.
func (p *Pool) Reconfigure(cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cfg = cfg
	p.gen++
	close(p.genCh)
	p.genCh = make(chan struct{})
	p.startFails = 0
	if p.runCtx != nil && p.runCtx.Err() == nil {
		p.growLocked()
	}
	return nil
}

// Restart replaces every worker with a fresh process, as Reconfigure with
// the same config does.
func (p *Pool) Restart() {
	p.mu.Lock()
	cfg := p.cfg
	p.mu.Unlock()
	_ = p.Reconfigure(cfg)
}

// Config returns the pool's current config.
func (p *Pool) Config() Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg
}

// Stats returns the pool's figures.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	s := Stats{Protocol: p.cfg.Protocol.Name(), Workers: p.cfg.Workers, LastError: p.lastErr}
	p.mu.Unlock()
	s.Running, s.Busy = int(p.running.Load()), int(p.busy.Load())
	s.Handled, s.Failed, s.Restarts = p.handled.Load(), p.failed.Load(), p.restarts.Load()
	return s
}

func (p *Pool) unavailable() (bool, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.startFails >= unavailableAfter, p.lastErr
}

// Healthy reports whether the plugin runs: true once a worker lived a
// second or answered a call; an error (CodeUnavailable) when its workers
// keep dying at start; false, nil while it is too early to say.
func (p *Pool) Healthy() (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.startFails >= unavailableAfter {
		return false, &Error{CodeUnavailable, fmt.Sprintf("%s: its workers keep exiting at start (%s); see the log", p.cfg.Name, p.lastErr)}
	}
	return p.healthy, nil
}

// Call runs req on a free worker and returns its result, the JSON value of
// its reply. It fails with a *Error: the worker's error reply, or a Code
// constant when no worker answered. When ctx is cancelled while a worker
// has the call, the worker is interrupted (and replaced) and Call returns
// ctx's error.
func (p *Pool) Call(ctx context.Context, req Request) (json.RawMessage, error) {
	p.mu.Lock()
	timeout, name := p.cfg.Timeout, p.cfg.Name
	p.mu.Unlock()
	req.ID = strconv.FormatUint(p.nextID.Add(1), 10)
	if timeout > 0 {
		req.Deadline = time.Now().Add(timeout)
	}
	if d, ok := ctx.Deadline(); ok && (req.Deadline.IsZero() || d.Before(req.Deadline)) {
		req.Deadline = d
	}
	j := &job{ctx: ctx, req: req, done: make(chan result, 1)}
	var expire <-chan time.Time
	if !req.Deadline.IsZero() {
		t := time.NewTimer(time.Until(req.Deadline))
		defer t.Stop()
		expire = t.C
	}
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	for sent := false; !sent; {
		if down, why := p.unavailable(); down {
			p.failed.Add(1)
			return nil, &Error{CodeUnavailable, fmt.Sprintf("%s: its workers keep exiting at start (%s); see the daemon's log", name, why)}
		}
		select {
		case p.jobs <- j:
			sent = true
		case <-poll.C:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-expire:
			p.failed.Add(1)
			return nil, &Error{CodeTimeout, fmt.Sprintf("%s: no worker was free before the call's deadline", name)}
		case <-p.stopped:
			return nil, &Error{CodeStopped, name + ": stopping"}
		}
	}
	r := <-j.done // a worker always answers: it is interrupted at the deadline and when ctx ends
	return r.res, r.err
}

// current returns what a slot needs to know.
func (p *Pool) current() (Config, uint64, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg, p.gen, p.genCh
}

// leave ends slot i when the config no longer wants it; it reports false
// when the slot must stay.
func (p *Pool) leave(i int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i < p.cfg.Workers {
		return false
	}
	p.slots[i] = false
	return true
}

func (p *Pool) noteFailure(quick bool, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lastErr = why
	if quick {
		p.startFails++
	}
}

func (p *Pool) noteHealthy() {
	p.mu.Lock()
	p.startFails = 0
	p.healthy = true
	p.mu.Unlock()
}

// runSlot owns one worker process at a time: it starts it, hands it one
// call at a time, and replaces it when it dies, misbehaves or the config
// changes.
func (p *Pool) runSlot(ctx context.Context, i int) {
	defer p.wg.Done()
	log := p.log.With("worker", i)
	var w *proc
	defer func() {
		if w != nil {
			w.stop()
			p.running.Add(-1)
		}
	}()
	drop := func(graceful bool) {
		if graceful {
			w.stop()
		} else {
			w.kill()
		}
		p.running.Add(-1)
		w = nil
	}
	var backoff time.Duration
	first := true
	for ctx.Err() == nil {
		if w == nil {
			if p.leave(i) {
				return
			}
			cfg, gen, genCh := p.current()
			if backoff > 0 {
				t := time.NewTimer(backoff)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-genCh: // a new config deserves a prompt try
					t.Stop()
					backoff = 0
					continue
				case <-t.C:
				}
			}
			var err error
			w, err = start(cfg, gen, genCh, i, log)
			if err != nil {
				log.Error("cannot start worker", "err", err)
				p.noteFailure(true, err.Error())
				backoff = nextBackoff(backoff)
				continue
			}
			p.running.Add(1)
			if !first {
				p.restarts.Add(1)
			}
			first = false
			log.Debug("worker started", "pid", w.pid)
		}
		select {
		case <-w.genCh:
			log.Info("restarting worker with the new config", "pid", w.pid)
			drop(true)
			backoff = 0
			continue
		default:
		}
		healthy := time.NewTimer(time.Second)
		select {
		case j := <-p.jobs:
			healthy.Stop()
			ok := p.serve(log, w, j)
			quick := time.Since(w.started) < time.Second
			if !ok {
				drop(false)
				if quick {
					backoff = nextBackoff(backoff)
				} else {
					backoff = 0
				}
				continue
			}
			backoff = 0
			p.noteHealthy()
			if _, gen, _ := p.current(); gen != w.gen {
				log.Info("restarting worker with the new config", "pid", w.pid)
				drop(true)
			} else if p.leave(i) {
				drop(true)
				return
			}
		case <-healthy.C:
			// Alive for a second: the plugin starts fine.
			p.noteHealthy()
		case <-w.genCh:
			healthy.Stop()
			log.Info("restarting worker with the new config", "pid", w.pid)
			drop(true)
			backoff = 0
		case <-w.exited:
			healthy.Stop()
			quick := time.Since(w.started) < time.Second
			why := "exited while idle: " + w.exitText()
			log.Warn("worker "+why+"; restarting", "pid", w.pid, "stderr", w.stderr.tail())
			p.noteFailure(quick, why)
			drop(false)
			if quick {
				backoff = nextBackoff(backoff)
			} else {
				backoff = 0
			}
		case <-ctx.Done():
			healthy.Stop()
		}
	}
}

func nextBackoff(d time.Duration) time.Duration {
	if d == 0 {
		return 50 * time.Millisecond
	}
	return min(2*d, 5*time.Second)
}

// serve runs j on w and answers it. It reports false when w must be
// replaced.
func (p *Pool) serve(log *slog.Logger, w *proc, j *job) bool {
	p.busy.Add(1)
	defer p.busy.Add(-1)
	name := p.Config().Name
	if err := j.ctx.Err(); err != nil {
		// Gave up while queued: the worker did nothing.
		j.done <- result{err: err}
		return true
	}
	stop := context.AfterFunc(j.ctx, w.conn.Interrupt)
	res, err := w.conn.Exchange(&j.req)
	interrupted := !stop()
	var werr *Error
	switch {
	case err == nil:
		p.handled.Add(1)
		j.done <- result{res: res}
		return true
	case errors.As(err, &werr):
		p.handled.Add(1)
		j.done <- result{err: werr}
		return true
	}
	p.failed.Add(1)
	var e *Error
	switch {
	case interrupted && j.ctx.Err() != nil && !errors.Is(j.ctx.Err(), context.DeadlineExceeded):
		// The caller gave up (the agent stops): its request goes back
		// to the broker; the worker's state is unknown, so it goes.
		log.Info("call cancelled; restarting worker", "pid", w.pid)
		p.noteFailure(false, "call cancelled")
		j.done <- result{err: j.ctx.Err()}
		return false
	case errors.Is(err, os.ErrDeadlineExceeded):
		e = &Error{CodeTimeout, fmt.Sprintf("%s: the worker did not answer %s before the call's deadline; worker restarted", name, j.req.Method)}
		log.Warn("worker timed out; restarting", "pid", w.pid, "method", j.req.Method)
	case errors.Is(err, ErrMalformed):
		e = &Error{CodeMalformed, fmt.Sprintf("%s: the worker's reply to %s broke the protocol (%v); worker restarted", name, j.req.Method, err)}
		log.Warn("worker wrote a malformed reply; restarting", "pid", w.pid, "err", err)
	default:
		exit := w.awaitExit(200 * time.Millisecond)
		e = &Error{CodeCrashed, fmt.Sprintf("%s: the worker crashed during %s (%s); worker restarted", name, j.req.Method, exit)}
		log.Warn("worker crashed during a call; restarting", "pid", w.pid, "method", j.req.Method, "exit", exit, "stderr", w.stderr.tail())
	}
	p.noteFailure(time.Since(w.started) < time.Second, e.Message)
	j.done <- result{err: e}
	return false
}

// proc is one running worker process.
type proc struct {
	cmd     *exec.Cmd
	pid     int
	conn    Conn
	gen     uint64
	genCh   chan struct{}
	started time.Time
	grace   time.Duration
	stderr  *lineLog

	exited  chan struct{} // closed after Wait returned
	waitErr error
	gone    bool
}

func start(cfg Config, gen uint64, genCh chan struct{}, slot int, log *slog.Logger) (*proc, error) {
	var cmd *exec.Cmd
	if cfg.Shell {
		cmd = exec.Command("/bin/sh", append([]string{"-c"}, cfg.Command...)...)
	} else {
		cmd = exec.Command(cfg.Command[0], cfg.Command[1:]...)
	}
	cmd.Dir = cfg.Dir
	cmd.Env = append(os.Environ(), cfg.Env...)
	cmd.Env = append(cmd.Env, "WARREN_WORKER="+strconv.Itoa(slot), "WARREN_PROTOCOL="+cfg.Protocol.Name())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = time.Second
	stderr := newLineLog(log)
	cmd.Stderr = stderr
	conn, err := cfg.Protocol.Attach(cmd, cfg.MaxMessage)
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("start %q: %w", cfg.Command[0], err)
	}
	conn.Started()
	w := &proc{cmd: cmd, pid: cmd.Process.Pid, conn: conn, gen: gen, genCh: genCh, started: time.Now(),
		grace: cfg.Grace, stderr: stderr, exited: make(chan struct{})}
	go func() {
		w.waitErr = cmd.Wait()
		close(w.exited)
	}()
	return w, nil
}

// awaitExit waits up to d for the process to exit and describes how.
func (w *proc) awaitExit(d time.Duration) string {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.exited:
	case <-t.C:
	}
	return w.exitText()
}

func (w *proc) exitText() string {
	select {
	case <-w.exited:
		if w.waitErr != nil {
			return w.waitErr.Error()
		}
		return "exit status 0"
	default:
		return "closed its output"
	}
}

// stop closes the worker's input (a worker exits on end of file), waits up
// to its grace, then kills its process group.
func (w *proc) stop() {
	if w.gone {
		return
	}
	w.conn.CloseInput()
	t := time.NewTimer(w.grace)
	defer t.Stop()
	select {
	case <-w.exited:
	case <-t.C:
	}
	w.kill()
}

// kill kills the process group and waits for the process.
func (w *proc) kill() {
	if w.gone {
		return
	}
	w.gone = true
	_ = syscall.Kill(-w.pid, syscall.SIGKILL)
	<-w.exited
	w.conn.Close()
}
