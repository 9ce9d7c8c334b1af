package bert

import (
	"errors"
	"io"
)

var errNotImplemented = errors.New("bert: not implemented yet")

// Marshal encodes v as a BERT (version byte 131 followed by the term).
func Marshal(v any) ([]byte, error) { return nil, errNotImplemented }

// Unmarshal decodes one BERT with [DefaultLimits].
func Unmarshal(data []byte) (any, error) { return UnmarshalLimits(data, Limits{}) }

// UnmarshalLimits decodes one BERT within lim.
func UnmarshalLimits(data []byte, lim Limits) (any, error) { return nil, errNotImplemented }

// Equal reports whether a and b are the same term.
func Equal(a, b any) bool { return false }

// Format renders v in Erlang-like text.
func Format(v any) string { return "" }

// ReadPacket reads one BERP.
func ReadPacket(r io.Reader, max int) ([]byte, error) { return nil, errNotImplemented }

// WritePacket writes one BERP.
func WritePacket(w io.Writer, payload []byte) error { return errNotImplemented }
