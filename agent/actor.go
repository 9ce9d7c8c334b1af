package agent

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"unicode"
)

var (
	ctxType = reflect.TypeFor[context.Context]()
	errType = reflect.TypeFor[error]()
	reqType = reflect.TypeFor[*Request]()
)

// methodHandlers returns a handler for each exported method of v that has
// one of these shapes (In and Out any JSON-codable types):
//
//	func(ctx context.Context, in In) (Out, error)
//	func(ctx context.Context, in In) error
//	func(ctx context.Context) (Out, error)
//	func(ctx context.Context, req *agent.Request) (Out, error)
//
// Method names become snake_case: GetLoad is served as get_load. Methods of
// other shapes are skipped; it is an error when none fits.
func methodHandlers(v any) (map[string]Handler, error) {
	rv := reflect.ValueOf(v)
	if !rv.IsValid() {
		return nil, fmt.Errorf("agent: expose nil")
	}
	out := map[string]Handler{}
	t := rv.Type()
	for i := range t.NumMethod() {
		m := t.Method(i)
		if !m.IsExported() {
			continue
		}
		h, ok := methodHandler(rv.Method(i))
		if !ok {
			continue
		}
		name := snake(m.Name)
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("agent: %s: two methods are both served as %q", t, name)
		}
		out[name] = h
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("agent: %s has no method of the form func(context.Context[, In]) ([Out, ]error)", t)
	}
	return out, nil
}

func methodHandler(fn reflect.Value) (Handler, bool) {
	ft := fn.Type()
	if ft.NumIn() < 1 || ft.NumIn() > 2 || ft.In(0) != ctxType {
		return nil, false
	}
	if ft.NumOut() < 1 || ft.NumOut() > 2 || ft.Out(ft.NumOut()-1) != errType {
		return nil, false
	}
	hasIn := ft.NumIn() == 2
	hasOut := ft.NumOut() == 2
	return HandlerFunc(func(ctx context.Context, req *Request) (any, error) {
		args := []reflect.Value{reflect.ValueOf(ctx)}
		if hasIn {
			if ft.In(1) == reqType {
				args = append(args, reflect.ValueOf(req))
			} else {
				in := reflect.New(ft.In(1))
				if err := req.Decode(in.Interface()); err != nil {
					return nil, err
				}
				args = append(args, in.Elem())
			}
		}
		res := fn.Call(args)
		errV := res[len(res)-1]
		if !errV.IsNil() {
			return nil, errV.Interface().(error)
		}
		if hasOut {
			return res[0].Interface(), nil
		}
		return nil, nil
	}), true
}

// snake turns GetLoad into get_load and HTTPGet into http_get.
func snake(s string) string {
	var b strings.Builder
	rs := []rune(s)
	for i, r := range rs {
		if unicode.IsUpper(r) {
			if i > 0 && (unicode.IsLower(rs[i-1]) || (i+1 < len(rs) && unicode.IsLower(rs[i+1]))) {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}
