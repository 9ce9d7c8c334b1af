package bertrpc

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/warrenrpc/warren/bert"
)

// Client is one BERT-RPC connection. It sends one request at a time
// (concurrent calls are serialised) and keeps the connection open between
// calls; [Call] is the one-connection-per-call form Ernie's clients use.
type Client struct {
	mu  sync.Mutex
	c   net.Conn
	br  *bufio.Reader
	max int
}

// Dial connects to a BERT-RPC server at addr (host:port).
func Dial(ctx context.Context, addr string) (*Client, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("bertrpc: dial %s: %w", addr, err)
	}
	return &Client{c: c, br: bufio.NewReader(c), max: DefaultMaxPacket}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.c.Close() }

// Call sends {call, Module, Function, Args} and returns the reply's
// result. An error reply is returned as an *[Error].
func (c *Client) Call(ctx context.Context, module, function string, args ...any) (any, error) {
	return c.do(ctx, nil, "call", module, function, args)
}

// CallLow is Call preceded by {info, priority, [low]}: the request goes to
// the server's low-priority queue.
func (c *Client) CallLow(ctx context.Context, module, function string, args ...any) (any, error) {
	info := bert.Tuple{bert.Atom("info"), bert.Atom("priority"), bert.List{bert.Atom("low")}}
	return c.do(ctx, info, "call", module, function, args)
}

// Cast sends {cast, Module, Function, Args} and waits for the server's
// {noreply}; the function runs after that.
func (c *Client) Cast(ctx context.Context, module, function string, args ...any) error {
	_, err := c.do(ctx, nil, "cast", module, function, args)
	return err
}

func (c *Client) do(ctx context.Context, info bert.Tuple, kind, module, function string, args []any) (any, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if args == nil {
		args = []any{}
	}
	req, err := bert.Marshal(bert.Tuple{bert.Atom(kind), bert.Atom(module), bert.Atom(function), bert.List(args)})
	if err != nil {
		return nil, fmt.Errorf("bertrpc: encode request: %w", err)
	}
	// The connection's deadline is moved to the past when ctx ends, so
	// ctx.Err() is set whenever I/O fails because of it.
	_ = c.c.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { _ = c.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var out []byte
	if info != nil {
		b, err := bert.Marshal(info)
		if err != nil {
			return nil, fmt.Errorf("bertrpc: encode info: %w", err)
		}
		out = appendFrame(out, b)
	}
	out = appendFrame(out, req)
	if _, err := c.c.Write(out); err != nil {
		return nil, c.ioErr(ctx, err)
	}
	payload, ferr := readFrame(c.br, c.max)
	if ferr != nil {
		if ferr.err != nil {
			return nil, ferr.err
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("bertrpc: %s %s:%s: %w", kind, module, function, err)
		}
		return nil, fmt.Errorf("bertrpc: %s %s:%s: connection closed before the reply", kind, module, function)
	}
	term, err := bert.Unmarshal(payload)
	if err != nil {
		return nil, fmt.Errorf("bertrpc: decode reply: %w", err)
	}
	return decodeReply(term)
}

func (c *Client) ioErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("bertrpc: %w", cerr)
	}
	return fmt.Errorf("bertrpc: %w", err)
}

func appendFrame(dst, payload []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	return append(dst, payload...)
}

func decodeReply(term any) (any, error) {
	t, ok := term.(bert.Tuple)
	if !ok || len(t) == 0 {
		return nil, fmt.Errorf("bertrpc: unexpected reply %s", bert.Format(term))
	}
	switch t[0] {
	case bert.Atom("reply"):
		if len(t) == 2 {
			return t[1], nil
		}
	case bert.Atom("noreply"):
		return nil, nil
	case bert.Atom("error"):
		if len(t) == 2 {
			return nil, errorFromTerm(t[1])
		}
	}
	return nil, fmt.Errorf("bertrpc: unexpected reply %s", bert.Format(term))
}

// Call dials addr, makes one call and closes the connection: one
// connection per call, as Ernie's clients (the bertrpc gem) do.
func Call(ctx context.Context, addr, module, function string, args ...any) (any, error) {
	c, err := Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Call(ctx, module, function, args...)
}

// IsErrorType reports whether err is an *[Error] of type t.
func IsErrorType(err error, t ErrorType) bool {
	var e *Error
	return errors.As(err, &e) && e.Type == t
}
