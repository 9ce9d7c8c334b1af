package bert

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
)

func TestPacketRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	payloads := [][]byte{{}, []byte("x"), bytes.Repeat([]byte("ab"), 100_000)}
	for _, p := range payloads {
		if err := WritePacket(&buf, p); err != nil {
			t.Fatal(err)
		}
	}
	// One byte at a time, to exercise short reads.
	r := iotest.OneByteReader(&buf)
	for i, want := range payloads {
		got, err := ReadPacket(r, 1<<20)
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("packet %d: got %d bytes, want %d", i, len(got), len(want))
		}
	}
	if _, err := ReadPacket(r, 1<<20); err != io.EOF {
		t.Fatalf("after the last packet: err = %v, want io.EOF", err)
	}
}

func TestWritePacketHeader(t *testing.T) {
	var buf bytes.Buffer
	if err := WritePacket(&buf, make([]byte, 20)); err != nil {
		t.Fatal(err)
	}
	// The BERP example from the spec: a 20-byte BERT gets header 0,0,0,20.
	if got := buf.Bytes()[:4]; !bytes.Equal(got, []byte{0, 0, 0, 20}) {
		t.Fatalf("header % x", got)
	}
	if buf.Len() != 24 {
		t.Fatalf("packet is %d bytes, want 24", buf.Len())
	}
}

type countingWriter struct{ writes int }

func (w *countingWriter) Write(p []byte) (int, error) { w.writes++; return len(p), nil }

func TestWritePacketSingleWrite(t *testing.T) {
	var w countingWriter
	if err := WritePacket(&w, []byte("abc")); err != nil {
		t.Fatal(err)
	}
	if w.writes != 1 {
		t.Fatalf("%d writes, want 1", w.writes)
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

func TestWritePacketError(t *testing.T) {
	boom := errors.New("boom")
	if err := WritePacket(failingWriter{boom}, []byte("x")); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
}

func TestReadPacketErrors(t *testing.T) {
	cases := []struct {
		name string
		in   string
		max  int
		want error
	}{
		{"empty stream", "", 10, io.EOF},
		{"partial header", "\x00\x00", 10, io.ErrUnexpectedEOF},
		{"partial payload", "\x00\x00\x00\x05abc", 10, io.ErrUnexpectedEOF},
		{"partial large payload", "\x00\x10\x00\x00abc", 1 << 21, io.ErrUnexpectedEOF},
		{"too large", "\x00\x00\x00\x0babcdefghijk", 10, ErrTooLarge},
		{"4 GiB", "\xff\xff\xff\xff", 1 << 20, ErrTooLarge},
		{"default max", "\x7f\xff\xff\xff", 0, ErrTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := ReadPacket(strings.NewReader(c.in), c.max)
			if !errors.Is(err, c.want) {
				t.Fatalf("ReadPacket = %q, %v; want %v", p, err, c.want)
			}
		})
	}
}

func TestReadPacketErrorFromReader(t *testing.T) {
	boom := errors.New("boom")
	r := io.MultiReader(strings.NewReader("\x00\x00\x00\x05ab"), iotest.ErrReader(boom))
	if _, err := ReadPacket(r, 10); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
}

func TestReadPacketExactMax(t *testing.T) {
	p, err := ReadPacket(strings.NewReader("\x00\x00\x00\x03abc"), 3)
	if err != nil || string(p) != "abc" {
		t.Fatalf("ReadPacket = %q, %v", p, err)
	}
}

// TestReadPacketLyingHeader checks that a header announcing a large
// packet does not make ReadPacket allocate it before the bytes arrive.
func TestReadPacketLyingHeader(t *testing.T) {
	in := "\x01\x00\x00\x00abc" // claims 16 MiB
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := ReadPacket(strings.NewReader(in), 1<<30)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Fatalf("allocated %d bytes for a 7-byte input", n)
	}
}
