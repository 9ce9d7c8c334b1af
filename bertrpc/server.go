package bertrpc

import (
	"bufio"
	"bytes"
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/warrenrpc/warren/bert"
)

// adminModule is the module of Ernie's administrative calls.
const adminModule = "__admin__"

// priority is the queue a request goes to.
type priority uint8

const (
	high priority = iota
	low
)

func (p priority) String() string {
	if p == low {
		return "low"
	}
	return "high"
}

// Option configures what only Go can pass to [New].
type Option func(*options)

type options struct {
	logger       *slog.Logger
	registry     *Registry
	fabric       Fabric
	workerOut    io.Writer
	drainTimeout time.Duration
	accessCheck  time.Duration
	tracer       trace.Tracer // nil: no spans
}

// WithLogger sets the server's logger. The default discards everything.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithNative sets the registry of native modules. Config entries of type
// native must name modules registered there.
func WithNative(r *Registry) Option { return func(o *options) { o.registry = r } }

// WithFabric sets the bridge fabric modules dispatch to.
func WithFabric(f Fabric) Option { return func(o *options) { o.fabric = f } }

// WithWorkerOutput sends external workers' stdout and stderr to w. The
// default is /dev/null. Pass an *os.File to avoid a copying goroutine per
// worker.
func WithWorkerOutput(w io.Writer) Option { return func(o *options) { o.workerOut = w } }

// WithDrainTimeout bounds how long a stopping server waits for in-flight
// requests before it cancels native handlers and kills workers. The default
// is 30 seconds.
func WithDrainTimeout(d time.Duration) Option { return func(o *options) { o.drainTimeout = d } }

// route is one way to serve a module; a module has one route per config
// entry, tried in config order (shadowing).
type route struct {
	kind     ModuleType
	pool     *pool
	selector string
	timeout  time.Duration // calls; <=0: none
	castTime time.Duration // casts; <=0: none
}

// Server is an Ernie-compatible BERT-RPC server. Create it with [New], run
// it with [Server.Run].
type Server struct {
	cfg    Config
	o      options
	log    *slog.Logger
	routes map[string][]route
	pools  []*pool // parallel to cfg.Modules; nil for non-external entries
	acc    *accessLog
	limits bert.Limits

	ready    chan struct{}
	addr     net.Addr
	running  atomic.Bool
	haltCh   chan struct{}
	haltOnce sync.Once

	mu       sync.Mutex
	halting  bool
	conns    map[net.Conn]*connState
	idle     list.List      // of *connState without a call in hand, least recently active first
	casts    int            // pending casts: acknowledged, not yet finished
	seq      uint64         // stamps connState.active
	inflight sync.WaitGroup // accepted requests not yet answered (casts: not yet run)
	wg       sync.WaitGroup // connection and helper goroutines
	natives  sync.WaitGroup // native handlers running (see runNative)

	workCtx context.Context // handlers and workers; cancelled after the drain

	connGo, nativeGo *gopool   // goroutines of connections and of native calls
	bufs             sync.Pool // of *connBufs: a connection's bufio reader and writer

	total, completed atomic.Int64
	queued           queueCounter

	evicted, refused, castsRefused atomic.Int64
	refusing                       chan struct{} // bounds the refusals being answered
	warned                         [numWarnings]atomic.Int64
}

// connBuffer is the size of a connection's read and write buffers.
const connBuffer = 4096

// connBufs are the buffers of a connection, reused by the next one.
type connBufs struct {
	r *bufio.Reader
	w *bufio.Writer
}

// maxIdleGoroutines bounds the goroutines of finished connections kept
// for reuse (see gopool).
const maxIdleGoroutines = 256

// connState is one client connection, in Server.conns, and in Server.idle
// while it has no call in hand.
type connState struct {
	c       net.Conn
	br      *bufio.Reader // requests
	bw      *bufio.Writer // replies: flushed when no whole request is waiting in br
	elem    *list.Element // in Server.idle; nil while busy
	evicted bool          // closed to make room; its requests are not run
	active  uint64        // Server.seq when accepted or last answered: Server.idle's order
}

// New checks cfg and prepares a server. Nothing listens or starts until
// [Server.Run].
func New(cfg Config, opts ...Option) (*Server, error) {
	o := options{drainTimeout: 30 * time.Second, accessCheck: time.Second}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Server{
		cfg:    cfg,
		o:      o,
		log:    o.logger.With("component", "bertrpc"),
		routes: make(map[string][]route),
		pools:  make([]*pool, len(cfg.Modules)),
		limits: bert.Limits{MaxSize: cfg.MaxPacket},
		ready:  make(chan struct{}),
		haltCh: make(chan struct{}),
		conns:  make(map[net.Conn]*connState),

		connGo: newGopool(maxIdleGoroutines),

		refusing: make(chan struct{}, maxRefusing),
	}
	for i, m := range cfg.Modules {
		for _, k := range m.Ignored {
			s.log.Warn("config key ignored: not known to this server", "module", m.Module, "key", k)
		}
		r := route{kind: m.Type, selector: m.Selector, timeout: cfg.CallTimeout, castTime: cfg.CastTimeout}
		if m.Timeout > 0 {
			r.timeout = m.Timeout
		}
		switch m.Type {
		case TypeNative:
			if !o.registry.hasModule(m.Module) {
				return nil, fmt.Errorf("%w: modules[%d]: native module %q is not registered in this binary", ErrInvalidConfig, i, m.Module)
			}
			if len(m.CodePaths) > 0 {
				s.log.Warn("codepaths ignored: native modules are compiled in", "module", m.Module)
			}
		case TypeExternal:
			r.pool = newPool(m, cfg.MaxPacket, o.workerOut, s.log, &s.queued)
			s.pools[i] = r.pool
		case TypeFabric:
			if o.fabric == nil {
				return nil, ErrNoFabric
			}
		}
		s.routes[m.Module] = append(s.routes[m.Module], r)
	}
	return s, nil
}

// Ready is closed once the server listens; [Server.Addr] is valid then.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr is the address the server listens on, nil before [Server.Ready].
func (s *Server) Addr() net.Addr {
	select {
	case <-s.ready:
		return s.addr
	default:
		return nil
	}
}

// Halt stops the server gracefully, as the __admin__:halt call does: stop
// accepting connections, answer the requests in hand, then make
// [Server.Run] return nil. It is safe to call more than once.
func (s *Server) Halt() { s.haltOnce.Do(func() { close(s.haltCh) }) }

// ReloadHandlers makes every external worker restart with fresh code, as
// __admin__:reload_handlers does: idle workers now, busy ones after their
// current request.
func (s *Server) ReloadHandlers() {
	for _, p := range s.pools {
		if p != nil {
			p.reload()
		}
	}
}

// Run listens, starts the external workers and serves until ctx ends or
// the server is halted. Either way it stops gracefully: no new connections,
// in-flight requests are answered (for at most the drain timeout), then
// workers are stopped. Run returns nil on a clean stop. It can be called
// once.
func (s *Server) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("bertrpc: Run called twice")
	}
	var lc net.ListenConfig
	if s.cfg.IdleTimeout > 0 {
		// The idle timeout closes connections whose client went away:
		// TCP keep-alive would add nothing but its three setsockopt
		// calls per accepted connection (4% of the server's CPU with a
		// connection per call).
		lc.KeepAlive = -1
	}
	ln, err := lc.Listen(context.WithoutCancel(ctx), "tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("bertrpc: listen: %w", err)
	}
	if s.cfg.AccessLog != "" {
		s.acc, err = openAccessLog(s.cfg.AccessLog, s.o.accessCheck, func(err error) { s.log.Error("access log", "err", err) })
		if err != nil {
			ln.Close()
			return err
		}
	}
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	s.workCtx = workCtx
	for _, p := range s.pools {
		if p != nil {
			p.start(workCtx)
		}
	}
	s.addr = ln.Addr()
	close(s.ready)
	s.log.Info("listening", "addr", s.addr.String(), "modules", len(s.cfg.Modules),
		"max_connections", s.cfg.MaxConnections, "max_pending_casts", s.cfg.MaxPendingCasts,
		"frame_timeout", s.cfg.FrameTimeout, "idle_timeout", s.cfg.IdleTimeout)

	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		s.acceptLoop(ln)
	}()

	select {
	case <-ctx.Done():
		s.log.Info("stopping", "reason", context.Cause(ctx))
	case <-s.haltCh:
		s.log.Info("halting")
	}
	ln.Close()
	<-acceptDone

	s.mu.Lock()
	s.halting = true
	s.mu.Unlock()

	drained := make(chan struct{})
	go func() {
		s.inflight.Wait()
		close(drained)
	}()
	t := time.NewTimer(s.o.drainTimeout)
	select {
	case <-drained:
		t.Stop()
	case <-t.C:
		s.log.Warn("drain timeout: cancelling requests in hand", "timeout", s.o.drainTimeout)
		cancelWork()
		<-drained
	}

	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.connGo.Stop()

	cancelWork()
	// Native handlers that ignore their context are not waited for
	// without end: a stop must not hang on one.
	nativesDone := make(chan struct{})
	go func() { s.natives.Wait(); close(nativesDone) }()
	grace := time.NewTimer(nativeGrace)
	select {
	case <-nativesDone:
		grace.Stop()
	case <-grace.C:
		s.log.Warn("native handlers still running after the drain, ignoring their context: not waiting for them", "waited", nativeGrace)
	}
	for _, p := range s.pools {
		if p != nil {
			p.wait()
		}
	}
	if s.acc != nil {
		if err := s.acc.close(); err != nil {
			s.log.Warn("closing access log", "err", err)
		}
	}
	s.log.Info("stopped")
	return nil
}

func (s *Server) acceptLoop(ln net.Listener) {
	var pause time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if isFDExhaustion(err) {
				// Out of descriptors: the clients waiting in the listen
				// backlog are not to wait for idle connections to time
				// out. Close the longest-idle one and try again soon.
				if victim := s.evict(); victim != nil {
					victim.c.Close()
					s.warn(warnFD, "out of file descriptors: closed the longest-idle connection to accept a new one", "err", err)
					pause = 0
					time.Sleep(fdRetry)
					continue
				}
			}
			// Back off and retry, as net/http does.
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			s.warn(warnAccept, "accept failed; retrying", "err", err, "pause", pause)
			time.Sleep(pause)
			continue
		}
		pause = 0
		accepted := time.Now()
		st, victim, ok := s.admit(c)
		if victim != nil {
			victim.c.Close()
		}
		if !ok {
			continue
		}
		s.connGo.Go(func() {
			defer s.wg.Done()
			s.serveConn(st, accepted)
		})
	}
}

// fdRetry is how long the accept loop waits after closing a connection to
// free a descriptor: the descriptor is released once that connection's
// reader has returned.
const fdRetry = 5 * time.Millisecond

func isFDExhaustion(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// admit registers a new connection. Over MaxConnections it evicts the
// longest-idle connection (victim, for the caller to close), or, when
// every connection has a call in hand, refuses c. ok reports whether c is
// to be served (s.wg has been added to then).
func (s *Server) admit(c net.Conn) (st *connState, victim *connState, ok bool) {
	s.mu.Lock()
	if s.halting {
		s.mu.Unlock()
		c.Close()
		return nil, nil, false
	}
	if limit := s.cfg.MaxConnections; limit > 0 && len(s.conns) >= limit {
		victim = s.evictLocked()
		if victim == nil {
			s.mu.Unlock()
			s.refuse(c, serverErr(CodeUndesignated, "BusyError", "too many connections: all %d (max_connections) have a call in hand; try again later", limit))
			return nil, nil, false
		}
		s.warn(warnEvict, "connection limit reached: closed the longest-idle connection", "max_connections", limit)
	}
	s.seq++
	st = &connState{c: c, active: s.seq}
	st.elem = s.idle.PushBack(st)
	s.conns[c] = st
	s.wg.Add(1)
	s.mu.Unlock()
	return st, victim, true
}

// evict takes the longest-idle connection off the books, for the caller
// to close; nil when every connection has a call in hand.
func (s *Server) evict() *connState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.evictLocked()
}

func (s *Server) evictLocked() *connState {
	e := s.idle.Front()
	if e == nil {
		return nil
	}
	st := e.Value.(*connState)
	s.idle.Remove(e)
	st.elem = nil
	st.evicted = true
	delete(s.conns, st.c)
	s.evicted.Add(1)
	return st
}

// begin marks st as having a request in hand, so that it is not evicted;
// it reports false when st was evicted already (the request is then not
// run: the client sees its connection closed without an answer).
func (s *Server) begin(st *connState) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.evicted {
		return false
	}
	if st.elem != nil {
		s.idle.Remove(st.elem)
		st.elem = nil
	}
	return true
}

// end puts st back among the idle connections, in the order of its last
// answer (see answer): a client that has had its answer and opens another
// connection sees that one counted as more recent, even if end runs later.
func (s *Server) end(st *connState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.evicted || st.elem != nil {
		return
	}
	e := s.idle.Back()
	for e != nil && e.Value.(*connState).active > st.active {
		e = e.Prev()
	}
	if e == nil {
		st.elem = s.idle.PushFront(st)
	} else {
		st.elem = s.idle.InsertAfter(st, e)
	}
}

// answer stamps st as active and writes a reply frame to it. The stamp is
// taken before the write, so that it precedes anything the client does
// after reading the reply; st stays busy (not evictable) until end.
//
// The reply is buffered while another whole request is already waiting in
// the connection's input (a pipelining client), and written with the last
// of them: a write per reply was a system call per request.
func (s *Server) answer(st *connState, payload []byte) {
	s.mu.Lock()
	s.seq++
	st.active = s.seq
	halting := s.halting
	s.mu.Unlock()
	s.writeReply(st, payload, halting)
}

// writeReply appends a reply frame to st's output, and writes the output
// unless more is true and another whole request is waiting in st's input.
func (s *Server) writeReply(st *connState, payload []byte, now bool) {
	var h [4]byte
	binary.BigEndian.PutUint32(h[:], uint32(len(payload)))
	_, _ = st.bw.Write(h[:])
	_, _ = st.bw.Write(payload)
	if !now && st.requestWaiting() {
		return
	}
	s.flush(st)
}

// requestWaiting reports whether a whole request frame is in st's input
// buffer, so that reading it does not wait for the client.
func (st *connState) requestWaiting() bool {
	n := st.br.Buffered()
	if n < 4 {
		return false
	}
	h, _ := st.br.Peek(4)
	return uint64(n) >= 4+uint64(binary.BigEndian.Uint32(h))
}

// flush writes st's buffered replies.
func (s *Server) flush(st *connState) {
	if st.bw.Buffered() == 0 {
		return
	}
	_ = st.c.SetWriteDeadline(time.Now().Add(writeTimeout))
	if err := st.bw.Flush(); err != nil {
		s.log.Debug("write reply", "remote", st.c.RemoteAddr().String(), "err", err)
		// The connection is broken: drop what is buffered from now on.
		st.bw.Reset(io.Discard)
	}
}

func (s *Server) answerTerm(st *connState, t any) {
	b, err := bert.Marshal(t)
	if err != nil {
		s.log.Error("encoding reply", "err", err)
		return
	}
	s.answer(st, b)
}

// drop removes a connection that ended.
func (s *Server) drop(st *connState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.evicted {
		return
	}
	if st.elem != nil {
		s.idle.Remove(st.elem)
		st.elem = nil
	}
	delete(s.conns, st.c)
}

// maxRefusing bounds the refused connections being answered at once;
// beyond it a refused connection is closed without an answer.
const maxRefusing = 16

// refuseLinger is how long a refused connection is kept open for its
// client to read the refusal.
const refuseLinger = 2 * time.Second

// refuse answers c's first request with e and closes it. The answer is
// written at once (it is the reply to whatever the client sends first);
// what the client sends is then read and discarded until it closes or
// refuseLinger passes, so that closing does not reset the connection
// before the client has read the answer.
func (s *Server) refuse(c net.Conn, e *Error) {
	s.refused.Add(1)
	s.warn(warnRefuse, "connection refused", "reason", e.Detail)
	select {
	case s.refusing <- struct{}{}:
	default:
		c.Close()
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.refusing }()
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(refuseLinger))
		b, _ := bert.Marshal(e.term())
		if _, err := c.Write(appendFrame(nil, b)); err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(c, int64(s.cfg.MaxPacket)+4))
	}()
}

// Rate-limited warnings: at most one a second of each kind.
const (
	warnAccept = iota
	warnFD
	warnEvict
	warnRefuse
	warnCasts
	numWarnings
)

func (s *Server) warn(kind int, msg string, args ...any) {
	now := time.Now().UnixNano()
	last := s.warned[kind].Load()
	if now-last < int64(time.Second) || !s.warned[kind].CompareAndSwap(last, now) {
		return
	}
	s.log.Warn(msg, args...)
}

// request is one call or cast being served.
type request struct {
	cast     bool
	module   string
	function string
	args     bert.List
	term     bert.Tuple // the request as decoded; re-encoded for external workers
	prio     priority
	read     time.Time // when the call or cast was read; its timeout counts from here
	deadline time.Time
	entry    *accessEntry // nil without an access log
}

// serveConn reads requests until the client closes the connection. Ernie
// closes after each reply; here the connection stays open for the next
// request (Ernie's clients close it themselves after reading the reply).
//
// Waiting for a frame, the connection has the idle timeout, counted from
// its last request's answer; once a frame's first byte has arrived, the
// frame has the frame timeout to arrive whole.
func (s *Server) serveConn(st *connState, accepted time.Time) {
	c := st.c
	bufs, _ := s.bufs.Get().(*connBufs)
	if bufs == nil {
		bufs = &connBufs{r: bufio.NewReaderSize(c, connBuffer), w: bufio.NewWriterSize(c, connBuffer)}
	} else {
		bufs.r.Reset(c)
		bufs.w.Reset(c)
	}
	br := bufs.r
	st.br, st.bw = br, bufs.w
	defer func() {
		s.flush(st)
		s.drop(st)
		c.Close()
		// Nothing else uses st's buffers once its reader has returned.
		bufs.r.Reset(nil)
		bufs.w.Reset(nil)
		st.br, st.bw = nil, nil
		s.bufs.Put(bufs)
	}()
	prio := high
	start := accepted // the current request's accept time
	hq, lq := s.queueLens()
	idleSince := accepted
	for {
		if st.bw.Buffered() > 0 && !st.requestWaiting() {
			// The replies held for a pipelining client (see answer) go
			// out before waiting for its next request.
			s.flush(st)
			s.end(st)
		}
		// A request already in the buffer needs no deadline to be read
		// (a deadline costs a timer update per request).
		if br.Buffered() == 0 {
			setReadDeadline(c, idleSince, s.cfg.IdleTimeout)
			if _, err := br.Peek(1); err != nil {
				return // closed, idle too long, or evicted
			}
		}
		if !st.requestWaiting() {
			setReadDeadline(c, time.Now(), s.cfg.FrameTimeout)
		}
		payload, rerr := readFrame(br, s.cfg.MaxPacket)
		if rerr != nil {
			e := rerr.err
			if e == nil && rerr.partial != 0 && errors.Is(rerr.cause, os.ErrDeadlineExceeded) {
				e = protocolErr(rerr.partial, "the frame did not arrive whole within %v (frame_timeout)", s.cfg.FrameTimeout)
			}
			if e != nil {
				s.replyTerm(st, e.term())
				s.log.Debug("bad packet", "remote", c.RemoteAddr().String(), "err", e.Detail)
			}
			return
		}
		readAt := time.Now()
		if start.IsZero() {
			start = readAt
			hq, lq = s.queueLens()
		}
		term, err := bert.UnmarshalLimits(payload, s.limits)
		if err != nil {
			s.replyTerm(st, protocolErr(CodeUndesignated, "invalid BERT: %v", err).term())
			if s.cfg.CloseAfterReply {
				return
			}
			prio, start = high, time.Time{}
			continue
		}
		tup, _ := term.(bert.Tuple)
		kind := ""
		if len(tup) > 0 {
			if a, ok := tup[0].(bert.Atom); ok {
				kind = string(a)
			}
		}
		switch {
		case kind == "info" && len(tup) == 3:
			if cmd, _ := tup[1].(bert.Atom); cmd == "priority" {
				if p, ok := parsePriority(tup[2]); ok {
					prio = p
				}
			}
			// Other infos (cache, callback, stream, ...) are accepted and ignored.
			continue
		case (kind == "call" || kind == "cast") && len(tup) == 4:
			req, perr := parseRequest(tup)
			if perr != nil {
				s.replyTerm(st, perr.term())
				break
			}
			if !s.begin(st) {
				return // evicted: not run, not answered
			}
			if req.module == adminModule && !req.cast {
				s.admin(st, req.function)
			} else {
				req.prio, req.read = prio, readAt
				if s.acc != nil {
					req.entry = &accessEntry{accept: start, hq: hq, lq: lq, prio: prio, action: accessAction(term), kind: "unk"}
				}
				s.serveRequest(st, req)
			}
			if st.bw.Buffered() == 0 {
				// Not evictable while replies wait in the buffer.
				s.end(st)
			}
			idleSince = time.Now()
		default:
			s.replyTerm(st, protocolErr(CodeUndesignated, "invalid request: %s", bert.FormatLimit(term, maxQuoteLen)).term())
		}
		if s.cfg.CloseAfterReply {
			return
		}
		prio, start = high, time.Time{}
	}
}

// setReadDeadline sets c's read deadline to from+d, or none for d <= 0.
func setReadDeadline(c net.Conn, from time.Time, d time.Duration) {
	if d > 0 {
		_ = c.SetReadDeadline(from.Add(d))
	} else {
		_ = c.SetReadDeadline(time.Time{})
	}
}

func parsePriority(v any) (priority, bool) {
	if l, ok := v.(bert.List); ok && len(l) == 1 {
		v = l[0]
	}
	switch a, _ := v.(bert.Atom); a {
	case "high":
		return high, true
	case "low":
		return low, true
	}
	return high, false
}

func parseRequest(tup bert.Tuple) (*request, *Error) {
	mod, ok1 := tup[1].(bert.Atom)
	fun, ok2 := tup[2].(bert.Atom)
	if !ok1 || !ok2 {
		return nil, protocolErr(CodeUndesignated, "invalid request: module and function must be atoms: %s", bert.FormatLimit(tup, maxQuoteLen))
	}
	var args bert.List
	switch a := tup[3].(type) {
	case bert.List:
		args = a
	case bert.Charlist:
		// Erlang sends a list of small integers as a string.
		args = make(bert.List, len(a))
		for i := range len(a) {
			args[i] = int(a[i])
		}
	default:
		return nil, protocolErr(CodeUndesignated, "invalid request: arguments must be a list: %s", bert.FormatLimit(tup, maxQuoteLen))
	}
	return &request{cast: tup[0] == bert.Atom("cast"), module: string(mod), function: string(fun), args: args, term: tup}, nil
}

// maxQuoteLen bounds the text of a client's term quoted in an error reply.
const maxQuoteLen = 200

// accessAction renders a request for the access log. Only what the log
// keeps is rendered (Ernie cuts at maxActionLen), so a 16 MiB binary costs
// no more than a small one.
func accessAction(term any) string {
	return bert.FormatLimit(term, maxActionLen+1)
}

// serveRequest runs a call and answers it, or answers a cast with
// {noreply} and runs it in the background.
func (s *Server) serveRequest(st *connState, req *request) {
	s.mu.Lock()
	if s.halting {
		s.mu.Unlock()
		s.answerTerm(st, serverErr(CodeUndesignated, "ServerError", "%s", ErrHalting.Error()).term())
		return
	}
	if limit := s.cfg.MaxPendingCasts; req.cast && limit > 0 && s.casts >= limit {
		s.mu.Unlock()
		s.total.Add(1)
		s.castsRefused.Add(1)
		s.warn(warnCasts, "cast refused: too many pending casts", "max_pending_casts", limit)
		b, errLog := s.errorReply(req, "unk", serverErr(CodeUndesignated, "BusyError", "%s:%s: not run: %d casts are pending (max_pending_casts); try again later", req.module, req.function, limit))
		s.finishRequest(req, errLog)
		s.answer(st, b)
		return
	}
	s.inflight.Add(1)
	s.wg.Add(1) // a cast's goroutine, or nothing: Done below
	if req.cast {
		s.casts++
	}
	s.mu.Unlock()
	s.total.Add(1)

	if req.cast {
		s.answerTerm(st, bert.Tuple{bert.Atom("noreply")})
		go func() {
			defer s.wg.Done()
			defer s.inflight.Done()
			_, errLog := s.execute(req)
			s.mu.Lock()
			s.casts--
			s.mu.Unlock()
			s.finishRequest(req, errLog)
		}()
		return
	}
	defer s.wg.Done()
	defer s.inflight.Done()
	reply, errLog := s.execute(req)
	// Counted and logged before the reply goes out, so a client that has
	// its reply finds it in the stats (and, once the access log's buffer
	// is written, at most accessFlushEvery later, in the access log).
	s.finishRequest(req, errLog)
	s.answer(st, reply)
}

func (s *Server) finishRequest(req *request, errLog string) {
	s.completed.Add(1)
	if req.entry == nil {
		return
	}
	req.entry.done = time.Now()
	req.entry.err = errLog
	if err := s.acc.write(req.entry.format()); err != nil {
		s.log.Error("access log", "err", err)
	}
}

// execute finds the route for req (shadowing: native first if it has the
// function and its predicate agrees) and runs it. It returns the encoded
// reply and, for server-side failures, the text of an ERR access log line.
func (s *Server) execute(req *request) (reply []byte, errLog string) {
	routes := s.routes[req.module]
	if len(routes) == 0 {
		return s.errorReply(req, "unk", serverErr(CodeNoModule, "ServerError", "No such module '%s'", req.module))
	}
	for _, r := range routes {
		timeout := r.timeout
		if req.cast {
			timeout = r.castTime
		}
		if timeout > 0 {
			req.deadline = req.read.Add(timeout)
		} else {
			req.deadline = time.Time{}
		}
		switch r.kind {
		case TypeNative:
			fn := s.o.registry.lookup(req.module, req.function, len(req.args))
			if fn == nil {
				continue
			}
			if pred := s.o.registry.lookup(req.module, req.function+"_pred", len(req.args)); pred != nil {
				if !s.predicate(req, pred) {
					continue
				}
			}
			s.markProcess(req, "nat")
			v, e := s.runNative(req, fn)
			if e != nil {
				return s.errorReply(req, "nat", e)
			}
			return s.replyOf(req, v)
		case TypeExternal:
			s.markProcess(req, "ext")
			return s.runExternal(req, r.pool)
		case TypeFabric:
			s.markProcess(req, "fab")
			ctx, cancel := s.callContext(req)
			ctx, span := startFabricSpan(ctx, s.o.tracer, req, r.selector)
			v, e := fabricCall(ctx, s.o.fabric, req.module, req.function, r.selector, req.args)
			endFabricSpan(span, e)
			cancel()
			if e != nil {
				return s.errorReply(req, "fab", e)
			}
			return s.replyOf(req, v)
		}
	}
	return s.errorReply(req, "unk", serverErr(CodeNoFunction, "ServerError", "No such function '%s:%s'", req.module, req.function))
}

func (s *Server) markProcess(req *request, kind string) {
	if req.entry != nil {
		req.entry.process = time.Now()
		req.entry.kind = kind
	}
}

// errorReply encodes e. Server and protocol errors are logged as ERR lines;
// user errors are the handler's answer (ACC), as in Ernie.
func (s *Server) errorReply(req *request, kind string, e *Error) ([]byte, string) {
	if req.entry != nil {
		if req.entry.process.IsZero() {
			req.entry.process = time.Now()
		}
		req.entry.kind = kind
	}
	b, err := bert.Marshal(e.term())
	if err != nil { // cannot happen for an error tuple of atoms, ints and binaries
		s.log.Error("encoding error reply", "err", err)
	}
	if e.Type == UserError {
		return b, ""
	}
	return b, e.Detail
}

func (s *Server) replyOf(req *request, v any) ([]byte, string) {
	b, err := bert.Marshal(bert.Tuple{bert.Atom("reply"), v})
	if err != nil {
		return s.errorReply(req, req.entry.kindOr("nat"), serverErr(CodeUndesignated, "ServerError", "%s:%s: cannot encode the result: %v", req.module, req.function, err))
	}
	return b, ""
}

func (e *accessEntry) kindOr(def string) string {
	if e == nil {
		return def
	}
	return e.kind
}

func (s *Server) callContext(req *request) (context.Context, context.CancelFunc) {
	if req.deadline.IsZero() {
		return context.WithCancel(s.workCtx)
	}
	return context.WithDeadline(s.workCtx, req.deadline)
}

// predicate calls a shadowing predicate; anything but true (errors and
// panics included) selects the next route.
func (s *Server) predicate(req *request, pred Func) (ok bool) {
	ctx, cancel := s.callContext(req)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			s.log.Warn("shadowing predicate panicked", "module", req.module, "function", req.function+"_pred", "panic", r)
			ok = false
		}
	}()
	v, err := pred(ctx, req.args)
	if err != nil {
		s.log.Warn("shadowing predicate failed", "module", req.module, "function", req.function+"_pred", "err", err)
		return false
	}
	b, _ := v.(bool)
	return b || v == bert.Atom("true")
}

type nativeResult struct {
	v   any
	err *Error
}

// runNative runs fn; with a deadline it runs in its own goroutine so that a
// handler ignoring ctx cannot hold the reply past the timeout.
// nativeGrace is how long a stopping server waits, after the drain and the
// cancellation of its work, for native handlers that ignore their context.
const nativeGrace = 2 * time.Second

func (s *Server) runNative(req *request, fn Func) (any, *Error) {
	ctx, cancel := s.callContext(req)
	defer cancel()
	// In a goroutine of its own even without a deadline (a cast): the
	// drain timeout cancels ctx, and the request must end then even when
	// the handler ignores ctx.
	ch := make(chan nativeResult, 1)
	s.natives.Add(1)
	go func() {
		defer s.natives.Done()
		ch <- s.callNative(ctx, req, fn)
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		select {
		case r := <-ch:
			return r.v, r.err
		default:
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, serverErr(CodeUndesignated, "TimeoutError", "%s:%s did not return in time", req.module, req.function)
		}
		return nil, serverErr(CodeUndesignated, "ServerError", "%s:%s: server is stopping", req.module, req.function)
	}
}

func (s *Server) callNative(ctx context.Context, req *request, fn Func) (r nativeResult) {
	defer func() {
		if p := recover(); p != nil {
			bt := panicBacktrace()
			s.log.Error("native handler panicked", "module", req.module, "function", req.function,
				"panic", p, "backtrace", strings.Join(bt, "\n"))
			// As Ernie's native handlers send Erlang's stacktrace, and its
			// Ruby workers e.backtrace.
			r = nativeResult{err: &Error{
				Type: UserError, Code: CodeUndesignated, Class: "RuntimeError",
				Detail: fmt.Sprintf("panic: %v", p), Backtrace: bt,
			}}
		}
	}()
	v, err := fn(ctx, req.args)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			return nativeResult{err: e}
		}
		return nativeResult{err: &Error{Type: UserError, Code: CodeUndesignated, Class: "RuntimeError", Detail: err.Error()}}
	}
	return nativeResult{v: v}
}

// maxBacktrace bounds the frames of a panic's backtrace.
const maxBacktrace = 32

// panicBacktrace returns the stack of the panicking goroutine, called from
// a deferred recover: one "function (file:line)" line per frame, from the
// panic up, without the runtime's own frames.
func panicBacktrace() []string {
	pcs := make([]uintptr, maxBacktrace+8)
	n := runtime.Callers(3, pcs) // runtime.Callers, panicBacktrace, the deferred func
	frames := runtime.CallersFrames(pcs[:n])
	var bt []string
	for {
		f, more := frames.Next()
		if !strings.HasPrefix(f.Function, "runtime.") {
			bt = append(bt, fmt.Sprintf("%s (%s:%d)", f.Function, f.File, f.Line))
		}
		if !more || len(bt) == maxBacktrace {
			return bt
		}
	}
}

// runExternal hands req to a worker of p and waits for the answer. A job is
// queued until a worker starts it or its waiter gives up, whichever comes
// first.
//
// The worker gets the request re-encoded with [bert.Marshal], not the
// client's bytes: modern Erlang writes floats as NEW_FLOAT_EXT and atoms
// as ATOM_UTF8_EXT, which Ernie's Ruby library (the bert gem) cannot read;
// Marshal writes only the tags of the BERT specification. It costs about
// 0.5 µs for a small call and a copy for a large one (BenchmarkWorkerRequest),
// against ~100 µs for a round trip to a Ruby worker.
func (s *Server) runExternal(req *request, p *pool) ([]byte, string) {
	payload, err := bert.Marshal(req.term)
	if err != nil {
		return s.errorReply(req, "ext", protocolErr(CodeUndesignated, "%s:%s: the request cannot be passed to an external worker as BERT: %v", req.module, req.function, err))
	}
	j := &job{payload: payload, deadline: req.deadline, prio: req.prio, cast: req.cast, done: make(chan jobResult, 1)}
	p.submit(j)
	var timeout <-chan time.Time
	if !req.deadline.IsZero() {
		t := time.NewTimer(time.Until(req.deadline))
		defer t.Stop()
		timeout = t.C
	}
	for {
		select {
		case r := <-j.done:
			if r.err != nil {
				b, _ := s.errorReply(req, "ext", r.err)
				return b, r.errLog
			}
			return r.reply, ""
		case <-timeout:
			if j.cancel() {
				return s.errorReply(req, "ext", serverErr(CodeUndesignated, "TimeoutError", "%s:%s waited in the queue past its timeout", req.module, req.function))
			}
			// A worker has it and answers by the same deadline.
			timeout = nil
		case <-s.workCtx.Done():
			if j.cancel() {
				return s.errorReply(req, "ext", serverErr(CodeUndesignated, "ServerError", "%s", ErrHalting.Error()))
			}
			// The worker is being stopped and answers with an error.
			return s.waitJob(req, j)
		}
	}
}

func (s *Server) waitJob(req *request, j *job) ([]byte, string) {
	r := <-j.done
	if r.err != nil {
		b, _ := s.errorReply(req, "ext", r.err)
		return b, r.errLog
	}
	return r.reply, ""
}

func (s *Server) queueLens() (hq, lq int) {
	return int(s.queued.hq.Load()), int(s.queued.lq.Load())
}

// admin answers Ernie's __admin__ calls.
func (s *Server) admin(st *connState, fun string) {
	var msg string
	halt := false
	switch fun {
	case "stats":
		msg = s.Stats()
	case "reload_handlers":
		s.ReloadHandlers()
		msg = "Handlers reloaded."
	case "halt":
		msg, halt = "Halting.", true
	default:
		msg = "Admin function not supported."
	}
	s.answerTerm(st, bert.Tuple{bert.Atom("reply"), []byte(msg)})
	if halt {
		s.Halt()
	}
}

// Stats returns Ernie's statistics text, one key=value per line:
//
//	connections.total=12
//	connections.completed=12
//	workers.idle.nat=native
//	workers.idle.ext=2
//	queue.high=0
//	queue.low=0
//	tcp.open=3
//	tcp.evicted=0
//	tcp.refused=0
//	casts.pending=0
//	casts.refused=0
//
// connections.* count requests (calls and casts), as Ernie's do. Fabric
// modules show "fabric". The lines after Ernie's are Warren's: open client
// connections, connections closed or refused at max_connections or for
// want of file descriptors, and casts pending or refused at
// max_pending_casts.
func (s *Server) Stats() string {
	var b strings.Builder
	b.WriteString("connections.total=" + strconv.FormatInt(s.total.Load(), 10) + "\n")
	b.WriteString("connections.completed=" + strconv.FormatInt(s.completed.Load(), 10) + "\n")
	for i, m := range s.cfg.Modules {
		b.WriteString("workers.idle." + m.Module + "=")
		switch m.Type {
		case TypeExternal:
			b.WriteString(strconv.FormatInt(s.pools[i].idle.Load(), 10))
		default:
			b.WriteString(string(m.Type))
		}
		b.WriteByte('\n')
	}
	hq, lq := s.queueLens()
	b.WriteString("queue.high=" + strconv.Itoa(hq) + "\n")
	b.WriteString("queue.low=" + strconv.Itoa(lq) + "\n")
	s.mu.Lock()
	open, casts := len(s.conns), s.casts
	s.mu.Unlock()
	b.WriteString("tcp.open=" + strconv.Itoa(open) + "\n")
	b.WriteString("tcp.evicted=" + strconv.FormatInt(s.evicted.Load(), 10) + "\n")
	b.WriteString("tcp.refused=" + strconv.FormatInt(s.refused.Load(), 10) + "\n")
	b.WriteString("casts.pending=" + strconv.Itoa(casts) + "\n")
	b.WriteString("casts.refused=" + strconv.FormatInt(s.castsRefused.Load(), 10) + "\n")
	return b.String()
}

// frameError is a failed packet read; err is what to tell the client, nil
// when the client simply went away or the read failed (cause). partial is
// the protocol error code to report if the read is to be blamed on the
// client after all (a timeout): CodeNoHeader or CodeNoData when the frame
// was cut inside its header or its data, 0 when no byte of it had come.
type frameError struct {
	err     *Error
	cause   error
	partial int
}

// readFrame reads one BERP: a 4-byte big-endian length and that many bytes.
func readFrame(r io.Reader, max int) ([]byte, *frameError) {
	var hdr [4]byte
	if n, err := io.ReadFull(r, hdr[:]); err != nil {
		switch {
		case n > 0 && errors.Is(err, io.ErrUnexpectedEOF):
			return nil, &frameError{err: protocolErr(CodeNoHeader, "unable to read the 4-byte length header"), cause: err}
		case n > 0:
			return nil, &frameError{cause: err, partial: CodeNoHeader}
		}
		return nil, &frameError{cause: err}
	}
	size := binary.BigEndian.Uint32(hdr[:])
	if int64(size) > int64(max) {
		return nil, &frameError{err: protocolErr(CodeNoData, "packet of %d bytes exceeds the maximum of %d", size, max)}
	}
	// Memory follows the data that arrives, not the length announced: a
	// lying header must not cost size bytes per connection, nor a stalled
	// frame more than what it sent (the buffer starts at 512 bytes and
	// doubles as data comes). A small frame, the usual request, is read
	// into a buffer of its size at once.
	if size <= smallFrame {
		buf := make([]byte, size)
		if _, err := io.ReadFull(r, buf); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				return nil, &frameError{err: protocolErr(CodeNoData, "unable to read the %d bytes of data the header announced", size), cause: err}
			}
			return nil, &frameError{cause: err, partial: CodeNoData}
		}
		return buf, nil
	}
	var buf bytes.Buffer
	if _, err := io.CopyN(&buf, r, int64(size)); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, &frameError{err: protocolErr(CodeNoData, "unable to read the %d bytes of data the header announced", size), cause: err}
		}
		return nil, &frameError{cause: err, partial: CodeNoData}
	}
	return buf.Bytes(), nil
}

const writeTimeout = 30 * time.Second

// smallFrame is the largest frame readFrame allocates whole before its data
// has arrived.
const smallFrame = 4096

// replyTerm sends t on st (buffered as in answer, without the stamp).
func (s *Server) replyTerm(st *connState, t any) {
	b, err := bert.Marshal(t)
	if err != nil {
		s.log.Error("encoding reply", "err", err)
		return
	}
	s.writeReply(st, b, false)
}
