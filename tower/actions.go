package tower

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/warrenrpc/warren/dlq"
	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/wire"
)

// maxForm bounds the body of an action (a payload to send included).
const maxForm = 1 << 20

// maxTimeout bounds how long one send from the page waits.
const maxTimeout = 2 * time.Minute

// sendForm is what the Send page posts.
type sendForm struct {
	Kind     string `json:"kind"` // request or push
	Path     string `json:"path"`
	Payload  string `json:"payload"`  // JSON text; "" means null
	Selector string `json:"selector"` // least_loaded, all, random, round_robin
	Target   string `json:"target"`   // an agent identity, overrides the selector
	Tags     string `json:"tags"`     // comma or space separated
	Timeout  string `json:"timeout"`  // a Go duration; "" means 5s
}

type sendView struct {
	Kind      string
	Path      string
	Selector  string
	Took      string
	Pushed    bool
	Error     string // the call as a whole failed
	ErrorCode string
	Replies   []replyRow
	Codes     []codeCount
	OK        int
}

type replyRow struct {
	Agent   string
	OK      bool
	Result  string
	Code    string
	Message string
}

func decodeJSON(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return fmt.Errorf("%w: Content-Type must be application/json", errBody)
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, maxForm))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", errBody, err)
	}
	return nil
}

// parse checks the form and returns the call's options and payload.
func (f *sendForm) parse() ([]mapper.CallOption, json.RawMessage, time.Duration, error) {
	if f.Kind != "request" && f.Kind != "push" {
		return nil, nil, 0, fmt.Errorf("kind %q: want request or push", f.Kind)
	}
	if err := wire.CheckPath(f.Path); err != nil {
		return nil, nil, 0, err
	}
	payload := strings.TrimSpace(f.Payload)
	if payload == "" {
		payload = "null"
	}
	if !json.Valid([]byte(payload)) {
		return nil, nil, 0, errors.New(`the payload is not JSON (quote strings: "hi")`)
	}
	timeout := 5 * time.Second
	if f.Timeout != "" {
		d, err := time.ParseDuration(f.Timeout)
		if err != nil || d <= 0 || d > maxTimeout {
			return nil, nil, 0, fmt.Errorf("timeout %q: want a duration from 1ms to %v", f.Timeout, maxTimeout)
		}
		timeout = d
	}
	if f.Selector == "" {
		f.Selector = "least_loaded"
	}
	var sel mapper.Selector
	if f.Target = strings.TrimSpace(f.Target); f.Target != "" {
		if err := wire.CheckIdentity(f.Target); err != nil {
			return nil, nil, 0, fmt.Errorf("target: %w", err)
		}
		sel = mapper.Identity(f.Target)
		f.Selector = "agent:" + f.Target // one agent: not a fan-out
	} else {
		s, err := mapper.ParseSelector(f.Selector)
		if err != nil {
			return nil, nil, 0, err
		}
		sel = s
	}
	opts := []mapper.CallOption{mapper.Select(sel)}
	if tags := strings.FieldsFunc(f.Tags, func(r rune) bool { return r == ',' || r == ' ' }); len(tags) > 0 {
		opts = append(opts, mapper.WithTags(tags...))
	}
	return opts, json.RawMessage(payload), timeout, nil
}

// serveSend sends a request, fan-out or push from the Send page and shows
// every responder's result.
func (t *Tower) serveSend(w http.ResponseWriter, r *http.Request) {
	var f sendForm
	if err := decodeJSON(r, &f); err != nil {
		t.badRequest(w, err)
		return
	}
	opts, payload, timeout, err := f.parse()
	if err != nil {
		t.badRequest(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	kind := f.Kind
	if kind == "request" && f.Selector == "all" {
		kind = "fanout"
	}
	label := t.pathLabel(f.Path)
	t.metrics.requests.WithLabelValues(label, kind).Inc()
	t.metrics.inFlight.Inc()
	v := sendView{Kind: kind, Path: f.Path, Selector: f.Selector}
	// Progress is written as it comes, each report a fragment of its own,
	// before the result (the page shows the response as it streams).
	var mu sync.Mutex
	rc := http.NewResponseController(w)
	started := false
	if kind != "push" {
		opts = append(opts, mapper.OnProgress(func(p mapper.Progress) {
			b, err := t.render("progress", progressOf(p))
			if err != nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if !started {
				w.Header().Set("Content-Type", "text/html; charset=utf-8")
				w.WriteHeader(http.StatusOK)
				started = true
			}
			_, _ = w.Write(b)
			_ = rc.Flush()
		}))
	}
	start := time.Now()
	var codes []string
	switch kind {
	case "push":
		err = t.m.Push(ctx, f.Path, payload, opts...)
		v.Pushed = err == nil
	case "fanout":
		var rs mapper.Results
		rs, err = t.m.FanOut(ctx, f.Path, payload, opts...)
		for _, id := range slices.Sorted(maps.Keys(rs)) {
			row := replyOf(rs[id])
			row.Agent = id
			v.Replies = append(v.Replies, row)
		}
	default:
		var rep *mapper.Reply
		rep, err = t.m.Request(ctx, f.Path, payload, opts...)
		if rep != nil {
			// A reply, failed or not, is the agent's: shown as its row.
			v.Replies = append(v.Replies, replyOf(rep))
			err = nil
		}
	}
	took := time.Since(start)
	t.metrics.inFlight.Dec()
	t.metrics.latency.WithLabelValues(label, kind).Observe(took.Seconds())
	v.Took = roundDuration(took)
	if err != nil {
		v.ErrorCode = mapper.ErrorCode(err)
		v.Error = err.Error()
		codes = append(codes, v.ErrorCode)
	}
	for _, rep := range v.Replies {
		if rep.OK {
			v.OK++
		} else {
			codes = append(codes, rep.Code)
		}
	}
	for _, c := range codes {
		t.metrics.errors.WithLabelValues(label, c).Inc()
	}
	v.Codes = countCodes(codes)
	t.state.observe(f.Path, took, len(codes) > 0, time.Now())
	mu.Lock()
	defer mu.Unlock()
	if !started {
		t.writeFragment(w, http.StatusOK, "send", v)
		return
	}
	b, err := t.render("send", v)
	if err != nil {
		t.log.Error("render", "template", "send", "err", err)
		return
	}
	_, _ = w.Write(b)
}

type progressView struct {
	Agent, Key string
	Percent    string // a fraction, as a percentage
	Value      string // anything else, as JSON
	Seq        int64
}

// progressOf shows a progress report: a fraction (a number with a
// decimal point from 0 to 1) as a percentage, else its JSON.
func progressOf(p mapper.Progress) progressView {
	v := progressView{Agent: p.Agent, Key: p.Key, Seq: p.Seq}
	var f float64
	if json.Unmarshal(p.Value, &f) == nil && f >= 0 && f <= 1 && strings.ContainsRune(string(p.Value), '.') {
		v.Percent = strconv.FormatFloat(100*f, 'f', 0, 64) + "%"
		return v
	}
	v.Value = shorten(jsonText(json.RawMessage(p.Value)), 2000)
	return v
}

func replyOf(rep *mapper.Reply) replyRow {
	row := replyRow{Agent: rep.Agent}
	if rep.Err != nil {
		row.Code = mapper.ErrorCode(rep.Err)
		row.Message = shorten(rep.Err.Error(), 2000)
		var re *wire.RemoteError
		if errors.As(rep.Err, &re) {
			row.Message = shorten(re.Message, 2000)
		}
		return row
	}
	row.OK = true
	row.Result = prettyJSON(rep.Body)
	return row
}

// pathLabel is path as a metric label: the path when a live agent serves
// it, else "other", so that made-up paths cannot grow the metrics.
func (t *Tower) pathLabel(path string) string {
	for _, a := range t.m.Agents() {
		if a.Serves(path) {
			return path
		}
	}
	return "other"
}

// dlqTimeout bounds one dead-letter operation from the page.
const dlqTimeout = time.Minute

// maxLetters is how many dead letters the page lists at most.
const maxLetters = 200

type dlqView struct {
	Letters []letterRow
	Error   string
	Path    string
	Reason  string
	Max     int
}

type letterRow struct {
	ID        string
	Reason    string
	Error     string
	Path      string
	From      string
	Agent     string
	Type      string
	Exchange  string
	Key       string
	Queue     string
	Count     int64
	Time      string
	Size      int
	Malformed string
	Body      string
}

func rowOf(l dlq.Letter) letterRow {
	row := letterRow{
		ID: l.MessageID, Reason: l.Reason, Error: shorten(l.Error, 2000), Path: l.Path, From: l.From, Agent: l.Agent,
		Type: l.Type, Exchange: l.Exchange, Key: l.Key, Queue: l.Queue, Count: l.Count, Size: len(l.Body),
		Malformed: l.Malformed,
	}
	if !l.Time.IsZero() {
		row.Time = l.Time.UTC().Format(time.RFC3339)
	}
	return row
}

func (t *Tower) dlqOptions() []dlq.Option {
	if t.cfg.DLQHold > 0 {
		return []dlq.Option{dlq.Hold(t.cfg.DLQHold)}
	}
	return nil
}

// serveDLQList lists dead letters (at most maxLetters), filtered by the
// path and reason query parameters. Listing leaves them in place.
func (t *Tower) serveDLQList(w http.ResponseWriter, r *http.Request) {
	path, reason := r.URL.Query().Get("path"), r.URL.Query().Get("reason")
	ctx, cancel := context.WithTimeout(r.Context(), dlqTimeout)
	defer cancel()
	ls, err := dlq.List(ctx, t.tr, maxLetters, func(l dlq.Letter) bool {
		return (path == "" || l.Path == path) && (reason == "" || l.Reason == reason)
	}, t.dlqOptions()...)
	v := dlqView{Path: path, Reason: reason, Max: maxLetters}
	for _, l := range ls {
		v.Letters = append(v.Letters, rowOf(l))
	}
	if err != nil {
		v.Error = err.Error()
	}
	t.writeFragment(w, http.StatusOK, "dlq", v)
}

// serveDLQShow shows one dead letter, body included.
func (t *Tower) serveDLQShow(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	if id == "" {
		t.badRequest(w, errors.New("which dead letter? (id)"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), dlqTimeout)
	defer cancel()
	l, err := dlq.Show(ctx, t.tr, id, t.dlqOptions()...)
	if err != nil {
		status := http.StatusInternalServerError
		if errors.Is(err, dlq.ErrNotFound) {
			status = http.StatusNotFound
		}
		t.writeFragment(w, status, "error", errorView{Message: err.Error()})
		return
	}
	row := rowOf(l)
	row.Body = prettyJSON(l.Body)
	t.writeFragment(w, http.StatusOK, "letter", row)
}

// dlqAction is what the Dead letters page posts to replay or purge.
type dlqAction struct {
	IDs    []string `json:"ids"`
	All    bool     `json:"all"`
	Path   string   `json:"path"`
	Reason string   `json:"reason"`
}

type actionView struct {
	Op     string
	Count  int
	Errors []string
}

// serveDLQAction replays or purges the dead letters named, or all that
// match the filter.
func (t *Tower) serveDLQAction(w http.ResponseWriter, r *http.Request) {
	op := "replay"
	if strings.HasSuffix(r.URL.Path, "/purge") {
		op = "purge"
	}
	var a dlqAction
	if err := decodeJSON(r, &a); err != nil {
		t.badRequest(w, err)
		return
	}
	if len(a.IDs) == 0 && !a.All {
		t.badRequest(w, errors.New("name dead letters, or ask for all"))
		return
	}
	found := map[string]bool{}
	match := func(l dlq.Letter) bool {
		ok := (len(a.IDs) == 0 || slices.Contains(a.IDs, l.MessageID)) &&
			(a.Path == "" || l.Path == a.Path) && (a.Reason == "" || l.Reason == a.Reason)
		if ok {
			found[l.MessageID] = true
		}
		return ok
	}
	ctx, cancel := context.WithTimeout(r.Context(), dlqTimeout)
	defer cancel()
	var n int
	var err error
	if op == "replay" {
		n, err = dlq.Replay(ctx, t.tr, match, t.dlqOptions()...)
	} else {
		n, err = dlq.Purge(ctx, t.tr, match, t.dlqOptions()...)
	}
	t.metrics.dlqOps.WithLabelValues(op).Add(float64(n))
	t.log.Info("dead letters "+op, "count", n, "err", err)
	v := actionView{Op: op, Count: n}
	if err != nil {
		for _, e := range splitJoined(err) {
			v.Errors = append(v.Errors, e.Error())
		}
	}
	for _, id := range a.IDs {
		if !found[id] {
			v.Errors = append(v.Errors, fmt.Sprintf("%v %q", dlq.ErrNotFound, id))
		}
	}
	t.writeFragment(w, http.StatusOK, "action", v)
}

// splitJoined returns the errors an errors.Join holds, or err alone.
func splitJoined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
