package bert

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// smallPacket is the size up to which ReadPacket allocates the whole
// payload at once; longer payloads grow as bytes actually arrive, so a
// lying length header costs no memory.
const smallPacket = 64 << 10

// ReadPacket reads one BERP: a 4-byte big-endian length and that many
// bytes of payload (normally a BERT, passed to [Unmarshal] by the caller).
// A max of 0 or less means [DefaultMaxSize].
//
// It returns io.EOF when r ends cleanly before a header,
// io.ErrUnexpectedEOF when r ends inside a packet, and an error wrapping
// [ErrTooLarge] when the length exceeds max (the payload is then left
// unread, so the stream cannot be used further).
func ReadPacket(r io.Reader, max int) ([]byte, error) {
	if max <= 0 {
		max = DefaultMaxSize
	}
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err // io.EOF before any byte, io.ErrUnexpectedEOF inside
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if uint64(n) > uint64(max) {
		return nil, fmt.Errorf("%w: length %d exceeds maximum %d", ErrTooLarge, n, max)
	}
	if n <= smallPacket {
		p := make([]byte, n)
		if _, err := io.ReadFull(r, p); err != nil {
			return nil, noEOF(err)
		}
		return p, nil
	}
	var buf bytes.Buffer
	buf.Grow(smallPacket)
	got, err := io.CopyN(&buf, r, int64(n))
	if got == int64(n) {
		return buf.Bytes(), nil
	}
	return nil, noEOF(err)
}

// noEOF turns io.EOF inside a packet into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// WritePacket writes payload as one BERP (4-byte big-endian length, then
// the payload) with a single Write call.
func WritePacket(w io.Writer, payload []byte) error {
	if uint64(len(payload)) > math.MaxUint32 {
		return fmt.Errorf("%w: payload of %d bytes does not fit a 4-byte length", ErrTooLarge, len(payload))
	}
	p := make([]byte, 4+len(payload))
	binary.BigEndian.PutUint32(p, uint32(len(payload)))
	copy(p[4:], payload)
	_, err := w.Write(p)
	return err
}
