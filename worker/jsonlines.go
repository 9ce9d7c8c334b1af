package worker

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"time"
)

// JSONLines is the line protocol of docs/plugins.md: the daemon writes one
// request per line on the worker's stdin,
//
//	{"id":"7","method":"upcase","params":"hi","deadline":"2026-12-05T10:00:05Z","timeout_ms":5000}
//
// and reads one reply per line on its stdout, with the same id:
//
//	{"id":"7","result":"HI"}
//	{"id":"7","error":{"code":"bad_input","message":"want a string"}}
//
// The worker's stderr is logged.
type JSONLines struct{}

// Name returns "jsonlines".
func (JSONLines) Name() string { return "jsonlines" }

// Attach gives cmd a pipe on stdin and one on stdout.
func (JSONLines) Attach(cmd *exec.Cmd, maxMessage int) (Conn, error) {
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
	cmd.Stdin, cmd.Stdout = inR, outW
	return &lineConn{in: inW, out: outR, childIn: inR, childOut: outW, r: bufio.NewReaderSize(outR, 64<<10), max: maxMessage}, nil
}

type lineConn struct {
	in, out           *os.File
	childIn, childOut *os.File
	r                 *bufio.Reader
	max               int
	buf               bytes.Buffer
}

func (c *lineConn) Started() {
	c.childIn.Close()
	c.childOut.Close()
}

// lineRequest is the request line; the field order is the documented one.
type lineRequest struct {
	ID        string          `json:"id"`
	Method    string          `json:"method"`
	Params    json.RawMessage `json:"params"`
	Deadline  string          `json:"deadline,omitempty"`
	TimeoutMS int64           `json:"timeout_ms,omitempty"`
	Push      bool            `json:"push,omitempty"`
	From      string          `json:"from,omitempty"`
}

func (c *lineConn) Exchange(req *Request) (json.RawMessage, error) {
	lr := lineRequest{ID: req.ID, Method: req.Method, Params: req.Params, Push: req.Push, From: req.From}
	if len(lr.Params) == 0 {
		lr.Params = json.RawMessage("null")
	}
	if !req.Deadline.IsZero() {
		lr.Deadline = req.Deadline.UTC().Format(time.RFC3339Nano)
		lr.TimeoutMS = max(time.Until(req.Deadline).Milliseconds(), 1)
	}
	c.buf.Reset()
	enc := json.NewEncoder(&c.buf) // Encode ends the line; it escapes no newline into it
	enc.SetEscapeHTML(false)
	if err := enc.Encode(lr); err != nil {
		return nil, &Error{"bad_request", "params are not JSON: " + err.Error()}
	}
	if err := c.in.SetWriteDeadline(req.Deadline); err != nil {
		return nil, err
	}
	if err := c.out.SetReadDeadline(req.Deadline); err != nil {
		return nil, err
	}
	if _, err := c.in.Write(c.buf.Bytes()); err != nil {
		return nil, err
	}
	line, err := c.readLine()
	if err != nil {
		return nil, err
	}
	return parseReply(line, req.ID)
}

// readLine reads one line of at most max bytes.
func (c *lineConn) readLine() ([]byte, error) {
	var line []byte
	for {
		chunk, err := c.r.ReadSlice('\n')
		if len(line)+len(chunk) > c.max {
			return nil, fmt.Errorf("%w: a line longer than %d bytes", ErrMalformed, c.max)
		}
		line = append(line, chunk...)
		switch {
		case err == nil:
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return nil, fmt.Errorf("%w: output ended inside a line", ErrMalformed)
		default:
			return nil, err
		}
	}
}

// parseReply reads a reply line to the request with this id.
func parseReply(line []byte, id string) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(line, &m); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return nil, fmt.Errorf("%w: not JSON (%v at byte %d)", ErrMalformed, syn, syn.Offset)
		}
		return nil, fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	var got string
	if err := json.Unmarshal(m["id"], &got); err != nil || got != id {
		return nil, fmt.Errorf("%w: the reply's id is not the request's %q", ErrMalformed, id)
	}
	if e, ok := m["error"]; ok && !bytes.Equal(e, []byte("null")) {
		return nil, parseError(e)
	}
	res, ok := m["result"]
	if !ok {
		return nil, fmt.Errorf("%w: the reply has neither result nor error", ErrMalformed)
	}
	return res, nil
}

// parseError reads an error reply: a string, or {"code":..., "message":...}.
func parseError(raw json.RawMessage) *Error {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return &Error{CodeWorker, s}
	}
	var e struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &e) != nil || e.Message == "" {
		e.Message = string(raw)
	}
	if !validCode(e.Code) {
		e.Code = CodeWorker
	}
	return &Error{e.Code, e.Message}
}

// validCode accepts the codes a worker may choose: 1 to 64 of a-z, 0-9, _ . -
func validCode(c string) bool {
	if c == "" || len(c) > 64 {
		return false
	}
	for _, r := range c {
		if !('a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '_' || r == '.' || r == '-') {
			return false
		}
	}
	return true
}

func (c *lineConn) Interrupt() {
	past := time.Unix(1, 0)
	_ = c.in.SetWriteDeadline(past)
	_ = c.out.SetReadDeadline(past)
}

func (c *lineConn) CloseInput() { c.in.Close() }

func (c *lineConn) Close() {
	c.in.Close()
	c.out.Close()
	c.childIn.Close()
	c.childOut.Close()
}

// lineLog logs a worker's stderr line by line and keeps its last lines.
type lineLog struct {
	log *slog.Logger

	mu      sync.Mutex
	partial []byte
	last    []string
}

const keepLines = 5

func newLineLog(log *slog.Logger) *lineLog { return &lineLog{log: log} }

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.emit(string(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
	if len(l.partial) > 4096 {
		l.emit(string(l.partial))
		l.partial = nil
	}
	return len(p), nil
}

func (l *lineLog) emit(s string) {
	l.log.Info("worker stderr", "line", s) // slog quotes it: no terminal escapes
	l.last = append(l.last, s)
	if len(l.last) > keepLines {
		l.last = l.last[1:]
	}
}

// tail returns the last lines the worker wrote on stderr.
func (l *lineLog) tail() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.last...)
}
