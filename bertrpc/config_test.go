package bertrpc_test

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/bertrpc"
)

func TestParseErlangConfig(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		want    []bertrpc.ModuleConfig
		wantErr bool
	}{
		{
			name: "ernie README example",
			src: `% Ernie's example configuration
[{module, nat},
 {type, native},
 {codepaths, ["/path/to/app/ebin"]}].
[{module, ext},
 {type, external},
 {command, "ruby /path/to/app/ernie/ext.rb"},
 {count, 2}].
`,
			want: []bertrpc.ModuleConfig{
				{Module: "nat", Type: bertrpc.TypeNative, CodePaths: []string{"/path/to/app/ebin"}},
				{Module: "ext", Type: bertrpc.TypeExternal, Command: "ruby /path/to/app/ernie/ext.rb", Count: 2},
			},
		},
		{
			name: "fabric, quoted atom, binary, timeout",
			src:  `[{module, 'simple'}, {type, fabric}, {selector, <<"least_loaded">>}, {timeout, 1500}].`,
			want: []bertrpc.ModuleConfig{{Module: "simple", Type: bertrpc.TypeFabric, Selector: "least_loaded", Timeout: 1500 * time.Millisecond}},
		},
		{name: "escapes", src: `[{module, e}, {type, external}, {command, "echo \"a\tb\" \x41"}].`,
			want: []bertrpc.ModuleConfig{{Module: "e", Type: bertrpc.TypeExternal, Command: "echo \"a\tb\" A"}}},
		{name: "empty file", src: "% nothing\n", want: nil},
		{name: "missing dot", src: `[{module, x}, {type, native}]`, wantErr: true},
		{
			// Ernie's proplists ignore unknown keys: kept, for New to warn.
			name: "unknown keys ignored", src: `[{module, x}, {type, native}, {colour, red}, {pool, [1, {a, b}]}].`,
			want: []bertrpc.ModuleConfig{{Module: "x", Type: bertrpc.TypeNative, Ignored: []string{"colour", "pool"}}},
		},
		{name: "timeout overflow", src: `[{module, x}, {type, native}, {timeout, 99999999999999999}].`, wantErr: true},
		{name: "unknown type", src: `[{module, x}, {type, martian}].`, wantErr: true},
		{name: "external without command", src: `[{module, x}, {type, external}].`, wantErr: true},
		{name: "variable", src: `[{module, X}].`, wantErr: true},
		{name: "not a list", src: `{module, x}.`, wantErr: true},
		{name: "admin reserved", src: `[{module, '__admin__'}, {type, native}].`, wantErr: true},
		{name: "unterminated string", src: `[{module, x}, {type, external}, {command, "ruby].`, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := bertrpc.ParseErlangConfig([]byte(tc.src))
			if tc.wantErr {
				if !errors.Is(err, bertrpc.ErrInvalidConfig) {
					t.Fatalf("err = %v, want ErrInvalidConfig", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(cfg.Modules, tc.want) {
				t.Fatalf("got %+v\nwant %+v", cfg.Modules, tc.want)
			}
		})
	}
}

func TestLoadConfigYAML(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bert.yaml")
	src := `listen: "127.0.0.1:9999"
call_timeout: 5s
cast_timeout: 90000
idle_timeout: 1m30s
access_log: /tmp/access.log
modules:
  - module: nat
    type: native
    timeout: 5000
  - module: ext
    type: external
    command: ruby ext.rb
    count: 2
    timeout: 2.5s
  - module: simple
    type: fabric
    selector: least_loaded
`
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := bertrpc.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	want := bertrpc.Config{
		Listen: "127.0.0.1:9999", CallTimeout: 5 * time.Second, CastTimeout: 90 * time.Second,
		IdleTimeout: 90 * time.Second, AccessLog: "/tmp/access.log",
		Modules: []bertrpc.ModuleConfig{
			{Module: "nat", Type: bertrpc.TypeNative, Timeout: 5 * time.Second}, // milliseconds, as in Ernie
			{Module: "ext", Type: bertrpc.TypeExternal, Command: "ruby ext.rb", Count: 2, Timeout: 2500 * time.Millisecond},
			{Module: "simple", Type: bertrpc.TypeFabric, Selector: "least_loaded"},
		},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("got %+v\nwant %+v", cfg, want)
	}
	if !cfg.HasFabric() {
		t.Fatal("HasFabric false")
	}
	if err := os.WriteFile(path, []byte("modules:\n  - module: x\n    typo: native\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := bertrpc.LoadConfig(path); !errors.Is(err, bertrpc.ErrInvalidConfig) {
		t.Fatalf("unknown field: %v", err)
	}
	for _, bad := range []string{"soon", "1.5", "[1]", "99999999999999999"} {
		if err := os.WriteFile(path, []byte("modules:\n  - {module: x, type: native, timeout: "+bad+"}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := bertrpc.LoadConfig(path)
		if !errors.Is(err, bertrpc.ErrInvalidConfig) || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("timeout %s: %v", bad, err)
		}
	}
}

// TestIgnoredConfigKeysWarn: unknown keys of an Erlang config are not
// fatal (as in Ernie), but the server says it ignores them.
func TestIgnoredConfigKeysWarn(t *testing.T) {
	cfg, err := bertrpc.ParseErlangConfig([]byte(`[{module, nat}, {type, native}, {colour, red}].`))
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	if _, err := bertrpc.New(cfg, bertrpc.WithNative(natRegistry(t)), bertrpc.WithLogger(log)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "config key ignored") || !strings.Contains(logs.String(), "key=colour") {
		t.Fatalf("no warning: %q", logs.String())
	}
}

func TestLoadConfigErlangFile(t *testing.T) {
	cfg, err := bertrpc.LoadConfig(filepath.Join("testdata", "example.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Modules) != 2 || cfg.Modules[1].Count != 2 {
		t.Fatalf("%+v", cfg)
	}
}

// TestConfigLimits: the server's limits in both config forms.
func TestConfigLimits(t *testing.T) {
	want := bertrpc.Config{
		MaxConnections: 2048, MaxPendingCasts: -1,
		FrameTimeout: 2 * time.Minute, IdleTimeout: 90 * time.Second,
		Modules: []bertrpc.ModuleConfig{{Module: "nat", Type: bertrpc.TypeNative}},
	}
	erl, err := bertrpc.ParseErlangConfig([]byte(`
{max_connections, 2048}.
{max_pending_casts, -1}.   % no bound
{frame_timeout, 120000}.
[{module, nat}, {type, native}].
{idle_timeout, 90000}.
`))
	if err != nil {
		t.Fatal(err)
	}
	yml, err := bertrpc.ParseYAMLConfig([]byte(`
max_connections: 2048
max_pending_casts: -1
frame_timeout: 2m
idle_timeout: 90000
modules: [{module: nat, type: native}]
`))
	if err != nil {
		t.Fatal(err)
	}
	for name, got := range map[string]bertrpc.Config{"erlang": erl, "yaml": yml} {
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %+v\nwant %+v", name, got, want)
		}
	}
	for _, src := range []string{
		`{max_connectons, 5}.`,
		`{max_connections, many}.`,
		`{max_connections, 5, 6}.`,
		`{frame_timeout, 99999999999999999}.`,
	} {
		if _, err := bertrpc.ParseErlangConfig([]byte(src)); !errors.Is(err, bertrpc.ErrInvalidConfig) {
			t.Errorf("%s: err = %v, want ErrInvalidConfig", src, err)
		}
	}
}
