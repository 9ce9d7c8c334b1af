package bert

import (
	"bytes"
	"math"
	"math/big"
	"reflect"
	"time"
)

// maxCanonDepth stops Equal and Format on cyclic Go values.
const maxCanonDepth = 10_000

// unsupportedValue stands in canonical trees for a Go value Marshal cannot
// encode.
type unsupportedValue struct{ t reflect.Type }

// canon converts v to its canonical term tree: what Unmarshal(Marshal(v))
// would give, except that the complex types stay in their tuple form and
// Charlist and Map are kept. The tree holds only int, *big.Int (not
// fitting int), float64, Atom, []byte, Charlist, Tuple, List, Map and
// unsupportedValue.
func canon(v any, depth int) any {
	if depth > maxCanonDepth {
		return unsupportedValue{reflect.TypeOf(v)}
	}
	switch v := v.(type) {
	case nil:
		return complexTuple("nil")
	case bool:
		if v {
			return complexTuple("true")
		}
		return complexTuple("false")
	case int:
		return v
	case int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64, uintptr:
		return canonReflect(reflect.ValueOf(v), depth)
	case *big.Int:
		if v == nil {
			return unsupportedValue{reflect.TypeOf(v)}
		}
		return normBig(v)
	case float64:
		return v
	case float32:
		return float64(v)
	case Atom, []byte, Charlist:
		return v
	case string:
		return []byte(v)
	case Tuple:
		t := make(Tuple, len(v))
		for i, e := range v {
			t[i] = canon(e, depth+1)
		}
		return t
	case List:
		return canonList(v, depth)
	case []any:
		return canonList(v, depth)
	case Dict:
		return canonDict(v, depth)
	case map[string]any:
		return canonDict(sortedDict(v), depth)
	case Regex:
		return Tuple{Atom("bert"), Atom("regex"), []byte(v.Source), canonList(v.Options, depth+1)}
	case *Regex:
		if v == nil {
			return unsupportedValue{reflect.TypeOf(v)}
		}
		return canon(*v, depth)
	case time.Time:
		s := v.Unix()
		return Tuple{Atom("bert"), Atom("time"), int(s / 1_000_000), int(s % 1_000_000), v.Nanosecond() / 1000}
	case Map:
		m := make(Map, len(v))
		for i, kv := range v {
			m[i] = KV{Key: canon(kv.Key, depth+1), Value: canon(kv.Value, depth+1)}
		}
		return m
	case unsupportedValue:
		return v
	}
	return canonReflect(reflect.ValueOf(v), depth)
}

func canonReflect(rv reflect.Value, depth int) any {
	switch rv.Kind() {
	case reflect.Bool:
		return canon(rv.Bool(), depth)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return normBig(big.NewInt(rv.Int()))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return normBig(new(big.Int).SetUint64(rv.Uint()))
	case reflect.Float32, reflect.Float64:
		return rv.Float()
	case reflect.String:
		return []byte(rv.String())
	case reflect.Slice:
		if rv.Type().Elem().Kind() == reflect.Uint8 {
			return rv.Bytes()
		}
		l := make(List, rv.Len())
		for i := range l {
			l[i] = canon(rv.Index(i).Interface(), depth+1)
		}
		return l
	case reflect.Map:
		if rv.Type().Key().Kind() != reflect.String {
			break
		}
		return canonDict(reflectDict(rv), depth)
	case reflect.Invalid:
		return complexTuple("nil")
	}
	return unsupportedValue{rv.Type()}
}

func normBig(z *big.Int) any {
	if z.IsInt64() && z.Int64() >= math.MinInt && z.Int64() <= math.MaxInt {
		return int(z.Int64())
	}
	return z
}

func complexTuple(name Atom) Tuple { return Tuple{Atom("bert"), name} }

func canonList(v []any, depth int) List {
	l := make(List, len(v))
	for i, e := range v {
		l[i] = canon(e, depth+1)
	}
	return l
}

func canonDict(d Dict, depth int) Tuple {
	l := make(List, len(d))
	for i, kv := range d {
		l[i] = Tuple{canon(kv.Key, depth+3), canon(kv.Value, depth+3)}
	}
	return Tuple{Atom("bert"), Atom("dict"), l}
}

// Equal reports whether a and b are the same term, that is whether they
// encode to equal Erlang terms (Erlang's =:=). Go conveniences compare
// equal to what they encode to: int64(1) equals 1, "x" equals []byte("x"),
// nil equals Tuple{Atom("bert"), Atom("nil")}, and a Charlist equals the
// List of its byte values, as "ab" =:= [97,98] in Erlang. Integers and
// floats are never equal to each other; floats compare bit for bit. Dict
// entries compare in order; Map entries in any order. Values Marshal
// cannot encode are equal to nothing.
func Equal(a, b any) bool {
	return eq(canon(a, 0), canon(b, 0))
}

func eq(a, b any) bool {
	switch a := a.(type) {
	case int:
		b, ok := b.(int)
		return ok && a == b
	case *big.Int:
		b, ok := b.(*big.Int)
		return ok && a.Cmp(b) == 0
	case float64:
		b, ok := b.(float64)
		return ok && math.Float64bits(a) == math.Float64bits(b)
	case Atom:
		b, ok := b.(Atom)
		return ok && a == b
	case []byte:
		b, ok := b.([]byte)
		return ok && bytes.Equal(a, b)
	case Tuple:
		b, ok := b.(Tuple)
		if !ok || len(a) != len(b) {
			return false
		}
		for i := range a {
			if !eq(a[i], b[i]) {
				return false
			}
		}
		return true
	case List, Charlist:
		return eqList(a, b)
	case Map:
		b, ok := b.(Map)
		if !ok || len(a) != len(b) {
			return false
		}
		used := make([]bool, len(b))
	next:
		for _, x := range a {
			for j, y := range b {
				if !used[j] && eq(x.Key, y.Key) && eq(x.Value, y.Value) {
					used[j] = true
					continue next
				}
			}
			return false
		}
		return true
	}
	return false
}

func eqList(a, b any) bool {
	ca, aIsChars := a.(Charlist)
	cb, bIsChars := b.(Charlist)
	if aIsChars && bIsChars {
		return ca == cb
	}
	la, aIsList := a.(List)
	lb, bIsList := b.(List)
	switch {
	case aIsList && bIsList:
		if len(la) != len(lb) {
			return false
		}
		for i := range la {
			if !eq(la[i], lb[i]) {
				return false
			}
		}
		return true
	case aIsChars && bIsList:
		return charsEqList(ca, lb)
	case aIsList && bIsChars:
		return charsEqList(cb, la)
	}
	return false
}

func charsEqList(c Charlist, l List) bool {
	if len(c) != len(l) {
		return false
	}
	for i := range l {
		if n, ok := l[i].(int); !ok || n != int(c[i]) {
			return false
		}
	}
	return true
}
