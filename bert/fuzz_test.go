package bert

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// fuzzSeeds returns every valid and malformed encoding the table tests use.
func fuzzSeeds(t testing.TB) [][]byte {
	var seeds [][]byte
	for _, c := range decodeCases {
		seeds = append(seeds, c.in)
	}
	for _, c := range encodeCases {
		seeds = append(seeds, c.want)
	}
	for _, v := range []any{
		Tuple{Atom("call"), Atom("mod"), Atom("fun"), []any{1, "x", 2.5, nil, true, Dict{{"k", List{}}}}},
		Tuple{Atom("reply"), Tuple{Atom("xy"), 600, 800}},
		Tuple{Atom("info"), Atom("priority"), List{Tuple{Atom("priority"), Atom("low")}}},
	} {
		b, err := Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	seeds = append(seeds, nested(DefaultMaxDepth+1))
	return seeds
}

// FuzzUnmarshal checks that no input panics, that errors are typed, and
// that whatever decodes and re-encodes survives a second round trip.
func FuzzUnmarshal(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, lim := range []Limits{{}, {MaxDepth: 3, MaxElements: 50, MaxAtomLen: 8, MaxBigLen: 9}} {
			v, err := UnmarshalLimits(data, lim)
			if err != nil {
				var de *DecodeError
				if !errors.As(err, &de) || !(errors.Is(err, ErrMalformed) || errors.Is(err, ErrLimit)) {
					t.Fatalf("untyped error %T: %v", err, err)
				}
				if de.Offset < 0 || de.Offset > len(data) {
					t.Fatalf("offset %d outside input of %d bytes", de.Offset, len(data))
				}
				continue
			}
			_ = Format(v)
			if !Equal(v, v) {
				t.Fatalf("%s is not Equal to itself", Format(v))
			}
			b, err := Marshal(v)
			if err != nil {
				if !errors.Is(err, ErrUnsupported) {
					t.Fatalf("Marshal(%s): untyped error %v", Format(v), err)
				}
				continue // maps, long UTF-8 atoms
			}
			back, err := Unmarshal(b)
			if err != nil {
				t.Fatalf("Unmarshal(Marshal(%s)): %v", Format(v), err)
			}
			if !sameTerm(back, v) {
				t.Fatalf("round trip of %s gave %s", Format(v), Format(back))
			}
		}
	})
}

// FuzzReadPacket reads packets from an arbitrary stream and checks that
// what it returns re-frames to the bytes it consumed.
func FuzzReadPacket(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		var buf bytes.Buffer
		_ = WritePacket(&buf, s)
		_ = WritePacket(&buf, s)
		f.Add(buf.Bytes(), 1024)
	}
	f.Add([]byte("\x00\x00\x00\x00"), 0)
	f.Add([]byte("\xff\xff\xff\xff"), 1<<20)
	f.Add([]byte("\x00\x01\x00\x00abc"), 1<<20)
	f.Add([]byte("\x00\x00"), 10)
	f.Fuzz(func(t *testing.T, stream []byte, max int) {
		if max > 1<<20 {
			max = 1 << 20 // keep the fuzzer's memory small
		}
		limit := max
		if limit <= 0 {
			limit = DefaultMaxSize
		}
		r := bytes.NewReader(stream)
		var again bytes.Buffer
		for {
			p, err := ReadPacket(r, max)
			if err != nil {
				if err == io.EOF && r.Len() != 0 {
					t.Fatalf("io.EOF with %d bytes unread", r.Len())
				}
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrTooLarge) {
					t.Fatalf("unexpected error %v", err)
				}
				break
			}
			if len(p) > limit {
				t.Fatalf("packet of %d bytes exceeds max %d", len(p), limit)
			}
			if err := WritePacket(&again, p); err != nil {
				t.Fatal(err)
			}
			_, _ = Unmarshal(p)
		}
		if consumed := len(stream) - r.Len(); !bytes.HasPrefix(stream[:consumed], again.Bytes()) {
			t.Fatalf("re-framed packets differ from the stream")
		}
	})
}
