// Package tower is Warren's Control Tower: a web page of the live fabric,
// Nanite's nanite-admin grown up. It shows the agents (identity, tags,
// services, status with a chart of the last minutes, last heartbeat, joins
// and drops as they happen), the services (who serves each path; the
// fabric-wide request rate, error rate and latency, from discovery STATS,
// and those of the requests sent through the Tower), a
// form that sends a request or push to any path with any selector, target
// or tags and shows each responder's result, and the dead letters (list,
// show, replay, purge: package dlq, the operations of `warren dlq`).
//
// The page is plain HTML, CSS and JavaScript embedded in the binary; every
// fragment of HTML is rendered by html/template on the server, so remote
// data (identities, tags, statuses, results, dead letters) is escaped in
// one place, and live updates arrive by server-sent events, never by
// polling. /metrics serves Prometheus metrics.
//
// A Tower is an http.Handler plus a mapper of its own: New it on a
// transport, Run it, and serve Handler from any http.Server (`warren tower`
// does, and so can `warren daemon`). Security: an access token or basic
// auth (CheckAddr refuses an address beyond loopback without one), a CSRF
// token on every request that changes state, a strict Content Security
// Policy, and no broker URL or password ever given to the page.
package tower

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
)

// DefaultAddr is where `warren tower` listens unless told otherwise: the
// address of nanite-admin, on loopback only.
const DefaultAddr = "127.0.0.1:4000"

// Config configures a Tower. The zero value serves loopback only, without
// authentication.
type Config struct {
	// Token, when set, is an access token: requests carry it as
	// "Authorization: Bearer TOKEN", or open the page once with
	// ?token=TOKEN, which sets a session cookie.
	Token string
	// User and Password, when both set, allow HTTP basic auth.
	User, Password string
	// Broker is what the page shows of the broker (give it redacted: the
	// Tower shows it as is).
	Broker string
	// History is how long the status charts reach back; 0 means 5 minutes.
	History time.Duration
	// Update is how often live pages are refreshed when something changed;
	// 0 means 1 second.
	Update time.Duration
	// Stats is how often the Tower asks the fabric discovery STATS for
	// the Services page's fabric-wide figures, while a page is open; 0
	// means 5 seconds.
	Stats time.Duration
	// DLQHold bounds how many dead letters one operation holds (dlq.Hold);
	// 0 means dlq.DefaultHold.
	DLQHold int
	// Mapper configures the Tower's own mapper.
	Mapper mapper.Config
}

// Authenticated reports whether the config asks for a token or basic auth.
func (c Config) Authenticated() bool {
	return c.Token != "" || (c.User != "" && c.Password != "")
}

// ErrNoAuth: the address reaches beyond loopback and the Tower has neither
// a token nor basic auth.
var ErrNoAuth = errors.New("tower: refusing to listen beyond loopback without an access token or basic auth")

// CheckAddr returns ErrNoAuth (wrapped with the address) when addr reaches
// beyond loopback and cfg has no authentication. An empty host (":4000")
// means every interface.
func CheckAddr(addr string, cfg Config) error {
	if cfg.Authenticated() {
		return nil
	}
	if (cfg.User == "") != (cfg.Password == "") {
		return errors.New("tower: basic auth needs both a user and a password")
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("tower: listen address %q: %w", addr, err)
	}
	if !loopbackHost(host) {
		return fmt.Errorf("%w: %q", ErrNoAuth, addr)
	}
	return nil
}

// loopbackHost reports whether host names only loopback: localhost or a
// loopback IP.
func loopbackHost(host string) bool {
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Option sets what only Go can pass.
type Option func(*Tower)

// WithLogger sets the logger; the default discards.
func WithLogger(l *slog.Logger) Option { return func(t *Tower) { t.log = l } }

// Tower is the Control Tower. Create it with New, call Run, and serve
// Handler.
type Tower struct {
	tr      transport.Transport
	cfg     Config
	log     *slog.Logger
	m       *mapper.Mapper
	csrf    string // the page's CSRF token
	session string // the session cookie's value when Token is set
	started time.Time

	state   *state
	fabric  *fabric
	hub     *hub
	metrics *metrics
	handler http.Handler
	kick    chan struct{} // a registry event to push (coalesced)

	runOnce sync.Once
}

// New returns a Tower on tr. It does not touch the broker until Run.
func New(tr transport.Transport, cfg Config, opts ...Option) (*Tower, error) {
	if tr == nil {
		return nil, errors.New("tower: nil transport")
	}
	if (cfg.User == "") != (cfg.Password == "") {
		return nil, errors.New("tower: basic auth needs both a user and a password")
	}
	if cfg.History < 0 || cfg.Update < 0 || cfg.Stats < 0 || cfg.DLQHold < 0 {
		return nil, errors.New("tower: history, update, stats and dlq hold must not be negative")
	}
	if cfg.History == 0 {
		cfg.History = 5 * time.Minute
	}
	if cfg.Update == 0 {
		cfg.Update = time.Second
	}
	if cfg.Stats == 0 {
		cfg.Stats = 5 * time.Second
	}
	t := &Tower{tr: tr, cfg: cfg, started: time.Now(), kick: make(chan struct{}, 1)}
	for _, o := range opts {
		if o != nil {
			o(t)
		}
	}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	t.log = t.log.With("component", "tower")
	t.csrf = randomHex(32)
	if cfg.Token != "" {
		sum := sha256.Sum256([]byte("warren-tower-session\x00" + cfg.Token))
		t.session = hex.EncodeToString(sum[:])
	}
	t.state = newState(cfg.History)
	t.fabric = newFabric()
	t.hub = newHub()
	t.metrics = newMetrics(t)
	m, err := mapper.New(tr, cfg.Mapper, mapper.WithLogger(t.log), mapper.WithEvents(t.onEvent))
	if err != nil {
		return nil, fmt.Errorf("tower: %w", err)
	}
	t.m = m
	t.handler = t.routes()
	return t, nil
}

// Mapper returns the Tower's mapper (running once Run is).
func (t *Tower) Mapper() *mapper.Mapper { return t.m }

// Ready is closed once the Tower's mapper has joined the fabric.
func (t *Tower) Ready() <-chan struct{} { return t.m.Ready() }

// Handler returns the Tower's HTTP handler: the pages, their live
// updates, the actions and /metrics, behind authentication.
func (t *Tower) Handler() http.Handler { return t.handler }

// Run runs the Tower's mapper and its live updates until ctx ends; it
// returns nil then, or the mapper's error.
func (t *Tower) Run(ctx context.Context) error {
	ran := false
	t.runOnce.Do(func() { ran = true })
	if !ran {
		return errors.New("tower: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { t.loop(ctx) })
	wg.Go(func() { t.statsLoop(ctx) })
	err := t.m.Run(ctx)
	cancel()
	t.hub.close()
	return err
}

// Serve runs the Tower and serves it on ln until ctx ends, then shuts the
// server down (waiting at most 5s for requests in hand).
func (t *Tower) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           t.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- t.Run(ctx) }()
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Serve(ln) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-runErr:
		runErr = nil
	case err = <-srvErr:
		srvErr = nil
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	_ = srv.Shutdown(sctx)
	if runErr != nil {
		if rerr := <-runErr; err == nil {
			err = rerr
		}
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// minPush is the shortest time between two pushes prompted by registry
// events: a storm of joins (a thousand agents starting) is shown in a few
// updates, not one per agent.
const minPush = 200 * time.Millisecond

// loop samples the registry into the status history and pushes live
// updates to the pages while any is open: every Update, when a page opens,
// and soon after a join or drop.
func (t *Tower) loop(ctx context.Context) {
	tick := time.NewTicker(t.cfg.Update)
	defer tick.Stop()
	var last time.Time
	soon := time.NewTimer(time.Hour)
	soon.Stop()
	armed := false
	push := func(now time.Time) {
		if t.hub.clients() > 0 {
			t.push(t.m.Agents(), now)
		}
		last = now
	}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			agents := t.m.Agents()
			t.state.sample(agents, now)
			t.metrics.observeRegistry(agents, now)
			if t.hub.clients() > 0 {
				t.push(agents, now)
			}
			last = now
		case <-t.hub.joined:
			// A new page: give it everything now rather than in a second.
			push(time.Now())
		case <-t.kick:
			if armed {
				continue
			}
			if wait := minPush - time.Since(last); wait > 0 {
				soon.Reset(wait)
				armed = true
				continue
			}
			push(time.Now())
		case now := <-soon.C:
			armed = false
			push(now)
		}
	}
}

// onEvent records a join or drop and has it pushed to the pages soon.
func (t *Tower) onEvent(e mapper.Event) {
	t.metrics.events.WithLabelValues(string(e.Kind)).Inc()
	t.state.event(e, time.Now())
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// push renders the live fragments and sends those that changed.
func (t *Tower) push(agents []mapper.AgentInfo, now time.Time) {
	for _, f := range []struct {
		name string
		data any
	}{
		{"agents", t.agentsView(agents, now)},
		{"services", t.servicesView(agents, now)},
		{"events", t.eventsView(now)},
	} {
		html, err := t.render(f.name, f.data)
		if err != nil {
			t.log.Error("render", "fragment", f.name, "err", err)
			continue
		}
		t.hub.sendChanged(sseEvent{name: f.name, data: html})
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }
