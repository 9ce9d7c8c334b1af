package bert

import (
	"errors"
	"fmt"
)

var (
	// ErrMalformed is wrapped by every error about input that is not valid
	// BERT. The concrete error is a [*DecodeError] that says what is wrong
	// and at which byte offset.
	ErrMalformed = errors.New("malformed term")
	// ErrLimit is wrapped by errors about input that exceeds a [Limits]
	// value. The concrete error is a [*DecodeError].
	ErrLimit = errors.New("limit exceeded")
	// ErrTooLarge is returned (wrapped) by [ReadPacket] when a packet's
	// length header exceeds the allowed maximum, and by [WritePacket] when
	// a payload does not fit the 4-byte length header.
	ErrTooLarge = errors.New("berp: packet too large")
	// ErrUnsupported is wrapped by [Marshal] errors for values it cannot
	// encode, including [Map] (maps are not BERT) and non-finite floats.
	ErrUnsupported = errors.New("bert: unsupported value")
)

// DecodeError describes why [Unmarshal] refused its input.
type DecodeError struct {
	// Offset is the byte offset in the input (the version byte is 0) of
	// the term or field that is wrong.
	Offset int
	// Reason says what is wrong, for example "LIST_EXT length 4294967295
	// exceeds remaining input (3 bytes)".
	Reason string
	// Kind is ErrMalformed or ErrLimit.
	Kind error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("bert: %v at offset %d: %s", e.Kind, e.Offset, e.Reason)
}

// Unwrap returns Kind, so errors.Is(err, ErrMalformed) works.
func (e *DecodeError) Unwrap() error { return e.Kind }
