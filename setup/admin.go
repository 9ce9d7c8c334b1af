package setup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Admin is a client of the RabbitMQ management HTTP API (the
// rabbitmq_management plugin), authenticated as a user tagged
// administrator.
type Admin struct {
	base     *url.URL
	user     string
	password string
	hc       *http.Client
}

// ErrNotFound is returned (wrapped) for an object the API does not know.
var ErrNotFound = errors.New("setup: not found")

// APIError is an error answer of the management API.
type APIError struct {
	Method, Path string
	Status       int
	Reason       string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("setup: %s %s: HTTP %d: %s", e.Method, e.Path, e.Status, e.Reason)
}

// Is makes errors.Is(err, ErrNotFound) true for a 404.
func (e *APIError) Is(target error) bool {
	return target == ErrNotFound && e.Status == http.StatusNotFound
}

// NewAdmin returns a client of the management API at baseURL (e.g.
// http://127.0.0.1:15672). hc nil means a client with a 30s timeout.
func NewAdmin(baseURL, user, password string, hc *http.Client) (*Admin, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil {
		return nil, fmt.Errorf("setup: admin URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("setup: admin URL %q: want http(s)://host:port", baseURL)
	}
	if u.User != nil {
		return nil, fmt.Errorf("setup: admin URL %q: put no credentials in the URL", u.Redacted())
	}
	if user == "" {
		return nil, errors.New("setup: empty admin user")
	}
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return &Admin{base: u, user: user, password: password, hc: hc}, nil
}

// path joins escaped segments under /api.
func apiPath(segs ...string) string {
	var b strings.Builder
	b.WriteString("/api")
	for _, s := range segs {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}

// do sends a request; in, when non-nil, is sent as JSON; out, when non-nil,
// receives the JSON answer.
func (a *Admin) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base.String()+path, body)
	if err != nil {
		return err
	}
	req.SetBasicAuth(a.user, a.password)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("setup: %s %s: %w (is the rabbitmq_management plugin enabled? rabbitmq-plugins enable rabbitmq_management)", method, path, err)
		}
		return fmt.Errorf("setup: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("setup: %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		reason := strings.TrimSpace(string(data))
		var e struct{ Error, Reason string }
		if json.Unmarshal(data, &e) == nil && (e.Reason != "" || e.Error != "") {
			reason = strings.TrimSpace(e.Error + ": " + e.Reason)
		}
		if resp.StatusCode == http.StatusUnauthorized {
			reason += fmt.Sprintf(" (is %q an administrator, and its password right?)", a.user)
		}
		return &APIError{Method: method, Path: path, Status: resp.StatusCode, Reason: reason}
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("setup: %s %s: decoding answer: %w", method, path, err)
		}
	}
	return nil
}

// Overview checks that the API answers and the credentials work, and
// returns the RabbitMQ version.
func (a *Admin) Overview(ctx context.Context) (string, error) {
	var o struct {
		RabbitMQVersion string `json:"rabbitmq_version"`
	}
	if err := a.do(ctx, http.MethodGet, "/api/overview", nil, &o); err != nil {
		return "", err
	}
	return o.RabbitMQVersion, nil
}

// DeleteVHost deletes a virtual host and everything in it; a missing one is
// not an error.
func (a *Admin) DeleteVHost(ctx context.Context, name string) error {
	err := a.do(ctx, http.MethodDelete, apiPath("vhosts", name), nil, nil)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// DeleteUser deletes a user; a missing one is not an error.
func (a *Admin) DeleteUser(ctx context.Context, name string) error {
	err := a.do(ctx, http.MethodDelete, apiPath("users", name), nil, nil)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// userInfo is GET /api/users/{name}.
type userInfo struct {
	Name             string          `json:"name"`
	PasswordHash     string          `json:"password_hash"`
	HashingAlgorithm string          `json:"hashing_algorithm"`
	Tags             json.RawMessage `json:"tags"` // a list (3.9+) or a comma-separated string
}

func (u userInfo) tags() []string {
	var list []string
	if json.Unmarshal(u.Tags, &list) == nil {
		return list
	}
	var s string
	if json.Unmarshal(u.Tags, &s) == nil && s != "" {
		return strings.Split(s, ",")
	}
	return nil
}

// exchangeInfo is GET /api/exchanges/{vhost}/{name}, and the PUT body.
type exchangeInfo struct {
	Type       string         `json:"type"`
	Durable    bool           `json:"durable"`
	AutoDelete bool           `json:"auto_delete"`
	Internal   bool           `json:"internal"`
	Arguments  map[string]any `json:"arguments"`
}

// queueInfo is GET /api/queues/{vhost}/{name}, and the PUT body.
type queueInfo struct {
	Durable    bool           `json:"durable"`
	AutoDelete bool           `json:"auto_delete"`
	Exclusive  bool           `json:"exclusive,omitempty"`
	Arguments  map[string]any `json:"arguments"`
}
