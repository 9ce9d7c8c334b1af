package bert

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"slices"
	"strconv"
	"time"
)

// Marshal encodes v as a BERT: the version byte 131 followed by the term.
//
// It writes only the tags of the BERT specification, so that old clients
// such as the Ruby bert gem can read everything: FLOAT_EXT (99) for floats,
// ATOM_EXT (100) for atoms, SMALL_INTEGER_EXT, INTEGER_EXT, SMALL_BIG_EXT or
// LARGE_BIG_EXT for integers. See the package documentation for the Go
// types it accepts. Nesting deeper than [DefaultMaxDepth] (counted as
// [Unmarshal] counts it) is refused, so Marshal's output always decodes
// with the default limits as far as depth is concerned. Errors wrap
// [ErrUnsupported].
func Marshal(v any) ([]byte, error) {
	return AppendMarshal(make([]byte, 0, 128), v)
}

// AppendMarshal is [Marshal] appending to dst.
func AppendMarshal(dst []byte, v any) ([]byte, error) {
	e := encoder{buf: append(dst, tagVersion)}
	if err := e.term(v, 0); err != nil {
		return nil, err
	}
	return e.buf, nil
}

type encoder struct {
	buf []byte
}

func unsupported(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnsupported, fmt.Sprintf(format, args...))
}

func (e *encoder) enter(depth int) error {
	if depth >= DefaultMaxDepth {
		return unsupported("nesting deeper than %d", DefaultMaxDepth)
	}
	return nil
}

func (e *encoder) term(v any, depth int) error {
	switch v := v.(type) {
	case nil:
		return e.complexAtom("nil", depth)
	case bool:
		if v {
			return e.complexAtom("true", depth)
		}
		return e.complexAtom("false", depth)
	case int:
		e.int64(int64(v))
	case int8:
		e.int64(int64(v))
	case int16:
		e.int64(int64(v))
	case int32:
		e.int64(int64(v))
	case int64:
		e.int64(v)
	case uint:
		e.uint64(uint64(v))
	case uint8:
		e.uint64(uint64(v))
	case uint16:
		e.uint64(uint64(v))
	case uint32:
		e.uint64(uint64(v))
	case uint64:
		e.uint64(v)
	case uintptr:
		e.uint64(uint64(v))
	case *big.Int:
		if v == nil {
			return unsupported("nil *big.Int")
		}
		e.bigInt(v)
	case float64:
		return e.float(v)
	case float32:
		return e.float(float64(v))
	case Atom:
		return e.atom(v)
	case string:
		return e.binary([]byte(v))
	case []byte:
		return e.binary(v)
	case Charlist:
		return e.charlist(v, depth)
	case Tuple:
		return e.tuple(v, depth)
	case List:
		return e.list(v, depth)
	case []any:
		return e.list(v, depth)
	case Dict:
		return e.dict(v, depth)
	case map[string]any:
		return e.dict(sortedDict(v), depth)
	case Regex:
		return e.regex(v, depth)
	case *Regex:
		if v == nil {
			return unsupported("nil *Regex")
		}
		return e.regex(*v, depth)
	case time.Time:
		return e.time(v, depth)
	case Map:
		return unsupported("maps are not BERT (Map with %d entries)", len(v))
	default:
		return e.reflect(reflect.ValueOf(v), depth)
	}
	return nil
}

// reflect handles named types and typed slices and maps.
func (e *encoder) reflect(rv reflect.Value, depth int) error {
	switch rv.Kind() {
	case reflect.Bool:
		return e.term(rv.Bool(), depth)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		e.int64(rv.Int())
		return nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		e.uint64(rv.Uint())
		return nil
	case reflect.Float32, reflect.Float64:
		return e.float(rv.Float())
	case reflect.String:
		return e.binary([]byte(rv.String()))
	case reflect.Slice:
		if rv.Type().Elem().Kind() == reflect.Uint8 {
			return e.binary(rv.Bytes())
		}
		n := rv.Len()
		if n == 0 {
			e.buf = append(e.buf, tagNil)
			return nil
		}
		if err := e.enter(depth); err != nil {
			return err
		}
		if err := e.header32(tagList, n, "list"); err != nil {
			return err
		}
		for i := range n {
			if err := e.term(rv.Index(i).Interface(), depth+1); err != nil {
				return err
			}
		}
		e.buf = append(e.buf, tagNil)
		return nil
	case reflect.Map:
		if rv.Type().Key().Kind() != reflect.String {
			return unsupported("map with %s keys (only string-kind keys become a dict)", rv.Type().Key())
		}
		return e.dict(reflectDict(rv), depth)
	}
	if !rv.IsValid() {
		return e.term(nil, depth)
	}
	return unsupported("cannot encode %s", rv.Type())
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// reflectDict turns a map with string-kind keys into a Dict sorted by key.
// Keys keep their type: a map[Atom]V gives atom keys.
func reflectDict(rv reflect.Value) Dict {
	d := make(Dict, 0, rv.Len())
	keys := make([]string, 0, rv.Len())
	for it := rv.MapRange(); it.Next(); {
		d = append(d, KV{Key: it.Key().Interface(), Value: it.Value().Interface()})
		keys = append(keys, it.Key().String())
	}
	idx := make([]int, len(d))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmpString(keys[a], keys[b]) })
	sorted := make(Dict, len(d))
	for i, j := range idx {
		sorted[i] = d[j]
	}
	return sorted
}

func sortedDict(m map[string]any) Dict {
	d := make(Dict, 0, len(m))
	for k, v := range m {
		d = append(d, KV{Key: k, Value: v})
	}
	slices.SortFunc(d, func(a, b KV) int { return cmpString(a.Key.(string), b.Key.(string)) })
	return d
}

func (e *encoder) header32(tag byte, n int, what string) error {
	if uint64(n) > math.MaxUint32 {
		return unsupported("%s of %d elements is too long", what, n)
	}
	e.buf = append(e.buf, tag)
	e.buf = binary.BigEndian.AppendUint32(e.buf, uint32(n))
	return nil
}

func (e *encoder) int64(v int64) {
	switch {
	case 0 <= v && v <= math.MaxUint8:
		e.buf = append(e.buf, tagSmallInteger, byte(v))
	case math.MinInt32 <= v && v <= math.MaxInt32:
		e.buf = append(e.buf, tagInteger)
		e.buf = binary.BigEndian.AppendUint32(e.buf, uint32(int32(v)))
	case v < 0:
		e.smallBig(1, uint64(-v)) // -MinInt64 wraps to 1<<63, which is right
	default:
		e.smallBig(0, uint64(v))
	}
}

func (e *encoder) uint64(v uint64) {
	if v <= math.MaxInt64 {
		e.int64(int64(v))
		return
	}
	e.smallBig(0, v)
}

// smallBig writes SMALL_BIG_EXT for a magnitude of at most 8 bytes.
func (e *encoder) smallBig(sign byte, mag uint64) {
	n := 0
	for m := mag; m != 0; m >>= 8 {
		n++
	}
	e.buf = append(e.buf, tagSmallBig, byte(n), sign)
	for ; mag != 0; mag >>= 8 {
		e.buf = append(e.buf, byte(mag))
	}
}

func (e *encoder) bigInt(v *big.Int) {
	if v.IsInt64() {
		e.int64(v.Int64())
		return
	}
	be := v.Bytes() // magnitude, big-endian
	n := len(be)
	if n <= math.MaxUint8 {
		e.buf = append(e.buf, tagSmallBig, byte(n))
	} else {
		e.buf = append(e.buf, tagLargeBig)
		e.buf = binary.BigEndian.AppendUint32(e.buf, uint32(n))
	}
	if v.Sign() < 0 {
		e.buf = append(e.buf, 1)
	} else {
		e.buf = append(e.buf, 0)
	}
	for i := n - 1; i >= 0; i-- {
		e.buf = append(e.buf, be[i])
	}
}

// float writes FLOAT_EXT: "%.20e" padded with NULs to 31 bytes, as Erlang
// does with minor_version 0. 21 significant digits round-trip every float64.
func (e *encoder) float(f float64) error {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return unsupported("float %v (Erlang floats are finite)", f)
	}
	e.buf = append(e.buf, tagFloat)
	start := len(e.buf)
	e.buf = strconv.AppendFloat(e.buf, f, 'e', 20, 64)
	for len(e.buf)-start < floatLen {
		e.buf = append(e.buf, 0)
	}
	return nil
}

func (e *encoder) atom(a Atom) error {
	if len(a) > math.MaxUint8 {
		return unsupported("atom of %d bytes (Erlang atoms have at most 255 characters)", len(a))
	}
	e.buf = append(e.buf, tagAtom, 0, byte(len(a)))
	e.buf = append(e.buf, a...)
	return nil
}

func (e *encoder) binary(b []byte) error {
	if err := e.header32(tagBinary, len(b), "binary"); err != nil {
		return err
	}
	e.buf = append(e.buf, b...)
	return nil
}

// charlist writes STRING_EXT, or for more than 65535 bytes a LIST_EXT of
// small integers, as Erlang does. The empty Charlist is written as an
// empty STRING_EXT (Erlang and the Ruby gem read it as []), so that it
// decodes as a Charlist again.
func (e *encoder) charlist(s Charlist, depth int) error {
	switch {
	case len(s) <= math.MaxUint16:
		e.buf = append(e.buf, tagString)
		e.buf = binary.BigEndian.AppendUint16(e.buf, uint16(len(s)))
		e.buf = append(e.buf, s...)
	default:
		if err := e.enter(depth); err != nil {
			return err
		}
		if err := e.header32(tagList, len(s), "charlist"); err != nil {
			return err
		}
		for i := range len(s) {
			e.buf = append(e.buf, tagSmallInteger, s[i])
		}
		e.buf = append(e.buf, tagNil)
	}
	return nil
}

func (e *encoder) tupleHeader(n int) error {
	if n <= math.MaxUint8 {
		e.buf = append(e.buf, tagSmallTuple, byte(n))
		return nil
	}
	return e.header32(tagLargeTuple, n, "tuple")
}

func (e *encoder) tuple(t Tuple, depth int) error {
	if err := e.enter(depth); err != nil {
		return err
	}
	if err := e.tupleHeader(len(t)); err != nil {
		return err
	}
	for _, v := range t {
		if err := e.term(v, depth+1); err != nil {
			return err
		}
	}
	return nil
}

func (e *encoder) list(l []any, depth int) error {
	if len(l) == 0 {
		e.buf = append(e.buf, tagNil)
		return nil
	}
	if err := e.enter(depth); err != nil {
		return err
	}
	if err := e.header32(tagList, len(l), "list"); err != nil {
		return err
	}
	for _, v := range l {
		if err := e.term(v, depth+1); err != nil {
			return err
		}
	}
	e.buf = append(e.buf, tagNil)
	return nil
}

// complexHeader starts {bert, Name, ...} of n elements.
func (e *encoder) complexHeader(name Atom, n, depth int) error {
	if err := e.enter(depth); err != nil {
		return err
	}
	e.buf = append(e.buf, tagSmallTuple, byte(n))
	e.buf = append(e.buf, tagAtom, 0, 4, 'b', 'e', 'r', 't')
	return e.atom(name)
}

func (e *encoder) complexAtom(name Atom, depth int) error {
	return e.complexHeader(name, 2, depth)
}

func (e *encoder) dict(d Dict, depth int) error {
	if err := e.complexHeader("dict", 3, depth); err != nil {
		return err
	}
	if len(d) == 0 {
		e.buf = append(e.buf, tagNil)
		return nil
	}
	if err := e.enter(depth + 1); err != nil {
		return err
	}
	if err := e.header32(tagList, len(d), "dict"); err != nil {
		return err
	}
	for _, kv := range d {
		if err := e.enter(depth + 2); err != nil {
			return err
		}
		e.buf = append(e.buf, tagSmallTuple, 2)
		if err := e.term(kv.Key, depth+3); err != nil {
			return err
		}
		if err := e.term(kv.Value, depth+3); err != nil {
			return err
		}
	}
	e.buf = append(e.buf, tagNil)
	return nil
}

func (e *encoder) regex(r Regex, depth int) error {
	if err := e.complexHeader("regex", 4, depth); err != nil {
		return err
	}
	if err := e.binary([]byte(r.Source)); err != nil {
		return err
	}
	return e.list(r.Options, depth+1)
}

// time writes {bert, time, MegaSecs, Secs, MicroSecs}; sub-microsecond
// precision is dropped.
func (e *encoder) time(t time.Time, depth int) error {
	s := t.Unix()
	if s < 0 {
		return unsupported("time %s is before 1970 (BERT times are non-negative)", t.UTC().Format(time.RFC3339))
	}
	if err := e.complexHeader("time", 5, depth); err != nil {
		return err
	}
	e.int64(s / 1_000_000)
	e.int64(s % 1_000_000)
	e.int64(int64(t.Nanosecond() / 1000))
	return nil
}
