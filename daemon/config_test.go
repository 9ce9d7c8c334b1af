package daemon

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestConfigErrors: every bad config is refused with the line of the
// offending key and a message saying what is wrong.
func TestConfigErrors(t *testing.T) {
	dir, _ := filepath.Abs(".")
	const svc = "services:\n  echo:\n    command: [python3, x.py]\n    methods: [echo]\n"
	for _, c := range []struct {
		name, yml string
		line      int
		want      string
	}{
		{"unknown key", "identity: a\nping: 5s\n" + svc, 2, `unknown key "ping"`},
		{"unknown service key", "services:\n  echo:\n    command: [python3, x.py]\n    methods: [echo]\n    worker: 2\n", 5, `unknown key "worker"`},
		{"wrong type", "services:\n  echo:\n    command: [python3, x.py]\n    methods: [echo]\n    workers: two\n", 5, "cannot unmarshal !!str `two` into int"},
		{"bad duration", "ping_interval: soon\n" + svc, 1, "into a duration (write it with a unit"},
		{"duration without unit", "ping_interval: 15\n" + svc, 1, "cannot unmarshal !!int `15` into a duration"},
		{"syntax", "services:\n  echo: [\n", 2, "did not find expected node content"},
		{"missing command", "services:\n  echo:\n    methods: [echo]\n", 2, "services.echo.command: missing"},
		{"command not found", "services:\n  echo:\n    command: [no-such-program-xyz]\n    methods: [echo]\n", 3, `"no-such-program-xyz" is not on $PATH`},
		{"command path not found", "services:\n  echo:\n    command: ./plugins/nope.sh\n    methods: [echo]\n", 3, "no such file or directory"},
		{"command not executable", "services:\n  echo:\n    command: [testdata/faulty.py]\n    methods: [echo]\n", 3, "is not executable"},
		{"no methods", "services:\n  echo:\n    command: [python3, x.py]\n", 2, "services.echo.methods: no methods"},
		{"no services", "identity: a\n", 1, "no services"},
		{"reserved name", "services:\n  daemon.x:\n    command: [python3, x.py]\n    methods: [status]\n", 2, "is the daemon's own"},
		{"bad protocol", "services:\n  echo:\n    command: [python3, x.py]\n    methods: [echo]\n    protocol: xml\n", 5, `"xml": want jsonlines or ernie`},
		{"password in url", "broker:\n  url: amqp://u:secret@h/\n" + svc, 2, "the URL holds a password"},
		{"password key", "broker:\n  password: secret\n" + svc, 2, "use password_env or password_file"},
		{"not amqp", "broker:\n  url: http://h/\n" + svc, 2, "want an amqp:// or amqps:// URL"},
		{"status source", "status:\n  source: magic\n" + svc, 2, `"magic": want load_average, command or constant`},
		{"status command missing", "status:\n  source: command\n" + svc, 2, "needs a command"},
		{"secure incomplete", "secure:\n  cert: testdata/faulty.py\n" + svc, 1, "secure mode needs cert, key and ca"},
		{"bad identity", "identity: a b\n" + svc, 1, "letters, digits"},
		{"metrics_addr not host:port", "metrics_addr: 9464\n" + svc, 1, "want host:port"},
		{"tower token in file", "tower:\n  listen: 127.0.0.1:4000\n  token: hunter2\n" + svc, 3, "tokens are not read from the config file"},
		{"tower without listen", "tower:\n  token_env: T\n" + svc, 1, "tower.listen: not set"},
		{"tower bad listen", "tower:\n  listen: nowhere\n" + svc, 2, "want host:port"},
		{"tower user without password", "tower:\n  listen: 127.0.0.1:4000\n  user: admin\n" + svc, 3, "basic auth needs user and password_env"},
		{"config not json", "services:\n  echo:\n    command: [python3, x.py]\n    methods: [echo]\n    config: {1: x}\n", 5, "not representable as JSON"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yml), "w.yaml", dir)
			if err == nil {
				t.Fatal("accepted")
			}
			var es ConfigErrors
			if !errors.As(err, &es) {
				t.Fatalf("%T %v: not ConfigErrors", err, err)
			}
			if es[0].Line != c.line || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q (line %d), want line %d and %q", err, es[0].Line, c.line, c.want)
			}
			if c.line > 0 && !strings.HasPrefix(err.Error(), "w.yaml:") {
				t.Fatalf("error %q does not start with file:line", err)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Fatalf("error %q shows the password", err)
			}
		})
	}
}

func TestConfigDefaultsAndURLs(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("s3cr:t\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Parse([]byte(`
broker:
  urls: [amqp://warren@a:5672/, amqps://b:5671/x]
  vhost: /myapp
  password_file: pw
services:
  echo:
    command: "python3 x.py"
    methods: [echo]
    timeout: 5s
    config: {a: [1, 2], b: {c: d}}
`), "w.yaml", dir)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if c.Identity != host {
		t.Fatalf("identity %q, want the host name %q", c.Identity, host)
	}
	urls, err := c.BrokerURLs()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"amqp://warren:s3cr%3At@a:5672/%2Fmyapp", "amqps://guest:s3cr%3At@b:5671/%2Fmyapp"}
	if strings.Join(urls, " ") != strings.Join(want, " ") {
		t.Fatalf("urls %v, want %v", urls, want)
	}
	pc := c.PoolConfig("echo")
	if !pc.Shell || pc.Timeout != 5*time.Second || pc.Dir != dir || !strings.Contains(strings.Join(pc.Env, " "), `WARREN_PLUGIN_CONFIG={"a":[1,2],"b":{"c":"d"}}`) {
		t.Fatalf("pool config %+v", pc)
	}
	// A password from the environment, and a missing variable.
	c.Broker.PasswordFile, c.Broker.PasswordEnv = "", "WARREN_TEST_PW_UNSET_XYZ"
	if _, err := c.BrokerURLs(); err == nil || !strings.Contains(err.Error(), "WARREN_TEST_PW_UNSET_XYZ is not set") {
		t.Fatalf("missing env: %v", err)
	}
	t.Setenv("WARREN_TEST_PW", "pw2")
	c.Broker.PasswordEnv = "WARREN_TEST_PW"
	if urls, _ := c.BrokerURLs(); !strings.HasPrefix(urls[0], "amqp://warren:pw2@a") {
		t.Fatalf("urls %v", urls)
	}
}

// TestConfigExample: the annotated example loads (with the interpreters
// its plugins need).
func TestConfigExample(t *testing.T) {
	for _, p := range []string{"python3", "ruby", "jq"} {
		if _, err := exec.LookPath(p); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s not installed under CI (scripts/deps.d)", p)
			}
			t.Skipf("%s not installed", p)
		}
	}
	c, err := Load("../examples/warren.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Paths(), " "); got != "/calc/add /calc/fail /calc/mean /echo/echo /echo/greet /echo/upcase /sysinfo/disk_free /sysinfo/uptime /words/count /words/top" {
		t.Fatalf("paths %s", got)
	}
}
