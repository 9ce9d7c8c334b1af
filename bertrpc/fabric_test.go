package bertrpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"math/big"
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
