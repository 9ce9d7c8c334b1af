package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/warrenrpc/warren/worker"
)

// Config is a daemon's configuration: one YAML file, every key documented
// in docs/plugins.md and examples/warren.yaml. Load reads and checks it.
type Config struct {
	// Identity is the agent's identity; "" means the host name.
	Identity string `yaml:"identity"`
	// Tags label the agent for selection by tag.
	Tags []string `yaml:"tags"`
	// PingInterval is the heartbeat interval; 0 means 15s.
	PingInterval time.Duration `yaml:"ping_interval"`
	// Prefetch bounds the requests worked on at once per queue; 0 means 64.
	Prefetch int `yaml:"prefetch"`
	// DrainTimeout bounds a stop's wait for requests in hand; 0 means 30s.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// Pidfile, when set, is written at start and removed at exit.
	Pidfile string `yaml:"pidfile"`
	// MetricsAddr, when set (host:port), serves Prometheus metrics on
	// http://MetricsAddr/metrics, without authentication (`warren daemon
	// start`; docs/operations.md).
	MetricsAddr string `yaml:"metrics_addr"`
	// Tower, when its listen is set, runs the Control Tower in the daemon
	// (docs/tower.md).
	Tower TowerConfig `yaml:"tower"`
	// Broker says where and how to connect.
	Broker BrokerConfig `yaml:"broker"`
	// Status is what the agent advertises to mappers with every ping.
	Status StatusConfig `yaml:"status"`
	// Secure turns on secure mode (docs/security.md).
	Secure SecureConfig `yaml:"secure"`
	// Services are the plugins, by name: each serves /name/method for
	// each of its methods.
	Services map[string]*ServiceConfig `yaml:"services"`

	// File is the path the config was read from ("" when not from a file).
	File string `yaml:"-"`
	// dir resolves relative paths: the config file's directory.
	dir  string
	root *yaml.Node
}

// TowerConfig is the tower section: the Control Tower served by the
// daemon. Like the broker's password, its secrets are never in the file.
type TowerConfig struct {
	// Listen is the address (host:port); "" leaves the Tower off. Beyond
	// loopback it needs a token or basic auth.
	Listen string `yaml:"listen"`
	// TokenEnv or TokenFile holds the access token.
	TokenEnv  string `yaml:"token_env"`
	TokenFile string `yaml:"token_file"`
	// User, with the password in PasswordEnv or PasswordFile, allows
	// basic auth.
	User         string `yaml:"user"`
	PasswordEnv  string `yaml:"password_env"`
	PasswordFile string `yaml:"password_file"`
	// History is how far back the status charts reach; 0 means 5m.
	History time.Duration `yaml:"history"`
	// Token and Password are refused: secrets come from the environment
	// or a file.
	Token    string `yaml:"token"`
	Password string `yaml:"password"`
}

// TowerSecrets returns the Tower's token and basic auth password, read
// from the environment variables or files the tower section names.
func (c *Config) TowerSecrets() (token, password string, err error) {
	t := c.Tower
	read := func(key, env, file string) (string, error) {
		switch {
		case env != "":
			v, ok := os.LookupEnv(env)
			if !ok || v == "" {
				return "", fmt.Errorf("daemon: tower.%s_env: the environment variable %s is not set", key, env)
			}
			return v, nil
		case file != "":
			b, err := os.ReadFile(file)
			if err != nil {
				return "", fmt.Errorf("daemon: tower.%s_file: %w", key, err)
			}
			v := strings.TrimRight(string(b), "\r\n")
			if v == "" {
				return "", fmt.Errorf("daemon: tower.%s_file: the file is empty", key)
			}
			return v, nil
		}
		return "", nil
	}
	if token, err = read("token", t.TokenEnv, t.TokenFile); err != nil {
		return "", "", err
	}
	if password, err = read("password", t.PasswordEnv, t.PasswordFile); err != nil {
		return "", "", err
	}
	return token, password, nil
}

// BrokerConfig is the broker section. The password is never in the file:
// it comes from the environment variable PasswordEnv or the file
// PasswordFile.
type BrokerConfig struct {
	// URL is one broker URL: amqp://user@host:port/vhost (no password).
	URL string `yaml:"url"`
	// URLs lists a cluster's nodes: tried in order at start, in turn at every reconnection.
	URLs []string `yaml:"urls"`
	// Vhost, when set, replaces the URLs' vhost.
	Vhost string `yaml:"vhost"`
	// User, when set, replaces the URLs' user name.
	User string `yaml:"user"`
	// PasswordEnv names the environment variable holding the password.
	PasswordEnv string `yaml:"password_env"`
	// PasswordFile is a file holding the password (trailing newline ignored).
	PasswordFile string `yaml:"password_file"`
	// Password is refused with a clear error: passwords stay out of the file.
	Password string `yaml:"password"`
	// TLS configures amqps:// URLs.
	TLS TLSConfig `yaml:"tls"`
}

// TLSConfig is the broker's TLS: file paths, never keys themselves.
type TLSConfig struct {
	CA                 string `yaml:"ca" json:"ca,omitempty"`
	Cert               string `yaml:"cert" json:"cert,omitempty"`
	Key                string `yaml:"key" json:"key,omitempty"`
	ServerName         string `yaml:"server_name" json:"server_name,omitempty"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify" json:"insecure_skip_verify,omitempty"`
}

// StatusConfig chooses the status source.
type StatusConfig struct {
	// Source is load_average (the default), command or constant.
	Source string `yaml:"source"`
	// Command (source command) is run with /bin/sh -c every ping
	// interval; its output, JSON or else a string, is the status.
	Command string `yaml:"command"`
	// Value (source constant) is advertised as is.
	Value any `yaml:"value"`
}

// SecureConfig turns on secure mode when Cert is set.
type SecureConfig struct {
	Cert     string `yaml:"cert"`
	Key      string `yaml:"key"`
	CA       string `yaml:"ca"`
	Deny     string `yaml:"deny"`
	SignOnly bool   `yaml:"sign_only"`
}

// Enabled reports whether secure mode is configured.
func (s SecureConfig) Enabled() bool { return s.Cert != "" || s.Key != "" || s.CA != "" }

// ServiceConfig is one plugin.
type ServiceConfig struct {
	// Command starts one worker: a list is the argv, a string is run by
	// /bin/sh -c. A relative program path is relative to Dir.
	Command Command `yaml:"command"`
	// Protocol is jsonlines (the default) or ernie (Ernie's external
	// protocol: BERT on fds 3 and 4).
	Protocol string `yaml:"protocol"`
	// Module is the Ernie module called (protocol ernie); "" means the
	// service name.
	Module string `yaml:"module"`
	// Methods are served as /service/method.
	Methods []string `yaml:"methods"`
	// Workers is how many worker processes run; 0 means 1.
	Workers int `yaml:"workers"`
	// Timeout bounds each call; 0 means 30s.
	Timeout time.Duration `yaml:"timeout"`
	// Dir is the workers' working directory; "" means the config file's.
	Dir string `yaml:"dir"`
	// Env is added to the workers' environment.
	Env map[string]string `yaml:"env"`
	// Config is the plugin's own configuration, any YAML, given to its
	// workers as JSON in WARREN_PLUGIN_CONFIG (to a Go service's
	// constructor).
	Config yaml.Node `yaml:"config"`
	// Go marks a service compiled into the daemon's binary ([Service],
	// daemonmain.Main): it takes only config; its methods are its type's.
	Go bool `yaml:"go"`

	// configJSON is Config as JSON.
	configJSON []byte
}

// Command is a worker's command: an argv (YAML list) or a shell command
// (YAML string).
type Command struct {
	Argv  []string
	Shell bool
}

// UnmarshalYAML reads a string or a list of strings.
func (c *Command) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		c.Shell = true
		c.Argv = []string{n.Value}
		return nil
	case yaml.SequenceNode:
		c.Shell = false
		return n.Decode(&c.Argv)
	}
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: command: want a string (run by /bin/sh -c) or a list (the argv)", n.Line)}}
}

func (c Command) String() string {
	if c.Shell {
		return c.Argv[0]
	}
	return strings.Join(c.Argv, " ")
}

// ConfigError is an invalid config, pointing at the offending line.
type ConfigError struct {
	File   string
	Line   int // 0 when unknown
	Column int
	Msg    string
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Column > 0 {
			fmt.Fprintf(&b, ":%d", e.Column)
		}
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// ConfigErrors are all the problems found in one config.
type ConfigErrors []*ConfigError

func (es ConfigErrors) Error() string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// Reserved is the prefix of the actor names of the daemon's own control
// services: /daemon.IDENTITY/status, ... (see ControlPath).
const Reserved = "daemon"

// Load reads and checks the config file at path.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("daemon: config: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	return Parse(b, path, filepath.Dir(abs))
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
var unknownField = regexp.MustCompile(`^field (\S+) not found in type \S+$`)

// Parse checks a config read from file (named in errors); relative paths
// are relative to dir.
func Parse(data []byte, file, dir string) (*Config, error) {
	c := &Config{File: file, dir: dir}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, yamlError(file, err)
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil, &ConfigError{File: file, Msg: "empty config: want at least a services section"}
	}
	c.root = root.Content[0]
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, yamlError(file, err)
	}
	if errs := c.check(); len(errs) > 0 {
		return nil, errs
	}
	return c, nil
}

// yamlError turns yaml.v3's errors into ConfigErrors with lines.
func yamlError(file string, err error) error {
	var te *yaml.TypeError
	msgs := []string{err.Error()}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	var es ConfigErrors
	for _, m := range msgs {
		e := &ConfigError{File: file, Msg: strings.TrimPrefix(m, "yaml: ")}
		if g := yamlLine.FindStringSubmatch(m); g != nil {
			e.Line, _ = strconv.Atoi(g[1])
			e.Msg = strings.Replace(g[2], "into time.Duration", "into a duration (write it with a unit: 15s, 500ms)", 1)
			if f := unknownField.FindStringSubmatch(e.Msg); f != nil {
				e.Msg = fmt.Sprintf("unknown key %q", f[1])
			}
		}
		es = append(es, e)
	}
	return es
}

// node returns the key node at a path of mapping keys, or the deepest one
// found (the document when none is), for error positions.
func (c *Config) node(path ...string) *yaml.Node {
	n, at := c.root, c.root
	for _, k := range path {
		if n == nil || n.Kind != yaml.MappingNode {
			return at
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == k {
				at, next = n.Content[i], n.Content[i+1]
				break
			}
		}
		if next == nil {
			return at
		}
		n = next
	}
	return at
}

func (c *Config) errAt(es *ConfigErrors, path []string, format string, args ...any) {
	e := &ConfigError{File: c.File, Msg: strings.Join(path, ".") + ": " + fmt.Sprintf(format, args...)}
	if n := c.node(path...); n != nil {
		e.Line, e.Column = n.Line, n.Column
	}
	*es = append(*es, e)
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)

func (c *Config) check() ConfigErrors {
	var es ConfigErrors
	if c.Identity == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			c.errAt(&es, []string{"identity"}, "not set, and the host name is unknown")
		}
		c.Identity = h
	} else if !nameRE.MatchString(c.Identity) {
		c.errAt(&es, []string{"identity"}, "%q: letters, digits, _ . - only", c.Identity)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"ping_interval", c.PingInterval}, {"drain_timeout", c.DrainTimeout}} {
		if d.v != 0 && d.v < time.Millisecond {
			c.errAt(&es, []string{d.key}, "%v: want a duration with a unit, such as 15s", d.v)
		}
	}
	if c.Prefetch < 0 {
		c.errAt(&es, []string{"prefetch"}, "must not be negative")
	}
	if c.MetricsAddr != "" {
		if _, port, err := net.SplitHostPort(c.MetricsAddr); err != nil || port == "" {
			c.errAt(&es, []string{"metrics_addr"}, "%q: want host:port, such as 127.0.0.1:9464", c.MetricsAddr)
		}
	}
	c.checkTower(&es)
	c.Pidfile = c.abs(c.Pidfile)
	c.checkBroker(&es)
	switch c.Status.Source {
	case "", "load_average":
		if c.Status.Command != "" || c.Status.Value != nil {
			c.errAt(&es, []string{"status"}, "command and value need source: command or source: constant")
		}
	case "command":
		if c.Status.Command == "" {
			c.errAt(&es, []string{"status", "source"}, "source command needs a command")
		}
	case "constant":
		if c.Status.Value == nil {
			c.errAt(&es, []string{"status", "source"}, "source constant needs a value")
		}
		if _, err := json.Marshal(c.Status.Value); err != nil {
			c.errAt(&es, []string{"status", "value"}, "not a JSON value: %v", err)
		}
	default:
		c.errAt(&es, []string{"status", "source"}, "%q: want load_average, command or constant", c.Status.Source)
	}
	if s := &c.Secure; s.Enabled() {
		if s.Cert == "" || s.Key == "" || s.CA == "" {
			c.errAt(&es, []string{"secure"}, "secure mode needs cert, key and ca")
		}
		for _, f := range []struct {
			key string
			p   *string
		}{{"cert", &s.Cert}, {"key", &s.Key}, {"ca", &s.CA}, {"deny", &s.Deny}} {
			*f.p = c.abs(*f.p)
			c.checkFile(&es, []string{"secure", f.key}, *f.p)
		}
	}
	if len(c.Services) == 0 {
		c.errAt(&es, []string{"services"}, "no services: name at least one plugin")
	}
	for _, name := range slices.Sorted(maps.Keys(c.Services)) {
		c.checkService(&es, name, c.Services[name])
	}
	return es
}

func (c *Config) abs(p string) string {
	if p == "" || filepath.IsAbs(p) || c.dir == "" {
		return p
	}
	return filepath.Join(c.dir, p)
}

func (c *Config) checkFile(es *ConfigErrors, path []string, p string) {
	if p == "" {
		return
	}
	if _, err := os.Stat(p); err != nil {
		c.errAt(es, path, "%v", err)
	}
}

func (c *Config) checkTower(es *ConfigErrors) {
	t := &c.Tower
	if t.Token != "" {
		c.errAt(es, []string{"tower", "token"}, "tokens are not read from the config file: use token_env or token_file")
	}
	if t.Password != "" {
		c.errAt(es, []string{"tower", "password"}, "passwords are not read from the config file: use password_env or password_file")
	}
	if t.TokenEnv != "" && t.TokenFile != "" {
		c.errAt(es, []string{"tower", "token_file"}, "give token_env or token_file, not both")
	}
	if t.PasswordEnv != "" && t.PasswordFile != "" {
		c.errAt(es, []string{"tower", "password_file"}, "give password_env or password_file, not both")
	}
	if (t.User == "") != (t.PasswordEnv == "" && t.PasswordFile == "") {
		c.errAt(es, []string{"tower", "user"}, "basic auth needs user and password_env or password_file")
	}
	if t.History < 0 {
		c.errAt(es, []string{"tower", "history"}, "must not be negative")
	}
	t.TokenFile, t.PasswordFile = c.abs(t.TokenFile), c.abs(t.PasswordFile)
	c.checkFile(es, []string{"tower", "token_file"}, t.TokenFile)
	c.checkFile(es, []string{"tower", "password_file"}, t.PasswordFile)
	if t.Listen == "" {
		if t.TokenEnv != "" || t.TokenFile != "" || t.User != "" {
			c.errAt(es, []string{"tower", "listen"}, "not set: the Tower needs an address (127.0.0.1:4000)")
		}
		return
	}
	if _, port, err := net.SplitHostPort(t.Listen); err != nil || port == "" {
		c.errAt(es, []string{"tower", "listen"}, "%q: want host:port, such as 127.0.0.1:4000", t.Listen)
	}
}

func (c *Config) checkBroker(es *ConfigErrors) {
	b := &c.Broker
	if b.Password != "" {
		c.errAt(es, []string{"broker", "password"}, "passwords are not read from the config file: use password_env or password_file")
	}
	if b.URL != "" && len(b.URLs) > 0 {
		c.errAt(es, []string{"broker", "urls"}, "give url or urls, not both")
	}
	urls := b.URLs
	key := "urls"
	if b.URL != "" {
		urls, key = []string{b.URL}, "url"
	}
	for _, raw := range urls {
		u, err := url.Parse(raw)
		switch {
		case err != nil:
			c.errAt(es, []string{"broker", key}, "not a URL (percent-encode ':', '/', '?', '#' or '@' in the user name)")
		case u.Scheme != "amqp" && u.Scheme != "amqps":
			c.errAt(es, []string{"broker", key}, "%q: want an amqp:// or amqps:// URL", u.Redacted())
		case u.User != nil && func() bool { _, ok := u.User.Password(); return ok }():
			c.errAt(es, []string{"broker", key}, "the URL holds a password: take it out and use password_env or password_file")
		}
	}
	if b.PasswordEnv != "" && b.PasswordFile != "" {
		c.errAt(es, []string{"broker", "password_file"}, "give password_env or password_file, not both")
	}
	b.PasswordFile = c.abs(b.PasswordFile)
	c.checkFile(es, []string{"broker", "password_file"}, b.PasswordFile)
	t := &b.TLS
	for _, f := range []struct {
		key string
		p   *string
	}{{"ca", &t.CA}, {"cert", &t.Cert}, {"key", &t.Key}} {
		*f.p = c.abs(*f.p)
		c.checkFile(es, []string{"broker", "tls", f.key}, *f.p)
	}
	if (t.Cert == "") != (t.Key == "") {
		c.errAt(es, []string{"broker", "tls"}, "cert and key go together")
	}
}

func (c *Config) checkService(es *ConfigErrors, name string, s *ServiceConfig) {
	at := func(k ...string) []string { return append([]string{"services", name}, k...) }
	if s == nil {
		c.errAt(es, at(), "empty: a service needs at least a command and its methods")
		return
	}
	switch {
	case name == Reserved || strings.HasPrefix(name, Reserved+"."):
		c.errAt(es, at(), "the name %q is the daemon's own (/daemon.IDENTITY/status, ...): choose another", name)
	case !nameRE.MatchString(name):
		c.errAt(es, at(), "name %q: letters, digits, _ . - only", name)
	}
	if s.Config.Kind != 0 {
		var v any
		if err := s.Config.Decode(&v); err != nil {
			c.errAt(es, at("config"), "%v", err)
		} else if s.configJSON, err = json.Marshal(v); err != nil {
			c.errAt(es, at("config"), "not representable as JSON (keys must be strings): %v", err)
		}
	} else {
		s.configJSON = []byte("{}")
	}
	if s.Go {
		if len(s.Command.Argv) > 0 || s.Protocol != "" || s.Module != "" || len(s.Methods) > 0 || s.Workers != 0 ||
			s.Timeout != 0 || s.Dir != "" || len(s.Env) > 0 {
			c.errAt(es, at("go"), "a Go service takes only config: its methods are its type's, and it runs in the daemon")
		}
		return
	}
	switch s.Protocol {
	case "":
		s.Protocol = "jsonlines"
	case "jsonlines", "ernie":
	default:
		c.errAt(es, at("protocol"), "%q: want jsonlines or ernie", s.Protocol)
	}
	if s.Module != "" && s.Protocol != "ernie" {
		c.errAt(es, at("module"), "module is for protocol ernie")
	}
	if len(s.Methods) == 0 {
		c.errAt(es, at("methods"), "no methods: list the methods the plugin serves")
	}
	seen := map[string]bool{}
	for _, m := range s.Methods {
		if !nameRE.MatchString(m) {
			c.errAt(es, at("methods"), "method %q: letters, digits, _ . - only", m)
		}
		if seen[m] {
			c.errAt(es, at("methods"), "method %q twice", m)
		}
		seen[m] = true
	}
	if s.Workers < 0 {
		c.errAt(es, at("workers"), "must not be negative")
	}
	if s.Timeout != 0 && s.Timeout < time.Millisecond {
		c.errAt(es, at("timeout"), "%v: want a duration with a unit, such as 10s", s.Timeout)
	}
	if s.Dir == "" {
		s.Dir = c.dir
	} else {
		s.Dir = c.abs(s.Dir)
		if fi, err := os.Stat(s.Dir); err != nil || !fi.IsDir() {
			c.errAt(es, at("dir"), "%q is not a directory", s.Dir)
		}
	}
	for k := range s.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			c.errAt(es, at("env"), "%q is not a variable name", k)
		}
	}
	c.checkCommand(es, at("command"), s)
}

// checkCommand finds the program a worker runs, so that a typo fails the
// config check, not every call.
func (c *Config) checkCommand(es *ConfigErrors, path []string, s *ServiceConfig) {
	if len(s.Command.Argv) == 0 || s.Command.Argv[0] == "" {
		c.errAt(es, path, "missing: the command that starts one worker")
		return
	}
	prog := s.Command.Argv[0]
	if s.Command.Shell {
		f := strings.Fields(prog)
		if len(f) == 0 {
			c.errAt(es, path, "empty")
			return
		}
		prog = f[0]
		if !strings.Contains(prog, "/") {
			return // a builtin, a variable, a program on $PATH: the shell knows
		}
	}
	if strings.Contains(prog, "/") {
		p := prog
		if !filepath.IsAbs(p) {
			p = filepath.Join(s.Dir, p)
		}
		fi, err := os.Stat(p)
		switch {
		case err != nil:
			c.errAt(es, path, "%v", err)
		case fi.IsDir():
			c.errAt(es, path, "%s is a directory", p)
		case !s.Command.Shell && fi.Mode()&0o111 == 0:
			c.errAt(es, path, "%s is not executable (chmod +x, or run it with its interpreter: [python3, %s])", p, prog)
		}
		if !s.Command.Shell {
			s.Command.Argv[0] = p
		}
		return
	}
	if _, err := exec.LookPath(prog); err != nil {
		c.errAt(es, path, "%q is not on $PATH", prog)
	}
}

// PoolConfig is the worker pool config of service name.
func (c *Config) PoolConfig(name string) worker.Config {
	s := c.Services[name]
	env := []string{"WARREN_SERVICE=" + name, "WARREN_PLUGIN_CONFIG=" + string(s.configJSON), "WARREN_IDENTITY=" + c.Identity}
	for _, k := range slices.Sorted(maps.Keys(s.Env)) {
		env = append(env, k+"="+s.Env[k])
	}
	var proto worker.Protocol = worker.JSONLines{}
	if s.Protocol == "ernie" {
		m := s.Module
		if m == "" {
			m = name
		}
		proto = Ernie{Module: m}
	}
	return worker.Config{
		Name: name, Command: s.Command.Argv, Shell: s.Command.Shell, Dir: s.Dir, Env: env,
		Workers: s.Workers, Timeout: s.Timeout, Protocol: proto,
	}
}

// Paths returns the paths of the config's plugins, sorted (Go services'
// methods are known only to the daemon: Status.Services has them all).
func (c *Config) Paths() []string {
	var ps []string
	for name, s := range c.Services {
		for _, m := range s.Methods {
			ps = append(ps, "/"+name+"/"+m)
		}
	}
	slices.Sort(ps)
	return ps
}

// BrokerURLs returns the broker URLs to try in order, with the user,
// password and vhost filled in. They hold the password: never print them
// (amqp.RedactURL).
func (c *Config) BrokerURLs() ([]string, error) {
	b := c.Broker
	raw := b.URLs
	if b.URL != "" {
		raw = []string{b.URL}
	}
	if len(raw) == 0 {
		raw = []string{"amqp://guest@127.0.0.1:5672/"}
	}
	password, havePassword := "", false
	switch {
	case b.PasswordEnv != "":
		v, ok := os.LookupEnv(b.PasswordEnv)
		if !ok {
			return nil, fmt.Errorf("daemon: broker.password_env: the environment variable %s is not set", b.PasswordEnv)
		}
		password, havePassword = v, true
	case b.PasswordFile != "":
		v, err := os.ReadFile(b.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("daemon: broker.password_file: %w", err)
		}
		password, havePassword = strings.TrimRight(string(v), "\r\n"), true
	}
	out := make([]string, 0, len(raw))
	for _, r := range raw {
		u, err := url.Parse(r)
		if err != nil {
			return nil, fmt.Errorf("daemon: broker URL: not a URL")
		}
		user := b.User
		if user == "" && u.User != nil {
			user = u.User.Username()
		}
		if user == "" {
			user = "guest"
		}
		switch {
		case havePassword:
			u.User = url.UserPassword(user, password)
		case user == "guest":
			u.User = url.UserPassword("guest", "guest") // RabbitMQ's default, loopback only
		default:
			u.User = url.User(user)
		}
		if b.Vhost != "" {
			u.Path, u.RawPath = "/"+b.Vhost, "/"+url.PathEscape(b.Vhost)
		}
		out = append(out, u.String())
	}
	return out, nil
}
