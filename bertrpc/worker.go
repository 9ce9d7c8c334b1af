package bertrpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/warrenrpc/warren/bert"
)

// proclineLen is the length Ernie pads a worker's command line to with
// " --procline xxx…", so that the worker can later rewrite its process
// title ($0) in place.
const proclineLen = 150

// proclineCommand returns command with Ernie's procline padding appended:
// " --procline " and x's up to 150 characters. A command already longer
// than 150 characters runs as is, as in Ernie. (Ernie computes the padding
// as 150 - len - 12, which never terminates for 139..150; here the padding
// just becomes empty.)
func proclineCommand(command string) string {
	if len(command) > proclineLen {
		return command
	}
	pad := max(0, proclineLen-len(command)-len(" --procline "))
	return command + " --procline " + strings.Repeat("x", pad)
}

// job is one request for an external worker.
type job struct {
	payload  []byte    // the request BERT, as bert.Marshal wrote it
	deadline time.Time // zero: none
	prio     priority
	cast     bool

	state atomic.Int32   // jobQueued, then jobStarted or jobCanceled
	done  chan jobResult // buffered 1
}

const (
	jobQueued int32 = iota
	jobStarted
	jobCanceled
)

// cancel withdraws a job no worker has started; it reports false when a
// worker already has it (and will answer it).
func (j *job) cancel() bool { return j.state.CompareAndSwap(jobQueued, jobCanceled) }

type jobResult struct {
	reply  []byte // the worker's reply (valid BERT), forwarded as is
	err    *Error // or a server error (crash, timeout)
	errLog string // for an ERR access log line
}

func (j *job) finish(r jobResult) {
	select {
	case j.done <- r:
	default:
	}
}

// pool runs the workers of one external module.
type pool struct {
	module    string
	command   string
	count     int
	maxPacket int
	out       io.Writer // worker stdout and stderr; nil → /dev/null
	log       *slog.Logger
	queued    *queueCounter
	grace     time.Duration // how long a worker may take to exit after EOF on fd 3

	mu     sync.Mutex
	hq, lq []*job
	gen    uint64
	genCh  chan struct{} // closed when gen changes (reload)
	notify chan struct{} // wakes idle workers; capacity count

	idle atomic.Int64
	wg   sync.WaitGroup
}

type queueCounter struct{ hq, lq atomic.Int64 }

func newPool(m ModuleConfig, maxPacket int, out io.Writer, log *slog.Logger, q *queueCounter) *pool {
	return &pool{
		module:    m.Module,
		command:   m.Command,
		count:     m.Count,
		maxPacket: maxPacket,
		out:       out,
		log:       log.With("module", m.Module),
		queued:    q,
		grace:     2 * time.Second,
		genCh:     make(chan struct{}),
		notify:    make(chan struct{}, m.Count),
	}
}

// start launches the worker goroutines; they run until ctx ends.
func (p *pool) start(ctx context.Context) {
	for i := range p.count {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.runWorker(ctx, i)
		}()
	}
}

// wait waits for the worker goroutines (and their processes) to end.
func (p *pool) wait() { p.wg.Wait() }

// submit queues j; a worker picks it up, high queue first.
func (p *pool) submit(j *job) {
	p.mu.Lock()
	if j.prio == low {
		p.lq = append(p.lq, j)
		p.queued.lq.Add(1)
	} else {
		p.hq = append(p.hq, j)
		p.queued.hq.Add(1)
	}
	p.mu.Unlock()
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

// pop takes the next job that nobody gave up on, high queue first.
func (p *pool) pop() *job {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		var j *job
		switch {
		case len(p.hq) > 0:
			j = p.hq[0]
			p.hq[0] = nil
			p.hq = p.hq[1:]
			p.queued.hq.Add(-1)
		case len(p.lq) > 0:
			j = p.lq[0]
			p.lq[0] = nil
			p.lq = p.lq[1:]
			p.queued.lq.Add(-1)
		default:
			return nil
		}
		if j.state.CompareAndSwap(jobQueued, jobStarted) {
			return j
		}
	}
}

// reload makes every worker restart with a fresh process: idle ones now,
// busy ones once their request is answered.
func (p *pool) reload() {
	p.mu.Lock()
	p.gen++
	close(p.genCh)
	p.genCh = make(chan struct{})
	p.mu.Unlock()
}

func (p *pool) generation() (uint64, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gen, p.genCh
}

// runWorker owns one worker process at a time: it starts it, feeds it one
// request at a time, and replaces it when it crashes, times out, or the
// handlers are reloaded.
func (p *pool) runWorker(ctx context.Context, id int) {
	log := p.log.With("worker", id)
	var w *workerProc
	defer func() {
		if w != nil {
			w.stop(p.grace)
		}
	}()
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		if w == nil {
			if backoff > 0 {
				t := time.NewTimer(backoff)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
			gen, genCh := p.generation()
			var err error
			w, err = startWorker(p.command, p.out, gen, genCh)
			if err != nil {
				log.Error("cannot start worker", "command", p.command, "err", err)
				backoff = nextBackoff(backoff)
				continue
			}
			log.Debug("worker started", "pid", w.cmd.Process.Pid)
		}
		if j := p.pop(); j != nil {
			ok := p.serve(ctx, log, w, j)
			if !ok {
				w.kill()
				if time.Since(w.started) < time.Second {
					backoff = nextBackoff(backoff)
				} else {
					backoff = 0
				}
				w = nil
				continue
			}
			backoff = 0
			if gen, _ := p.generation(); gen != w.gen {
				log.Info("reloading worker", "pid", w.cmd.Process.Pid)
				w.stop(p.grace)
				w = nil
			}
			continue
		}
		p.idle.Add(1)
		select {
		case <-p.notify:
			p.idle.Add(-1)
		case <-w.genCh:
			p.idle.Add(-1)
			log.Info("reloading worker", "pid", w.cmd.Process.Pid)
			w.stop(p.grace)
			w = nil
		case <-w.exited:
			p.idle.Add(-1)
			log.Warn("worker exited while idle; restarting", "pid", w.cmd.Process.Pid, "err", w.waitErr)
			w.kill()
			if time.Since(w.started) < time.Second {
				backoff = nextBackoff(backoff)
			}
			w = nil
		case <-ctx.Done():
			p.idle.Add(-1)
		}
	}
}

func nextBackoff(d time.Duration) time.Duration {
	if d == 0 {
		return 50 * time.Millisecond
	}
	return min(2*d, 5*time.Second)
}

// serve runs j on w. It reports false when w must be replaced (crash,
// timeout or garbled reply); j has been answered either way.
func (p *pool) serve(ctx context.Context, log *slog.Logger, w *workerProc, j *job) bool {
	reply, err := w.roundTrip(ctx, j.payload, j.deadline, p.maxPacket)
	if err != nil {
		return p.fail(log, w, j, err)
	}
	// A well-framed reply may still be garbage: it must not reach the
	// client, and a worker that wrote it is not to be trusted with the
	// next request.
	if _, err := bert.UnmarshalLimits(reply, bert.Limits{MaxSize: p.maxPacket}); err != nil {
		e := serverErr(CodeUndesignated, "WorkerError", "%s: worker reply is not BERT (%v); worker restarted", p.module, err)
		log.Warn("worker reply is not BERT; restarting", "pid", w.cmd.Process.Pid, "err", err)
		j.finish(jobResult{err: e, errLog: "External process error " + e.Detail})
		return false
	}
	j.finish(jobResult{reply: reply})
	return true
}

// roundTrip writes one request BERP on fd 3 and reads one reply BERP from
// fd 4, within deadline; a server shutdown (ctx) interrupts it.
func (w *workerProc) roundTrip(ctx context.Context, req []byte, deadline time.Time, max int) ([]byte, error) {
	if err := w.in.SetWriteDeadline(deadline); err != nil {
		return nil, err
	}
	if err := w.out.SetReadDeadline(deadline); err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() {
		past := time.Unix(1, 0)
		_ = w.in.SetWriteDeadline(past)
		_ = w.out.SetReadDeadline(past)
	})
	defer stop()
	if err := bert.WritePacket(w.in, req); err != nil {
		return nil, err
	}
	return bert.ReadPacket(w.out, max)
}

func (p *pool) fail(log *slog.Logger, w *workerProc, j *job, err error) bool {
	var e *Error
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded) && !j.deadline.IsZero() && !time.Now().Before(j.deadline):
		e = serverErr(CodeUndesignated, "TimeoutError", "%s: worker did not answer in time; worker restarted", p.module)
		log.Warn("worker timed out; restarting", "pid", w.cmd.Process.Pid)
	case errors.Is(err, os.ErrDeadlineExceeded):
		e = serverErr(CodeUndesignated, "ServerError", "%s: server is stopping", p.module)
	case errors.Is(err, bert.ErrTooLarge):
		e = serverErr(CodeUndesignated, "WorkerError", "%s: worker reply exceeds %d bytes; worker restarted", p.module, p.maxPacket)
		log.Warn("worker reply too large; restarting", "pid", w.cmd.Process.Pid)
	default:
		w.kill()
		e = serverErr(CodeUndesignated, "WorkerError", "%s: worker crashed (%s); worker restarted", p.module, exitText(w, err))
		log.Warn("worker crashed; restarting", "pid", w.cmd.Process.Pid, "err", err, "exit", exitText(w, err))
	}
	j.finish(jobResult{err: e, errLog: "External process error " + e.Detail})
	return false
}

func exitText(w *workerProc, ioErr error) string {
	select {
	case <-w.exited:
		if w.waitErr != nil {
			return w.waitErr.Error()
		}
		return "exit status 0"
	default:
		return ioErr.Error()
	}
}

// workerProc is one running worker process.
type workerProc struct {
	cmd     *exec.Cmd
	in      *os.File // our end of the child's fd 3
	out     *os.File // our end of the child's fd 4
	gen     uint64
	genCh   chan struct{}
	started time.Time

	exited  chan struct{} // closed after Wait returned
	waitErr error
	stopped bool
}

// startWorker runs "/bin/sh -c command --procline xxx…" (as Erlang's
// open_port({spawn, Cmd}, [nouse_stdio, {packet, 4}]) does) with requests on
// fd 3 and replies on fd 4, in its own process group.
func startWorker(command string, out io.Writer, gen uint64, genCh chan struct{}) (*workerProc, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	cmd := exec.Command("/bin/sh", "-c", proclineCommand(command))
	cmd.ExtraFiles = []*os.File{inR, outW} // fd 3, fd 4
	if out != nil {
		cmd.Stdout, cmd.Stderr = out, out
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("start %q: %w", command, err)
	}
	inR.Close()
	outW.Close()
	w := &workerProc{cmd: cmd, in: inW, out: outR, gen: gen, genCh: genCh, started: time.Now(), exited: make(chan struct{})}
	go func() {
		// Owned by the worker: stop and kill wait for exited.
		w.waitErr = cmd.Wait()
		close(w.exited)
	}()
	return w, nil
}

// stop closes fd 3 (an Ernie worker exits when it reads EOF), waits up to
// grace, then kills the process group.
func (w *workerProc) stop(grace time.Duration) {
	if w.stopped {
		return
	}
	w.in.Close()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-w.exited:
	case <-t.C:
	}
	w.kill()
}

// kill kills the process group and waits for the process.
func (w *workerProc) kill() {
	if w.stopped {
		return
	}
	w.stopped = true
	_ = syscall.Kill(-w.cmd.Process.Pid, syscall.SIGKILL)
	<-w.exited
	w.in.Close()
	w.out.Close()
}
