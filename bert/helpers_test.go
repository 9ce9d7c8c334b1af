package bert

import (
	"math/big"
	"reflect"
	"testing"
)

// sameTerm reports whether got has exactly the Go types of want at every
// level and Equal values: stricter than Equal, which treats conveniences
// and complex types as their wire forms.
func sameTerm(got, want any) bool {
	if reflect.TypeOf(got) != reflect.TypeOf(want) {
		return false
	}
	switch w := want.(type) {
	case Tuple:
		return sameSlice(got.(Tuple), w)
	case List:
		return sameSlice(got.(List), w)
	case Dict:
		g := got.(Dict)
		if len(g) != len(w) {
			return false
		}
		for i := range w {
			if !sameTerm(g[i].Key, w[i].Key) || !sameTerm(g[i].Value, w[i].Value) {
				return false
			}
		}
		return true
	case Map:
		g := got.(Map)
		if len(g) != len(w) {
			return false
		}
		for i := range w {
			if !sameTerm(g[i].Key, w[i].Key) || !sameTerm(g[i].Value, w[i].Value) {
				return false
			}
		}
		return true
	case Regex:
		g := got.(Regex)
		return g.Source == w.Source && sameSlice(g.Options, w.Options)
	}
	return Equal(got, want)
}

func sameSlice(g, w []any) bool {
	if len(g) != len(w) {
		return false
	}
	for i := range w {
		if !sameTerm(g[i], w[i]) {
			return false
		}
	}
	return true
}

func bigInt(t testing.TB, s string) *big.Int {
	t.Helper()
	z, ok := new(big.Int).SetString(s, 10)
	if !ok {
		t.Fatalf("bad big int %q", s)
	}
	return z
}
