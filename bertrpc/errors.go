package bertrpc

import (
	"errors"
	"fmt"

	"github.com/warrenrpc/warren/bert"
)

// ErrorType is the first element of a BERT-RPC error tuple.
type ErrorType string

// The four error types of the BERT-RPC specification.
const (
	ProtocolError ErrorType = "protocol"
	ServerError   ErrorType = "server"
	UserError     ErrorType = "user"
	ProxyError    ErrorType = "proxy"
)

// Error codes of the BERT-RPC specification. Code 0 is "undesignated" for
// every type.
const (
	CodeUndesignated = 0
	// Protocol error codes.
	CodeNoHeader = 1 // unable to read the 4-byte length header
	CodeNoData   = 2 // unable to read the data the header announced
	// Server error codes.
	CodeNoModule   = 1 // no such module
	CodeNoFunction = 2 // no such function
)

// ErrHalting is the detail of the server error sent for requests that arrive
// on a kept-open connection after a halt began.
var ErrHalting = errors.New("bertrpc: server is halting")

// Error is a BERT-RPC error reply:
//
//	{error, {Type, Code, Class, Detail, Backtrace}}
//
// Native handlers return an *Error to choose what the client sees; any other
// error becomes a user error of class "RuntimeError" (as Ernie's native
// handlers report failures). [Client] calls return *Error for error replies.
type Error struct {
	Type      ErrorType
	Code      int
	Class     string
	Detail    string
	Backtrace []string
}

// Error renders the error in one line.
func (e *Error) Error() string {
	return fmt.Sprintf("bertrpc: %s error %d (%s): %s", e.Type, e.Code, e.Class, e.Detail)
}

// Is matches another *Error with the same Type and Code, so
// errors.Is(err, &bertrpc.Error{Type: bertrpc.ServerError, Code: bertrpc.CodeNoModule})
// works.
func (e *Error) Is(target error) bool {
	var t *Error
	if !errors.As(target, &t) {
		return false
	}
	return t.Type == e.Type && t.Code == e.Code
}

// term is the reply term {error, {Type, Code, Class, Detail, Backtrace}}.
func (e *Error) term() bert.Tuple {
	bt := make(bert.List, 0, len(e.Backtrace))
	for _, l := range e.Backtrace {
		bt = append(bt, []byte(l))
	}
	return bert.Tuple{bert.Atom("error"), bert.Tuple{
		bert.Atom(e.Type), e.Code, []byte(e.Class), []byte(e.Detail), bt,
	}}
}

// errorFromTerm reads the second element of an error reply. Ernie itself
// sends the details as a list rather than a tuple, and its Ruby workers
// sometimes send only three elements: all of these are accepted.
func errorFromTerm(v any) *Error {
	var parts []any
	switch t := v.(type) {
	case bert.Tuple:
		parts = t
	case bert.List:
		parts = t
	default:
		return &Error{Type: ProtocolError, Class: "ProtocolError", Detail: "malformed error reply: " + bert.Format(v)}
	}
	e := &Error{}
	if len(parts) > 0 {
		e.Type = ErrorType(textOf(parts[0]))
	}
	if len(parts) > 1 {
		if n, ok := parts[1].(int); ok {
			e.Code = n
		}
	}
	if len(parts) > 2 {
		e.Class = textOf(parts[2])
	}
	if len(parts) > 3 {
		e.Detail = textOf(parts[3])
	}
	if len(parts) > 4 {
		if l, ok := parts[4].(bert.List); ok {
			for _, x := range l {
				e.Backtrace = append(e.Backtrace, textOf(x))
			}
		}
	}
	return e
}

// textOf renders atoms, binaries and strings as text, anything else in
// Erlang syntax.
func textOf(v any) string {
	switch s := v.(type) {
	case bert.Atom:
		return string(s)
	case []byte:
		return string(s)
	case bert.Charlist:
		return string(s)
	case string:
		return s
	}
	return bert.Format(v)
}

func protocolErr(code int, format string, args ...any) *Error {
	return &Error{Type: ProtocolError, Code: code, Class: "ProtocolError", Detail: fmt.Sprintf(format, args...)}
}

func serverErr(code int, class, format string, args ...any) *Error {
	return &Error{Type: ServerError, Code: code, Class: class, Detail: fmt.Sprintf(format, args...)}
}
