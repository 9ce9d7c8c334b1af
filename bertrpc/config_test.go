package bertrpc_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
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
		{name: "unknown key", src: `[{module, x}, {type, native}, {colour, red}].`, wantErr: true},
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
access_log: /tmp/access.log
modules:
  - module: nat
    type: native
  - module: ext
    type: external
    command: ruby ext.rb
    count: 2
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
		Listen: "127.0.0.1:9999", CallTimeout: 5 * time.Second, AccessLog: "/tmp/access.log",
		Modules: []bertrpc.ModuleConfig{
			{Module: "nat", Type: bertrpc.TypeNative},
			{Module: "ext", Type: bertrpc.TypeExternal, Command: "ruby ext.rb", Count: 2},
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
