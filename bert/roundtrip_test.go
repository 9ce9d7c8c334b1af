package bert

import (
	"bytes"
	"math"
	"math/big"
	"math/rand/v2"
	"testing"
	"time"
)

// randTerm returns a random value of the types Unmarshal produces, so
// that Unmarshal(Marshal(v)) must give v back exactly.
func randTerm(r *rand.Rand, depth int) any {
	kinds := 17
	if depth >= 6 {
		kinds = 11 // scalars only
	}
	switch r.IntN(kinds) {
	case 0:
		return r.IntN(256)
	case 1:
		return int(int32(r.Uint32()))
	case 2:
		return int(r.Uint64())
	case 3:
		z := new(big.Int).SetUint64(r.Uint64() | 1<<63)
		z.Lsh(z, uint(r.IntN(300)))
		if r.IntN(2) == 0 {
			z.Neg(z)
		}
		return z
	case 4:
		for {
			f := math.Float64frombits(r.Uint64())
			if !math.IsNaN(f) && !math.IsInf(f, 0) {
				return f
			}
		}
	case 5:
		return float64(r.IntN(2000)-1000) / 8
	case 6:
		b := make([]byte, r.IntN(20))
		for i := range b {
			b[i] = byte('a' + r.IntN(26))
		}
		return Atom(b)
	case 7:
		b := make([]byte, r.IntN(40))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	case 8:
		b := make([]byte, 1+r.IntN(40))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return Charlist(b)
	case 9:
		switch r.IntN(3) {
		case 0:
			return nil
		case 1:
			return true
		}
		return false
	case 10:
		return time.Unix(r.Int64N(1e11), r.Int64N(1e6)*1000).UTC()
	case 11, 12:
		t := make(Tuple, r.IntN(5))
		for i := range t {
			t[i] = randTerm(r, depth+1)
		}
		return t
	case 13, 14:
		l := make(List, r.IntN(5))
		for i := range l {
			l[i] = randTerm(r, depth+1)
		}
		return l
	case 15:
		d := make(Dict, r.IntN(4))
		for i := range d {
			d[i] = KV{randTerm(r, depth+3), randTerm(r, depth+3)}
		}
		return d
	default:
		opts := make(List, r.IntN(3))
		for i := range opts {
			opts[i] = randTerm(r, depth+2)
		}
		src := make([]byte, r.IntN(10))
		for i := range src {
			src[i] = byte(r.Uint32())
		}
		return Regex{Source: string(src), Options: opts}
	}
}

func TestRoundTripProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	n := 3000
	if testing.Short() {
		n = 300
	}
	for i := range n {
		v := randTerm(r, 0)
		b, err := Marshal(v)
		if err != nil {
			t.Fatalf("case %d: Marshal(%s): %v", i, Format(v), err)
		}
		got, err := Unmarshal(b)
		if err != nil {
			t.Fatalf("case %d: Unmarshal(Marshal(%s)): %v", i, Format(v), err)
		}
		if !sameTerm(got, v) || !Equal(got, v) {
			t.Fatalf("case %d: round trip of %s gave %s", i, Format(v), Format(got))
		}
		again, err := Marshal(got)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("case %d: re-encoding %s differs: %v", i, Format(v), err)
		}
	}
}
