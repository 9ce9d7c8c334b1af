package bertrpc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/warrenrpc/warren/bert"
)

// ErrInvalidConfig is wrapped by every configuration error.
var ErrInvalidConfig = errors.New("bertrpc: invalid config")

// ModuleType says how a module's functions are run.
type ModuleType string

// Module types.
const (
	// TypeNative modules are Go functions registered in a [Registry] and run
	// inside the server.
	TypeNative ModuleType = "native"
	// TypeExternal modules are worker processes speaking Ernie's external
	// protocol (BERPs on file descriptors 3 and 4).
	TypeExternal ModuleType = "external"
	// Fabric modules forward calls to Warren services through a [Fabric].
	TypeFabric ModuleType = "fabric"
)

// Defaults for zero Config fields.
const (
	DefaultListen      = ":8000"
	DefaultMaxPacket   = 16 << 20
	DefaultCallTimeout = 30 * time.Second
	DefaultIdleTimeout = 5 * time.Minute
	// DefaultMaxConnections bounds the open client connections.
	DefaultMaxConnections = 1024
	// DefaultMaxPendingCasts bounds the casts acknowledged and not yet run
	// to their end.
	DefaultMaxPendingCasts = 1024
	// DefaultFrameTimeout bounds the time a frame may take to arrive once
	// its first byte has.
	DefaultFrameTimeout = time.Minute
)

// Config configures a [Server]. The zero value of each field means its
// default. A Config is read-only once passed to [New].
type Config struct {
	// Listen is the TCP address to listen on. "" → ":8000" (Ernie's default
	// port). Use "127.0.0.1:0" in tests and read [Server.Addr].
	Listen string `yaml:"listen"`
	// Modules lists the modules in the order Ernie's config file gives them.
	// A native and an external module of the same name, native first,
	// shadow each other (see the package documentation).
	Modules []ModuleConfig `yaml:"modules"`
	// MaxPacket is the largest accepted BERP in bytes, on client
	// connections and from workers. 0 → 16 MiB.
	MaxPacket int `yaml:"max_packet"`
	// CallTimeout bounds each call from the moment it is read until its
	// reply, queueing included. A worker still running when it expires is
	// killed and restarted. 0 → 30s; negative → no timeout (Ernie's
	// behaviour). A module's own Timeout overrides it.
	CallTimeout time.Duration `yaml:"call_timeout"`
	// CastTimeout bounds each cast in the same way, from the moment it is
	// read until its function returns (the client had its {noreply} at
	// once). 0 or negative → no timeout, as in Ernie: CallTimeout and the
	// modules' Timeout do not apply to casts.
	CastTimeout time.Duration `yaml:"cast_timeout"`
	// IdleTimeout closes a kept-open client connection that sends no
	// request for this long, counted from its last request's answer (or
	// its accept). Info BERPs and rejected frames do not renew it.
	// 0 → 5m; negative → never. With a timeout, accepted connections
	// have no TCP keep-alive (the timeout finds dead clients); without
	// one they have Go's default keep-alive.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// FrameTimeout bounds the time a frame takes to arrive once its first
	// byte has; a connection that is slower is answered with a protocol
	// error (code 1 or 2) and closed. It keeps a client that sends a frame
	// byte by byte (slow loris) from holding a connection until the idle
	// timeout. 0 → 1m; negative → none.
	FrameTimeout time.Duration `yaml:"frame_timeout"`
	// MaxConnections bounds the open client connections. A connection
	// over the bound closes the connection that has been idle longest (no
	// call in hand, no request for the longest time); when every
	// connection has a call in hand, the new one is refused: its first
	// request is answered with a server error of class BusyError. Reaching
	// the process's file-descriptor limit also closes the longest-idle
	// connection. 0 → 1024; negative → no bound (Ernie's behaviour).
	MaxConnections int `yaml:"max_connections"`
	// MaxPendingCasts bounds the casts acknowledged with {noreply} and not
	// yet finished (queued or running). A cast over the bound is not run:
	// it is answered with a server error of class BusyError instead of
	// {noreply}. 0 → 1024; negative → no bound (Ernie's behaviour).
	MaxPendingCasts int `yaml:"max_pending_casts"`
	// CloseAfterReply closes each connection after its first reply, as
	// Ernie does. By default the connection stays open for further requests.
	CloseAfterReply bool `yaml:"close_after_reply"`
	// AccessLog is the path of the access log ("" → none). The file is
	// reopened when it is moved or deleted.
	AccessLog string `yaml:"access_log"`
}

// ModuleConfig is one entry of the config: one term of Ernie's config file.
type ModuleConfig struct {
	// Module is the BERT-RPC module name (the atom clients call).
	Module string `yaml:"module"`
	// Type is native, external or fabric.
	Type ModuleType `yaml:"type"`
	// Command starts one external worker; Ernie appends
	// " --procline xxx…" to it and runs it with /bin/sh -c.
	Command string `yaml:"command"`
	// Count is the number of external workers. 0 → 1.
	Count int `yaml:"count"`
	// Selector is the fabric selector (for example "least_loaded").
	Selector string `yaml:"selector"`
	// Timeout overrides Config.CallTimeout for this module's calls (Erlang
	// form: {timeout, Milliseconds}; YAML: milliseconds or a duration such
	// as "5s").
	Timeout time.Duration `yaml:"timeout"`
	// CodePaths is accepted for Ernie compatibility and ignored: native
	// modules are compiled into the binary.
	CodePaths []string `yaml:"codepaths"`
	// Ignored lists the keys of an Erlang config entry that this server
	// does not know. Ernie ignores such keys, so they are not errors:
	// [New] logs a warning for each.
	Ignored []string `yaml:"-"`
}

func (c Config) withDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.MaxPacket <= 0 {
		c.MaxPacket = DefaultMaxPacket
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.FrameTimeout == 0 {
		c.FrameTimeout = DefaultFrameTimeout
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.MaxPendingCasts == 0 {
		c.MaxPendingCasts = DefaultMaxPendingCasts
	}
	for i := range c.Modules {
		if c.Modules[i].Type == TypeExternal && c.Modules[i].Count <= 0 {
			c.Modules[i].Count = 1
		}
	}
	return c
}

// Validate checks the config. Errors wrap [ErrInvalidConfig] and name the
// offending module.
func (c Config) Validate() error {
	if c.MaxPacket < 0 {
		return fmt.Errorf("%w: max_packet must not be negative", ErrInvalidConfig)
	}
	for i, m := range c.Modules {
		where := fmt.Sprintf("modules[%d] (%s)", i, m.Module)
		if m.Module == "" {
			return fmt.Errorf("%w: modules[%d]: module name missing", ErrInvalidConfig, i)
		}
		if m.Module == adminModule {
			return fmt.Errorf("%w: %s: %s is reserved", ErrInvalidConfig, where, adminModule)
		}
		switch m.Type {
		case TypeNative:
		case TypeExternal:
			if strings.TrimSpace(m.Command) == "" {
				return fmt.Errorf("%w: %s: external module needs a command", ErrInvalidConfig, where)
			}
			if m.Count < 0 {
				return fmt.Errorf("%w: %s: count must not be negative", ErrInvalidConfig, where)
			}
		case TypeFabric:
		case "":
			return fmt.Errorf("%w: %s: type missing (native, external or fabric)", ErrInvalidConfig, where)
		default:
			return fmt.Errorf("%w: %s: unknown type %q (native, external or fabric)", ErrInvalidConfig, where, m.Type)
		}
		if m.Timeout < 0 {
			return fmt.Errorf("%w: %s: timeout must not be negative", ErrInvalidConfig, where)
		}
	}
	return nil
}

// HasFabric reports whether any module is of type fabric.
func (c Config) HasFabric() bool {
	for _, m := range c.Modules {
		if m.Type == TypeFabric {
			return true
		}
	}
	return false
}

// LoadConfig reads a config file: YAML when the name ends in .yaml or .yml,
// otherwise Ernie's Erlang-term format.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("bertrpc: read config: %w", err)
	}
	var cfg Config
	switch strings.ToLower(filepath.Ext(path)) {
	case ".yaml", ".yml":
		cfg, err = ParseYAMLConfig(data)
	default:
		cfg, err = ParseErlangConfig(data)
	}
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// ParseYAMLConfig parses the YAML form of the config. Unknown fields are
// errors (this form is Warren's own, unlike Ernie's Erlang terms).
// Durations are either integers, in milliseconds as in Ernie's
// {timeout, Ms}, or strings such as "5s" or "1m30s".
func ParseYAMLConfig(data []byte) (Config, error) {
	var yc yamlConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&yc); err != nil {
		if errors.Is(err, io.EOF) {
			return Config{}, nil
		}
		return Config{}, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	cfg := Config{
		Listen:          yc.Listen,
		MaxPacket:       yc.MaxPacket,
		CallTimeout:     time.Duration(yc.CallTimeout),
		CastTimeout:     time.Duration(yc.CastTimeout),
		IdleTimeout:     time.Duration(yc.IdleTimeout),
		FrameTimeout:    time.Duration(yc.FrameTimeout),
		MaxConnections:  yc.MaxConnections,
		MaxPendingCasts: yc.MaxPendingCasts,
		CloseAfterReply: yc.CloseAfterReply,
		AccessLog:       yc.AccessLog,
	}
	for _, m := range yc.Modules {
		cfg.Modules = append(cfg.Modules, ModuleConfig{
			Module:    m.Module,
			Type:      m.Type,
			Command:   m.Command,
			Count:     m.Count,
			Selector:  m.Selector,
			Timeout:   time.Duration(m.Timeout),
			CodePaths: m.CodePaths,
		})
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// yamlConfig is the YAML form of Config: the same keys, with durations
// that also accept milliseconds.
type yamlConfig struct {
	Listen          string       `yaml:"listen"`
	Modules         []yamlModule `yaml:"modules"`
	MaxPacket       int          `yaml:"max_packet"`
	CallTimeout     yamlDuration `yaml:"call_timeout"`
	CastTimeout     yamlDuration `yaml:"cast_timeout"`
	IdleTimeout     yamlDuration `yaml:"idle_timeout"`
	FrameTimeout    yamlDuration `yaml:"frame_timeout"`
	MaxConnections  int          `yaml:"max_connections"`
	MaxPendingCasts int          `yaml:"max_pending_casts"`
	CloseAfterReply bool         `yaml:"close_after_reply"`
	AccessLog       string       `yaml:"access_log"`
}

type yamlModule struct {
	Module    string       `yaml:"module"`
	Type      ModuleType   `yaml:"type"`
	Command   string       `yaml:"command"`
	Count     int          `yaml:"count"`
	Selector  string       `yaml:"selector"`
	Timeout   yamlDuration `yaml:"timeout"`
	CodePaths []string     `yaml:"codepaths"`
}

// yamlDuration reads an integer as milliseconds and a string as a Go
// duration.
type yamlDuration time.Duration

func (d *yamlDuration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!int" {
		var ms int64
		if err := n.Decode(&ms); err != nil {
			return err
		}
		if ms > math.MaxInt64/int64(time.Millisecond) || ms < math.MinInt64/int64(time.Millisecond) {
			return fmt.Errorf("line %d: %d milliseconds is out of range", n.Line, ms)
		}
		*d = yamlDuration(time.Duration(ms) * time.Millisecond)
		return nil
	}
	var s string
	if n.Kind == yaml.ScalarNode && n.Decode(&s) == nil {
		if v, err := time.ParseDuration(s); err == nil {
			*d = yamlDuration(v)
			return nil
		}
	}
	return fmt.Errorf("line %d: %q is not a duration: want milliseconds (5000) or a duration (5s)", n.Line, n.Value)
}

// ParseErlangConfig parses Ernie's config format: dot-terminated Erlang
// terms, each a list of 2-tuples describing one module, for example
//
//	[{module, ext}, {type, external}, {command, "ruby ext.rb"}, {count, 2}].
//
// Keys: module, type (native, external, fabric), command, count, selector,
// timeout (milliseconds) and codepaths (ignored). Server-wide settings
// (listen address, access log) come from the command line, as in Ernie;
// the YAML form can also hold them. The server's limits can also be given
// as terms of their own, a {Key, Value} tuple each (Warren's; Ernie's own
// files have none):
//
//	{max_connections, 2048}.
//	{max_pending_casts, 10000}.
//	{frame_timeout, 120000}.   % milliseconds, as {timeout, Ms}
//	{idle_timeout, 60000}.
func ParseErlangConfig(data []byte) (Config, error) {
	terms, err := parseErlangTerms(string(data))
	if err != nil {
		return Config{}, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	var cfg Config
	for i, t := range terms {
		if kv, ok := t.(bert.Tuple); ok {
			if err := cfg.setting(kv); err != nil {
				return Config{}, fmt.Errorf("%w: term %d: %v", ErrInvalidConfig, i+1, err)
			}
			continue
		}
		m, err := moduleFromTerm(t)
		if err != nil {
			return Config{}, fmt.Errorf("%w: term %d: %v", ErrInvalidConfig, i+1, err)
		}
		cfg.Modules = append(cfg.Modules, m)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// setting reads a server-wide {Key, Value} term of the Erlang form.
// Unknown keys are errors: these terms are Warren's own.
func (c *Config) setting(kv bert.Tuple) error {
	if len(kv) != 2 {
		return fmt.Errorf("expected a module's list of {Key, Value} or a {Key, Value} setting, got %s", bert.FormatLimit(kv, maxQuoteLen))
	}
	key, ok := kv[0].(bert.Atom)
	if !ok {
		return fmt.Errorf("setting key must be an atom, got %s", bert.FormatLimit(kv[0], maxQuoteLen))
	}
	n, err := termInt(kv[1])
	if err != nil {
		return fmt.Errorf("%s: %v", key, err)
	}
	ms := func() (time.Duration, error) {
		if n > math.MaxInt64/int(time.Millisecond) || n < -math.MaxInt64/int(time.Millisecond) {
			return 0, fmt.Errorf("%s: %d milliseconds is out of range", key, n)
		}
		return time.Duration(n) * time.Millisecond, nil
	}
	switch key {
	case "max_connections":
		c.MaxConnections = n
	case "max_pending_casts":
		c.MaxPendingCasts = n
	case "frame_timeout":
		c.FrameTimeout, err = ms()
	case "idle_timeout":
		c.IdleTimeout, err = ms()
	default:
		return fmt.Errorf("unknown setting %s (max_connections, max_pending_casts, frame_timeout, idle_timeout)", bert.FormatLimit(key, maxQuoteLen))
	}
	return err
}

func moduleFromTerm(t any) (ModuleConfig, error) {
	var m ModuleConfig
	l, ok := t.(bert.List)
	if !ok {
		return m, fmt.Errorf("expected a list of {Key, Value} tuples, got %s", bert.Format(t))
	}
	for _, e := range l {
		kv, ok := e.(bert.Tuple)
		if !ok || len(kv) != 2 {
			return m, fmt.Errorf("expected {Key, Value}, got %s", bert.Format(e))
		}
		key, ok := kv[0].(bert.Atom)
		if !ok {
			return m, fmt.Errorf("key must be an atom, got %s", bert.Format(kv[0]))
		}
		v := kv[1]
		var err error
		switch key {
		case "module":
			m.Module, err = termString(v)
		case "type":
			var s string
			s, err = termString(v)
			m.Type = ModuleType(s)
		case "command":
			m.Command, err = termString(v)
		case "count":
			m.Count, err = termInt(v)
		case "selector":
			m.Selector, err = termString(v)
		case "timeout":
			var ms int
			if ms, err = termInt(v); err == nil && (ms > math.MaxInt64/int(time.Millisecond) || ms < -math.MaxInt64/int(time.Millisecond)) {
				err = fmt.Errorf("%d milliseconds is out of range", ms)
			}
			m.Timeout = time.Duration(ms) * time.Millisecond
		case "codepaths":
			paths, ok := v.(bert.List)
			if !ok {
				return m, fmt.Errorf("codepaths must be a list of strings")
			}
			for _, p := range paths {
				s, err := termString(p)
				if err != nil {
					return m, fmt.Errorf("codepaths: %v", err)
				}
				m.CodePaths = append(m.CodePaths, s)
			}
		default:
			// Ernie reads its entries with proplists, which ignore keys
			// nobody asks for.
			m.Ignored = append(m.Ignored, string(key))
		}
		if err != nil {
			return m, fmt.Errorf("%s: %v", key, err)
		}
	}
	return m, nil
}

// termString accepts an atom, a string or a binary.
func termString(v any) (string, error) {
	switch s := v.(type) {
	case bert.Atom:
		return string(s), nil
	case bert.Charlist:
		return string(s), nil
	case []byte:
		return string(s), nil
	case bert.List:
		if len(s) == 0 {
			return "", nil
		}
	}
	return "", fmt.Errorf("expected an atom or a string, got %s", bert.Format(v))
}

func termInt(v any) (int, error) {
	switch n := v.(type) {
	case int:
		return n, nil
	case *big.Int:
		return 0, fmt.Errorf("integer %s out of range", n)
	}
	return 0, fmt.Errorf("expected an integer, got %s", bert.Format(v))
}
