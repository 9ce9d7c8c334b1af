package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/warrenrpc/warren/bert"
	"github.com/warrenrpc/warren/bertrpc"
	"github.com/warrenrpc/warren/worker"
)

// Ernie is Ernie's external protocol (the one `warren bert` speaks to its
// workers): a request BERP on the worker's fd 3, {call, Module, Function,
// Args} or for a push {cast, ...}, and a reply BERP on its fd 4, {reply,
// Result}, {noreply} or {error, {Type, Code, Class, Detail, Backtrace}}.
// An unmodified Ernie handler (lib/ernie.rb and a module exposed with
// Ernie.expose) is a plugin.
//
// The request's JSON params become the arguments: an array is the argument
// list, anything else the only argument (objects become BERT dicts,
// strings binaries; bertrpc.JSONToTerm). The result goes back as JSON
// (bertrpc.TermToJSON). Ernie's protocol has no place for a deadline: the
// worker is killed when it passes.
type Ernie struct {
	// Module is the Ernie module called; the service name when empty.
	Module string
}

// Name returns "ernie".
func (Ernie) Name() string { return "ernie" }

// proclineLen is what Ernie pads a worker's command line to, with
// " --procline xxx…", so that the worker can rewrite its process title.
const proclineLen = 150

// Attach gives cmd fds 3 and 4 and Ernie's --procline argument.
func (e Ernie) Attach(cmd *exec.Cmd, maxMessage int) (worker.Conn, error) {
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
	cmd.ExtraFiles = []*os.File{inR, outW} // fd 3, fd 4
	line := strings.Join(cmd.Args, " ")
	pad := max(0, proclineLen-len(line)-len(" --procline "))
	if len(cmd.Args) == 3 && cmd.Args[0] == "/bin/sh" && cmd.Args[1] == "-c" {
		cmd.Args[2] += " --procline " + strings.Repeat("x", pad)
	} else {
		cmd.Args = append(cmd.Args, "--procline", strings.Repeat("x", pad))
	}
	return &ernieConn{module: bert.Atom(e.Module), in: inW, out: outR, childIn: inR, childOut: outW, max: maxMessage}, nil
}

type ernieConn struct {
	module            bert.Atom
	in, out           *os.File
	childIn, childOut *os.File
	max               int
}

func (c *ernieConn) Started() {
	c.childIn.Close()
	c.childOut.Close()
}

func (c *ernieConn) Exchange(req *worker.Request) (json.RawMessage, error) {
	args, err := jsonArgs(req.Params)
	if err != nil {
		return nil, &worker.Error{Code: "bad_request", Message: err.Error()}
	}
	kind := bert.Atom("call")
	if req.Push {
		kind = "cast"
	}
	payload, err := bert.Marshal(bert.Tuple{kind, c.module, bert.Atom(req.Method), args})
	if err != nil {
		return nil, &worker.Error{Code: "bad_request", Message: err.Error()}
	}
	if err := c.in.SetWriteDeadline(req.Deadline); err != nil {
		return nil, err
	}
	if err := c.out.SetReadDeadline(req.Deadline); err != nil {
		return nil, err
	}
	if err := bert.WritePacket(c.in, payload); err != nil {
		return nil, err
	}
	reply, err := bert.ReadPacket(c.out, c.max)
	if errors.Is(err, bert.ErrTooLarge) {
		return nil, fmt.Errorf("%w: a reply larger than %d bytes", worker.ErrMalformed, c.max)
	}
	if err != nil {
		return nil, err
	}
	return ernieReply(reply, c.max)
}

// jsonArgs maps params to an argument list.
func jsonArgs(params json.RawMessage) (bert.List, error) {
	p := bytes.TrimSpace(params)
	if len(p) == 0 || bytes.Equal(p, []byte("null")) {
		return bert.List{}, nil
	}
	v, err := bertrpc.JSONToTerm(p)
	if err != nil {
		return nil, err
	}
	if l, ok := v.(bert.List); ok && p[0] == '[' {
		return l, nil
	}
	return bert.List{v}, nil
}

// ernieReply reads a worker's reply BERP.
func ernieReply(b []byte, max int) (json.RawMessage, error) {
	v, err := bert.UnmarshalLimits(b, bert.Limits{MaxSize: max})
	if err != nil {
		return nil, fmt.Errorf("%w: not BERT (%v)", worker.ErrMalformed, err)
	}
	t, ok := v.(bert.Tuple)
	if !ok || len(t) == 0 {
		return nil, fmt.Errorf("%w: not {reply, _}, {noreply} or {error, _}", worker.ErrMalformed)
	}
	switch {
	case len(t) == 2 && t[0] == bert.Atom("reply"):
		res, err := bertrpc.TermToJSON(t[1])
		if err != nil {
			return nil, &worker.Error{Code: worker.CodeWorker, Message: "the result has no JSON form: " + err.Error()}
		}
		return res, nil
	case len(t) == 1 && t[0] == bert.Atom("noreply"):
		return json.RawMessage("null"), nil
	case len(t) == 2 && t[0] == bert.Atom("error"):
		return nil, ernieError(t[1])
	}
	return nil, fmt.Errorf("%w: not {reply, _}, {noreply} or {error, _}", worker.ErrMalformed)
}

// ernieError maps {Type, Code, Class, Detail, Backtrace} (or Ernie's
// shorter server errors) to the worker's error: handler_error, with
// "Class: Detail" as the message.
func ernieError(v any) *worker.Error {
	t, _ := v.(bert.Tuple)
	str := func(i int) string {
		if i >= len(t) {
			return ""
		}
		switch s := t[i].(type) {
		case []byte:
			return string(s)
		case bert.Atom:
			return string(s)
		case bert.Charlist:
			return string(s)
		}
		return bert.FormatLimit(t[i], 200)
	}
	msg := str(3)
	if c := str(2); c != "" && len(t) > 3 {
		msg = c + ": " + msg
	} else if len(t) == 3 {
		msg = str(2)
	}
	if msg == "" {
		msg = bert.FormatLimit(v, 200)
	}
	if str(0) == "server" || str(0) == "protocol" {
		msg = "ernie " + str(0) + " error: " + msg
	}
	return &worker.Error{Code: worker.CodeWorker, Message: msg}
}

func (c *ernieConn) Interrupt() {
	past := time.Unix(1, 0)
	_ = c.in.SetWriteDeadline(past)
	_ = c.out.SetReadDeadline(past)
}

func (c *ernieConn) CloseInput() { c.in.Close() }

func (c *ernieConn) Close() {
	c.in.Close()
	c.out.Close()
	c.childIn.Close()
	c.childOut.Close()
}
