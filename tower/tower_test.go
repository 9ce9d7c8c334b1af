package tower_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/simple"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/tower"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

// fixture is a Tower on an embedded broker, served by httptest.
type fixture struct {
	b   *mem.Broker
	tw  *tower.Tower
	srv *httptest.Server
}

func newFixture(t *testing.T, cfg tower.Config) *fixture {
	t.Helper()
	f := &fixture{b: mem.NewBroker()}
	tr := f.b.Connect()
	t.Cleanup(func() { tr.Close() })
	cfg.Update = 50 * time.Millisecond
	tw, err := tower.New(tr, cfg, tower.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	f.tw = tw
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tw.Run(ctx) }()
	f.srv = httptest.NewServer(tw.Handler())
	t.Cleanup(func() {
		f.srv.CloseClientConnections()
		f.srv.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-tw.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	return f
}

// agent runs an agent serving /simple/* with status; the returned stop
// unregisters it.
func (f *fixture) agent(t *testing.T, id string, status any, tags ...string) (stop func()) {
	t.Helper()
	tr := f.b.Connect()
	a, err := agent.New(tr, agent.Config{Identity: id, Tags: tags, PingInterval: 50 * time.Millisecond},
		agent.WithStatus(func() any { return status }), agent.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Expose("simple", simple.Simple{Identity: id}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			<-done
			tr.Close()
		})
	}
	t.Cleanup(stop)
	return stop
}

func (f *fixture) get(t *testing.T, path string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	return do(t, req)
}

func do(t *testing.T, req *http.Request) (int, string) {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var csrfRE = regexp.MustCompile(`name="warren-csrf" content="([0-9a-f]+)"`)

func (f *fixture) csrf(t *testing.T) string {
	t.Helper()
	code, page := f.get(t, "/")
	m := csrfRE.FindStringSubmatch(page)
	if code != 200 || m == nil {
		t.Fatalf("page %d without a CSRF token: %.200s", code, page)
	}
	return m[1]
}

func (f *fixture) post(t *testing.T, path, csrf string, body any) (int, string) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, err := http.NewRequest(http.MethodPost, f.srv.URL+path, strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if csrf != "" {
		req.Header.Set("X-Warren-CSRF", csrf)
	}
	return do(t, req)
}

// events reads the server-sent events of the Tower and keeps the latest
// fragment of each name.
type events struct {
	mu     sync.Mutex
	latest map[string]string
	ended  error
	notify chan struct{}
}

func (f *fixture) events(t *testing.T) *events {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+"/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("events Content-Type %q", ct)
	}
	e := &events{latest: map[string]string{}, notify: make(chan struct{}, 1)}
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); resp.Body.Close(); <-done })
	signal := func() {
		select {
		case e.notify <- struct{}{}:
		default:
		}
	}
	go func() {
		defer close(done)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		var name string
		var data []string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if name != "" {
					e.mu.Lock()
					e.latest[name] = strings.Join(data, "\n")
					e.mu.Unlock()
					signal()
				}
				name, data = "", nil
			case strings.HasPrefix(line, "event: "):
				name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				data = append(data, strings.TrimPrefix(line, "data: "))
			}
		}
		e.mu.Lock()
		e.ended = fmt.Errorf("event stream ended: %v", sc.Err())
		e.mu.Unlock()
		signal()
	}()
	return e
}

// wait waits until the latest fragment named name satisfies ok.
func (e *events) wait(t *testing.T, name string, ok func(string) bool) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		e.mu.Lock()
		last, ended := e.latest[name], e.ended
		e.mu.Unlock()
		if ok(last) {
			return last
		}
		if ended != nil {
			t.Fatal(ended)
		}
		select {
		case <-e.notify:
		case <-timeout:
			t.Fatalf("no %q fragment as wanted within 10s; last: %.1000s", name, last)
		}
	}
}

func has(subs ...string) func(string) bool {
	return func(s string) bool {
		for _, sub := range subs {
			if !strings.Contains(s, sub) {
				return false
			}
		}
		return true
	}
}

func TestCheckAddr(t *testing.T) {
	for _, c := range []struct {
		addr string
		cfg  tower.Config
		ok   bool
	}{
		{"127.0.0.1:4000", tower.Config{}, true},
		{"localhost:4000", tower.Config{}, true},
		{"[::1]:4000", tower.Config{}, true},
		{":4000", tower.Config{}, false},
		{"0.0.0.0:4000", tower.Config{}, false},
		{"192.0.2.1:4000", tower.Config{}, false},
		{"example.com:4000", tower.Config{}, false},
		{":4000", tower.Config{Token: "t"}, true},
		{":4000", tower.Config{User: "u", Password: "p"}, true},
		{":4000", tower.Config{User: "u"}, false},
	} {
		err := tower.CheckAddr(c.addr, c.cfg)
		if (err == nil) != c.ok {
			t.Errorf("CheckAddr(%q, %+v) = %v", c.addr, c.cfg, err)
		}
		if !c.ok && c.cfg.User == "" && !errors.Is(err, tower.ErrNoAuth) {
			t.Errorf("CheckAddr(%q): %v, want ErrNoAuth", c.addr, err)
		}
	}
}

func TestTokenAuth(t *testing.T) {
	f := newFixture(t, tower.Config{Token: "s3cret-token"})
	for _, p := range []string{"/", "/events", "/metrics", "/api/dlq", "/static/app.js"} {
		if code, _ := f.get(t, p); code != http.StatusUnauthorized {
			t.Errorf("GET %s without the token: %d", p, code)
		}
	}
	if code, _ := f.get(t, "/?token=wrong"); code != http.StatusUnauthorized {
		t.Errorf("wrong token: %d", code)
	}
	if code, _ := f.get(t, "/metrics", "Authorization", "Bearer s3cret-token"); code != 200 {
		t.Errorf("bearer: %d", code)
	}
	// ?token= sets a cookie and sends the page to a URL without it.
	req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/?token=s3cret-token", nil)
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Fatalf("?token=: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	cookies := resp.Cookies()
	if len(cookies) != 1 || !cookies[0].HttpOnly || cookies[0].SameSite != http.SameSiteStrictMode || strings.Contains(cookies[0].Value, "s3cret") {
		t.Fatalf("cookie %+v", cookies)
	}
	code, page := f.get(t, "/", "Cookie", cookies[0].Name+"="+cookies[0].Value)
	if code != 200 || !strings.Contains(page, "Warren Control Tower") {
		t.Fatalf("with the cookie: %d", code)
	}
	if strings.Contains(page, "s3cret-token") {
		t.Fatal("the page shows the token")
	}
}

func TestBasicAuth(t *testing.T) {
	f := newFixture(t, tower.Config{User: "ops", Password: "pa55word"})
	req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/", nil)
	code, _ := do(t, req)
	if code != http.StatusUnauthorized {
		t.Fatalf("no credentials: %d", code)
	}
	req.SetBasicAuth("ops", "wrong")
	if code, _ := do(t, req); code != http.StatusUnauthorized {
		t.Fatalf("wrong password: %d", code)
	}
	req.SetBasicAuth("ops", "pa55word")
	if code, _ := do(t, req); code != 200 {
		t.Fatalf("right password: %d", code)
	}
}

// TestLoopbackOnlyWithoutAuth: without authentication the Tower answers
// only requests addressed to a loopback name, so a web page cannot reach
// it by pointing its own DNS name at 127.0.0.1.
func TestLoopbackOnlyWithoutAuth(t *testing.T) {
	f := newFixture(t, tower.Config{})
	if code, _ := f.get(t, "/", "Host", "rebind.example.com"); code != http.StatusForbidden {
		t.Fatalf("Host rebind.example.com: %d", code)
	}
	u, _ := url.Parse(f.srv.URL)
	if code, _ := f.get(t, "/", "Host", "localhost:"+u.Port()); code != 200 {
		t.Fatalf("Host localhost: %d", code)
	}
}

func TestCSRF(t *testing.T) {
	f := newFixture(t, tower.Config{})
	f.agent(t, "fred", 1.0)
	body := map[string]string{"kind": "push", "path": "/simple/echo", "payload": `"x"`}
	if code, text := f.post(t, "/api/send", "", body); code != http.StatusForbidden {
		t.Fatalf("no CSRF token: %d %s", code, text)
	}
	if code, _ := f.post(t, "/api/send", "0123", body); code != http.StatusForbidden {
		t.Fatalf("wrong CSRF token: %d", code)
	}
	if code, _ := f.post(t, "/api/dlq/purge", "", map[string]any{"all": true}); code != http.StatusForbidden {
		t.Fatalf("purge without CSRF token: %d", code)
	}
	tok := f.csrf(t)
	// A cross-site request is refused even with the token.
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/api/send", strings.NewReader(string(b)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Warren-CSRF", tok)
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	if code, _ := do(t, req); code != http.StatusForbidden {
		t.Fatalf("cross-site: %d", code)
	}
	// A form post (no JSON) is refused too.
	req, _ = http.NewRequest(http.MethodPost, f.srv.URL+"/api/send", strings.NewReader("kind=push"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Warren-CSRF", tok)
	if code, _ := do(t, req); code != http.StatusBadRequest {
		t.Fatalf("form post: %d", code)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		code, text := f.post(t, "/api/send", tok, body)
		if code != 200 || !strings.Contains(text, "pushed") {
			return fmt.Errorf("%d %s", code, text)
		}
		return nil
	})
}

// TestLiveAgentsAndEscaping: the pages get agents, services, joins and
// drops by server-sent events, and every remote string is escaped.
func TestLiveAgentsAndEscaping(t *testing.T) {
	f := newFixture(t, tower.Config{})
	ev := f.events(t)
	evil := `<script>alert("x")</script>`
	f.agent(t, "fred", 0.5, "blue")
	stopBob := f.agent(t, "bob", evil)
	html := ev.wait(t, "agents", has(`data-agent="fred"`, `data-agent="bob"`))
	if strings.Contains(html, "<script>") || !strings.Contains(html, "&lt;script&gt;") {
		t.Fatalf("status not escaped: %s", html)
	}
	if !strings.Contains(html, `<span class="tag">blue</span>`) || !strings.Contains(html, "/simple/echo") {
		t.Fatalf("tags or services missing: %s", html)
	}
	ev.wait(t, "agents", has(`<polyline points=`))      // fred's numeric status is charted
	ev.wait(t, "agents", has(`<td class="num">0</td>`)) // in flight and handled, from the heartbeat
	ev.wait(t, "services", has(`data-path="/simple/echo"`, `>bob<`, `>fred<`))
	stopBob()
	ev.wait(t, "events", has("bob</span> left"))
	ev.wait(t, "agents", func(s string) bool { return !strings.Contains(s, `data-agent="bob"`) })
}

// TestSend sends a fan-out, a failing request and one to a path nobody
// serves, and reads every responder's result and the errors by code; the
// Services page and /metrics count them.
func TestSend(t *testing.T) {
	f := newFixture(t, tower.Config{})
	f.agent(t, "fred", 1.0)
	f.agent(t, "bob", 2.0)
	tok := f.csrf(t)
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := len(f.tw.Mapper().Agents()); n != 2 {
			return fmt.Errorf("%d agents", n)
		}
		return nil
	})
	payload := `"<img src=x onerror=alert(1)>"`
	code, text := f.post(t, "/api/send", tok, map[string]string{"kind": "request", "path": "/simple/echo", "payload": payload, "selector": "all"})
	if code != 200 || !has(`data-agent="fred"`, `data-agent="bob"`, "2 ok")(text) || strings.Contains(text, "<img") {
		t.Fatalf("fan-out: %d %s", code, text)
	}
	code, text = f.post(t, "/api/send", tok, map[string]string{"kind": "request", "path": "/simple/fail", "payload": `"boom"`, "target": "bob"})
	if code != 200 || !has(`data-agent="bob"`, "handler_error ×1", "boom")(text) {
		t.Fatalf("failure: %d %s", code, text)
	}
	code, text = f.post(t, "/api/send", tok, map[string]string{"kind": "request", "path": "/nobody/here", "timeout": "2s"})
	if code != 200 || !has("no_agent ×1")(text) {
		t.Fatalf("no agent: %d %s", code, text)
	}
	code, text = f.post(t, "/api/send", tok, map[string]string{"kind": "request", "path": "no-slash"})
	if code != http.StatusBadRequest {
		t.Fatalf("bad path: %d %s", code, text)
	}
	code, text = f.post(t, "/api/send", tok, map[string]string{"kind": "request", "path": "/simple/echo", "payload": "{not json"})
	if code != http.StatusBadRequest || !strings.Contains(text, "not JSON") {
		t.Fatalf("bad payload: %d %s", code, text)
	}

	_, metrics := f.get(t, "/metrics")
	for _, want := range []string{
		`warren_tower_requests_total{kind="fanout",path="/simple/echo"} 1`,
		`warren_tower_requests_total{kind="request",path="/simple/fail"} 1`,
		`warren_tower_requests_total{kind="request",path="other"} 1`,
		`warren_tower_request_errors_total{code="handler_error",path="/simple/fail"} 1`,
		`warren_tower_request_errors_total{code="no_agent",path="other"} 1`,
		`warren_tower_request_duration_seconds_count{kind="fanout",path="/simple/echo"} 1`,
		`warren_tower_requests_in_flight 0`,
		`warren_registry_agents 2`,
		`warren_registry_events_total{event="joined"} 2`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	ev := f.events(t)
	ev.wait(t, "services", has(`data-path="/simple/fail"`, `<td>1</td><td>1</td>`))
}

// TestDeadLetters lists, shows, replays and purges dead letters from the
// page.
func TestDeadLetters(t *testing.T) {
	f := newFixture(t, tower.Config{})
	tok := f.csrf(t)
	tr := f.b.Connect()
	defer tr.Close()
	ctx := t.Context()
	if err := wire.Topology(ctx, tr); err != nil {
		t.Fatal(err)
	}
	q, err := tr.DeclareQueue(ctx, transport.Queue{Name: "tower-test.replayed"})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"letter-1", "letter-2"} {
		msg := transport.Message{Type: wire.TypePush, MessageID: id, AppID: "tester", Body: []byte(`{"n":"<b>1</b>"}`), Headers: map[string]any{
			wire.HeaderPath: "/x/y", wire.HeaderReason: "test_reason", wire.HeaderError: "it <i>failed</i>",
			wire.HeaderOriginalExchange: "", wire.HeaderOriginalRoutingKey: q,
		}}
		if err := tr.Publish(ctx, wire.DeadLetterExchange, "", msg, transport.PublishOptions{Confirm: true}); err != nil {
			t.Fatal(err)
		}
	}
	code, text := f.get(t, "/api/dlq?path=/x/y")
	if code != 200 || !has(`data-id="letter-1"`, `data-id="letter-2"`, "test_reason", "it &lt;i&gt;failed&lt;/i&gt;", "2 dead letters")(text) {
		t.Fatalf("list: %d %s", code, text)
	}
	code, text = f.get(t, "/api/dlq/show?id=letter-1")
	if code != 200 || !has(`&#34;n&#34;: &#34;\u003cb\u003e1\u003c/b\u003e&#34;`)(text) && !has("&lt;b&gt;1&lt;/b&gt;")(text) {
		t.Fatalf("show: %d %s", code, text)
	}
	if code, _ := f.get(t, "/api/dlq/show?id=nope"); code != http.StatusNotFound {
		t.Fatalf("show unknown: %d", code)
	}
	code, text = f.post(t, "/api/dlq/replay", tok, map[string]any{"ids": []string{"letter-1"}})
	if code != 200 || !strings.Contains(text, `data-count="1"`) {
		t.Fatalf("replay: %d %s", code, text)
	}
	ds, err := tr.Consume(ctx, q, transport.ConsumeOptions{AutoAck: true})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-ds:
		if d.MessageID != "letter-1" {
			t.Fatalf("replayed %q", d.MessageID)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the replayed letter did not arrive")
	}
	code, text = f.post(t, "/api/dlq/purge", tok, map[string]any{"all": true, "path": "/x/y"})
	if code != 200 || !strings.Contains(text, `data-count="1"`) {
		t.Fatalf("purge: %d %s", code, text)
	}
	code, text = f.post(t, "/api/dlq/replay", tok, map[string]any{"ids": []string{"letter-2"}})
	if code != 200 || !has(`data-count="0"`, "no dead letter")(text) {
		t.Fatalf("replay purged: %d %s", code, text)
	}
	if _, m := f.get(t, "/metrics"); !has(`warren_tower_dead_letters_total{op="purge"} 1`, `warren_tower_dead_letters_total{op="replay"} 1`)(m) {
		t.Fatal("dead-letter metrics")
	}
}

// TestSendProgress: the progress a handler reports reaches the page before
// the result, in the same response.
func TestSendProgress(t *testing.T) {
	f := newFixture(t, tower.Config{})
	tr := f.b.Connect()
	defer tr.Close()
	a, err := agent.New(tr, agent.Config{Identity: "worker", PingInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	err = a.Handle("/job/run", agent.Func(func(ctx context.Context, n int) (string, error) {
		if err := agent.Progress(ctx, "", 0.5); err != nil {
			return "", err
		}
		if err := agent.Progress(ctx, "files", map[string]any{"done": 1, "total": n, "name": "<b>x</b>"}); err != nil {
			return "", err
		}
		return "done", nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	tok := f.csrf(t)
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := len(f.tw.Mapper().Agents()); n != 1 {
			return fmt.Errorf("%d agents", n)
		}
		return nil
	})
	code, text := f.post(t, "/api/send", tok, map[string]string{"kind": "request", "path": "/job/run", "payload": "2"})
	if code != 200 {
		t.Fatalf("%d %s", code, text)
	}
	p1 := strings.Index(text, `data-seq="1"`)
	p2 := strings.Index(text, `data-seq="2"`)
	res := strings.Index(text, `<div class="result">`)
	if p1 < 0 || p2 < p1 || res < p2 || !has("50%", "files", "name", `&#34;done&#34;`)(text) || strings.Contains(text, "<b>") {
		t.Fatalf("progress then result wanted:\n%s", text)
	}
}
