package tower

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

//go:embed assets
var assets embed.FS

var templates = template.Must(template.New("").Funcs(template.FuncMap{
	"join":        strings.Join,
	"trimPercent": func(s string) string { return strings.TrimSuffix(s, "%") },
}).ParseFS(assets, "assets/*.html"))

// sessionCookie holds the session after ?token= (Token mode).
const sessionCookie = "warren_tower_session"

// csrfHeader carries the page's CSRF token on every request that changes
// state.
const csrfHeader = "X-Warren-CSRF"

func (t *Tower) routes() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "assets/static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /{$}", t.servePage)
	mux.HandleFunc("GET /events", t.serveEvents)
	mux.HandleFunc("POST /api/send", t.serveSend)
	mux.HandleFunc("GET /api/dlq", t.serveDLQList)
	mux.HandleFunc("GET /api/dlq/show", t.serveDLQShow)
	mux.HandleFunc("POST /api/dlq/replay", t.serveDLQAction)
	mux.HandleFunc("POST /api/dlq/purge", t.serveDLQAction)
	mux.Handle("GET /metrics", promhttp.HandlerFor(t.metrics.reg, promhttp.HandlerOpts{}))

	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "cross-origin request refused", http.StatusForbidden)
	}))
	return t.headers(t.auth(cop.Handler(t.csrfCheck(mux))))
}

// headers sets the security headers of every response.
func (t *Tower) headers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// auth lets a request through when it carries the token (bearer or
// session cookie) or the basic auth credentials. Without authentication
// configured it admits only requests addressed to a loopback name, so
// that a web site cannot reach the Tower by rebinding its DNS name to
// 127.0.0.1.
func (t *Tower) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !t.cfg.Authenticated() {
			host, _, err := net.SplitHostPort(r.Host)
			if err != nil {
				host = r.Host
			}
			if !loopbackHost(host) {
				http.Error(w, "this Tower has no authentication and answers only to localhost", http.StatusForbidden)
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		if tok := t.cfg.Token; tok != "" {
			if q := r.URL.Query().Get("token"); q != "" && r.Method == http.MethodGet && equal(q, tok) {
				http.SetCookie(w, &http.Cookie{
					Name: sessionCookie, Value: t.session, Path: "/", HttpOnly: true,
					SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
				})
				u := *r.URL
				qs := u.Query()
				qs.Del("token")
				u.RawQuery = qs.Encode()
				http.Redirect(w, r, u.RequestURI(), http.StatusSeeOther)
				return
			}
			if b, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && equal(b, tok) {
				next.ServeHTTP(w, r)
				return
			}
			if c, err := r.Cookie(sessionCookie); err == nil && equal(c.Value, t.session) {
				next.ServeHTTP(w, r)
				return
			}
		}
		if t.cfg.User != "" && t.cfg.Password != "" {
			if u, p, ok := r.BasicAuth(); ok && equal(u, t.cfg.User) && equal(p, t.cfg.Password) {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="Warren Control Tower", charset="UTF-8"`)
		}
		http.Error(w, "unauthorized: open the Tower with ?token=TOKEN, or sign in", http.StatusUnauthorized)
	})
}

// csrfCheck refuses a request that changes state (any method but GET and
// HEAD) unless it carries the page's CSRF token in the X-Warren-CSRF
// header. A cross-site form cannot set a header, and a cross-site script
// cannot read the token from the page.
func (t *Tower) csrfCheck(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead && !equal(r.Header.Get(csrfHeader), t.csrf) {
			http.Error(w, "missing or wrong CSRF token: reload the page", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// render executes the named template into a byte slice.
func (t *Tower) render(name string, data any) ([]byte, error) {
	var b bytes.Buffer
	if err := templates.ExecuteTemplate(&b, name, data); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// writeFragment renders a fragment as the response.
func (t *Tower) writeFragment(w http.ResponseWriter, status int, name string, data any) {
	b, err := t.render(name, data)
	if err != nil {
		t.log.Error("render", "template", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

type pageView struct {
	CSRF    string
	Broker  string
	Mapper  string
	Started string
}

func (t *Tower) servePage(w http.ResponseWriter, r *http.Request) {
	t.writeFragment(w, http.StatusOK, "page", pageView{
		CSRF: t.csrf, Broker: t.cfg.Broker, Mapper: t.m.Identity(), Started: t.started.UTC().Format(time.RFC3339),
	})
}

// serveEvents streams the live fragments as server-sent events: the
// latest of each at once, then each change.
func (t *Tower) serveEvents(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	ch, stop := t.hub.subscribe()
	defer stop()
	if _, err := fmt.Fprint(w, "retry: 2000\n\n"); err != nil {
		return
	}
	if err := rc.Flush(); err != nil {
		return
	}
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		var err error
		select {
		case <-r.Context().Done():
			return
		case e, ok := <-ch:
			if !ok {
				return
			}
			err = writeEvent(w, e)
		case <-keepalive.C:
			_, err = fmt.Fprint(w, ": keepalive\n\n")
		}
		if err == nil {
			err = rc.Flush()
		}
		if err != nil {
			return
		}
	}
}

// writeEvent writes one event, a data line per line of the fragment.
func writeEvent(w http.ResponseWriter, e sseEvent) error {
	var b bytes.Buffer
	b.WriteString("event: ")
	b.WriteString(e.name)
	b.WriteByte('\n')
	for line := range bytes.Lines(e.data) {
		b.WriteString("data: ")
		b.Write(bytes.TrimRight(line, "\r\n"))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	_, err := w.Write(b.Bytes())
	return err
}

// errorView is a fragment saying what went wrong.
type errorView struct{ Message string }

func (t *Tower) badRequest(w http.ResponseWriter, err error) {
	t.writeFragment(w, http.StatusBadRequest, "error", errorView{Message: err.Error()})
}

var errBody = errors.New("the request body is not the JSON expected")
