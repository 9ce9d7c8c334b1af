package bertrpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenrpc/warren/bert"
	"github.com/warrenrpc/warren/bertrpc"
)

// fakeFabric records requests and answers from a table keyed by path.
type fakeFabric struct {
	mu    sync.Mutex
	calls []fabricReq
	reply func(path string, payload []byte) ([]byte, error)
}

type fabricReq struct {
	path, payload, selector string
}

func (f *fakeFabric) Call(ctx context.Context, path string, payload []byte, selector string) ([]byte, error) {
	f.mu.Lock()
	f.calls = append(f.calls, fabricReq{path, string(payload), selector})
	f.mu.Unlock()
	return f.reply(path, payload)
}

func (f *fakeFabric) last() fabricReq {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[len(f.calls)-1]
}

type remoteErr struct{ code, msg string }

func (e *remoteErr) Error() string      { return e.msg }
func (e *remoteErr) RemoteCode() string { return e.code }

func TestFabricBridge(t *testing.T) {
	fab := &fakeFabric{reply: func(path string, payload []byte) ([]byte, error) {
		switch path {
		case "/simple/echo":
			return payload, nil
		case "/simple/fail":
			return nil, &remoteErr{"not_found", "no such thing"}
		case "/simple/down":
			return nil, errors.New("mapper: no agent offers this service")
		case "/simple/slow":
			return nil, context.DeadlineExceeded
		case "/simple/bad":
			return []byte("{nope"), nil
		}
		return []byte(`{"path":"` + path + `","n":1,"f":1.5,"big":123456789012345678901234567890,"ok":true,"none":null,"list":[1,"a"]}`), nil
	}}
	cfg := bertrpc.Config{Modules: []bertrpc.ModuleConfig{{Module: "simple", Type: bertrpc.TypeFabric, Selector: "least_loaded"}}}
	s := startServer(t, cfg, bertrpc.WithFabric(fab))

	// One argument is sent as itself.
	v := mustCall(t, s, "simple", "echo", []byte("hi"))
	if string(v.([]byte)) != "hi" {
		t.Fatalf("echo = %s", bert.Format(v))
	}
	if got := fab.last(); got != (fabricReq{"/simple/echo", `"hi"`, "least_loaded"}) {
		t.Fatalf("request %+v", got)
	}
	// Several arguments: a JSON array; atoms → strings, dict → object.
	mustCall(t, s, "simple", "echo", 1, bert.Atom("low"), bert.Dict{{Key: []byte("k"), Value: 2.5}}, nil, true)
	if got := fab.last().payload; got != `[1,"low",{"k":2.5},null,true]` {
		t.Fatalf("payload %s", got)
	}
	// No arguments: [].
	mustCall(t, s, "simple", "echo")
	if got := fab.last().payload; got != `[]` {
		t.Fatalf("payload %s", got)
	}
	// Reply mapping.
	v = mustCall(t, s, "simple", "info")
	want := bert.Dict{
		{Key: []byte("path"), Value: []byte("/simple/info")},
		{Key: []byte("n"), Value: 1},
		{Key: []byte("f"), Value: 1.5},
		{Key: []byte("big"), Value: mustBig("123456789012345678901234567890")},
		{Key: []byte("ok"), Value: true},
		{Key: []byte("none"), Value: nil},
		{Key: []byte("list"), Value: bert.List{1, []byte("a")}},
	}
	if !bert.Equal(v, want) {
		t.Fatalf("reply %s\nwant %s", bert.Format(v), bert.Format(want))
	}

	_, err := call(t, s, "simple", "fail")
	e := wantError(t, err, bertrpc.UserError, 0, "not_found")
	if e.Detail != "no such thing" {
		t.Fatalf("detail %q", e.Detail)
	}
	_, err = call(t, s, "simple", "down")
	wantError(t, err, bertrpc.ProxyError, 0, "ProxyError")
	_, err = call(t, s, "simple", "slow")
	wantError(t, err, bertrpc.ServerError, 0, "TimeoutError")
	_, err = call(t, s, "simple", "bad")
	wantError(t, err, bertrpc.ServerError, 0, "MappingError")
	_, err = call(t, s, "simple", "echo", []byte{0xff, 0xfe})
	wantError(t, err, bertrpc.ServerError, 0, "MappingError")
}

func mustBig(s string) *big.Int {
	n, _ := new(big.Int).SetString(s, 10)
	return n
}

func TestTermJSONMapping(t *testing.T) {
	tests := []struct {
		name string
		term any
		want string
	}{
		{"int", 42, `42`},
		{"negative", -7, `-7`},
		{"float", 0.25, `0.25`},
		{"binary", []byte("héllo"), `"héllo"`},
		{"charlist", bert.Charlist("abc"), `"abc"`},
		{"atom", bert.Atom("ok"), `"ok"`},
		{"erlang true", bert.Atom("true"), `true`},
		{"bert true", true, `true`},
		{"nil", nil, `null`},
		{"tuple", bert.Tuple{1, bert.Atom("a")}, `[1,"a"]`},
		{"nested", bert.List{bert.List{}, bert.Dict{{Key: bert.Atom("a"), Value: bert.List{1}}}}, `[[],{"a":[1]}]`},
		{"time", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), `"2026-01-02T03:04:05Z"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := bertrpc.TermToJSON(tc.term)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
			if !json.Valid(got) {
				t.Fatal("invalid JSON")
			}
		})
	}
	if _, err := bertrpc.TermToJSON(bert.Regex{Source: "a"}); !errors.Is(err, bertrpc.ErrMapping) {
		t.Fatalf("regex: %v", err)
	}
	if _, err := bertrpc.JSONToTerm([]byte(`1 2`)); !errors.Is(err, bertrpc.ErrMapping) {
		t.Fatalf("trailing: %v", err)
	}
	v, err := bertrpc.JSONToTerm([]byte(`{"b":1,"a":[1e3,-0.5,"x"]}`))
	if err != nil {
		t.Fatal(err)
	}
	want := bert.Dict{{Key: []byte("b"), Value: 1}, {Key: []byte("a"), Value: bert.List{1000.0, -0.5, []byte("x")}}}
	if !bert.Equal(v, want) {
		t.Fatalf("got %s", bert.Format(v))
	}
}

// TestIntDigitsBounded: integers longer than MaxIntDigits are refused in
// both directions before any quadratic decimal conversion, with a clear
// error; up to the bound they map as before.
func TestIntDigitsBounded(t *testing.T) {
	limit := bertrpc.MaxIntDigits
	atLimit := strings.Repeat("9", limit)         // 10^limit - 1
	overLimit := "1" + strings.Repeat("0", limit) // 10^limit
	huge := strings.Repeat("7", 200_000)

	for _, s := range []string{atLimit, "-" + atLimit} {
		v, err := bertrpc.JSONToTerm([]byte(s))
		if err != nil {
			t.Fatalf("%d digits: %v", limit, err)
		}
		if b, ok := v.(*big.Int); !ok || b.String() != s {
			t.Fatalf("%d digits mapped to %T", limit, v)
		}
		if j, err := bertrpc.ArgsToJSON(bert.List{mustBig(s)}); err != nil || string(j) != s {
			t.Fatalf("ArgsToJSON of %d digits: %v", limit, err)
		}
	}
	for _, s := range []string{overLimit, "-" + overLimit, huge, `{"n":[` + huge + `]}`} {
		_, err := bertrpc.JSONToTerm([]byte(s))
		if !errors.Is(err, bertrpc.ErrMapping) || !strings.Contains(err.Error(), "exceeds the limit of 4300") {
			t.Fatalf("JSONToTerm of %.20s...: %v", s, err)
		}
	}
	maxBERT := new(big.Int).Lsh(big.NewInt(1), 8*bert.DefaultMaxBigLen-1) // the largest bignum a client may send
	for _, b := range []*big.Int{mustBig(overLimit), new(big.Int).Neg(mustBig(overLimit)), maxBERT} {
		_, err := bertrpc.ArgsToJSON(bert.List{1, bert.List{b}})
		if !errors.Is(err, bertrpc.ErrMapping) || !strings.Contains(err.Error(), "4300") {
			t.Fatalf("ArgsToJSON of a %d-bit integer: %v", b.BitLen(), err)
		}
	}

	// Through the server: a reply or an argument over the bound is a
	// server MappingError, and the connection serves on.
	fab := &fakeFabric{reply: func(path string, payload []byte) ([]byte, error) {
		if path == "/simple/huge" {
			return []byte(`{"n":` + huge + `}`), nil
		}
		return payload, nil
	}}
	cfg := bertrpc.Config{Modules: []bertrpc.ModuleConfig{{Module: "simple", Type: bertrpc.TypeFabric}}}
	s := startServer(t, cfg, bertrpc.WithFabric(fab))
	_, err := call(t, s, "simple", "huge")
	e := wantError(t, err, bertrpc.ServerError, 0, "MappingError")
	if !strings.Contains(e.Detail, "simple:huge reply: ") || !strings.Contains(e.Detail, "200000 decimal digits exceeds the limit of 4300") {
		t.Fatalf("detail %q", e.Detail)
	}
	_, err = call(t, s, "simple", "echo", maxBERT)
	e = wantError(t, err, bertrpc.ServerError, 0, "MappingError")
	if !strings.Contains(e.Detail, "simple:echo arguments: ") || !strings.Contains(e.Detail, "more than 4300 decimal digits") {
		t.Fatalf("detail %q", e.Detail)
	}
	if v := mustCall(t, s, "simple", "echo", mustBig(atLimit)); !bert.Equal(v, mustBig(atLimit)) {
		t.Fatalf("echo of %d digits = %.40s", limit, bert.Format(v))
	}
}
