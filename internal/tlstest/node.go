package tlstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// NodeConfig configures a TLS RabbitMQ node.
type NodeConfig struct {
	// Dir holds everything of the node: configuration, data, logs, its
	// Erlang cookie. It must exist; Stop does not remove it.
	Dir string
	// Certs are the server's certificate and the CA it trusts for client
	// certificates.
	Certs *Certs
	// RequireClientCert makes the node's listener refuse clients without a
	// certificate (fail_if_no_peer_cert). A certificate, when presented, is
	// always verified against the CA (verify_peer).
	RequireClientCert bool
	// StartTimeout bounds the boot; 0 means 60s.
	StartTimeout time.Duration
	// MaxLifetime halts the node by itself after this long, so that a test
	// binary killed before it could call Stop leaves no node behind. 0
	// means 15 minutes.
	MaxLifetime time.Duration
}

// Node is a RabbitMQ node of its own (own name, ports, data, cookie) with
// only a TLS listener on 127.0.0.1, next to whatever node the machine
// already runs. Its guest user (password guest) may connect over loopback.
type Node struct {
	Name string // Erlang node name, e.g. warren-tls-1a2b3c@myhost
	Port int    // TLS listener
	dir  string
	env  []string
	ctl  string
}

// Available returns nil when RabbitMQ's scripts are installed.
func Available() error {
	_, _, err := scripts()
	return err
}

// scripts finds rabbitmq-server and rabbitmqctl. Debian's /usr/sbin wrappers
// switch to the rabbitmq user, which could not read the test's directory;
// the scripts they wrap run as the caller.
func scripts() (server, ctl string, err error) {
	const deb = "/usr/lib/rabbitmq/bin/"
	if _, err := os.Stat(deb + "rabbitmq-server"); err == nil {
		return deb + "rabbitmq-server", deb + "rabbitmqctl", nil
	}
	server, err = exec.LookPath("rabbitmq-server")
	if err != nil {
		return "", "", fmt.Errorf("tlstest: rabbitmq-server not installed: %w", err)
	}
	ctl, err = exec.LookPath("rabbitmqctl")
	if err != nil {
		return "", "", fmt.Errorf("tlstest: rabbitmqctl not installed: %w", err)
	}
	return server, ctl, nil
}

// StartNode boots a node and waits until it accepts connections. On error
// it stops whatever it started.
func StartNode(ctx context.Context, cfg NodeConfig) (*Node, error) {
	server, ctl, err := scripts()
	if err != nil {
		return nil, err
	}
	if cfg.Certs == nil || cfg.Dir == "" {
		return nil, errors.New("tlstest: NodeConfig needs Dir and Certs")
	}
	timeout := cfg.StartTimeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	host, err := os.Hostname()
	if err != nil {
		return nil, err
	}
	host, _, _ = strings.Cut(host, ".")
	var id [4]byte
	_, _ = rand.Read(id[:])
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	n := &Node{Name: "warren-tls-" + hex.EncodeToString(id[:]) + "@" + host, Port: ports[0], dir: cfg.Dir, ctl: ctl}

	dir := cfg.Dir
	for _, d := range []string{"mnesia", "log", "home"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	// The cookie lets rabbitmqctl (same HOME) talk to the node, and no one
	// else.
	cookie := make([]byte, 20)
	_, _ = rand.Read(cookie)
	files := map[string]string{
		"home/.erlang.cookie": strings.ToUpper(hex.EncodeToString(cookie)),
		"rabbitmq.conf":       n.config(cfg),
		"enabled_plugins":     "[].\n",
		"rabbitmq-env.conf":   "# empty: keeps the machine's rabbitmq-env.conf out\n",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			return nil, err
		}
		if err := os.Chmod(p, 0o400); err != nil && name == "home/.erlang.cookie" {
			return nil, err
		}
	}
	n.env = append(os.Environ(),
		"HOME="+filepath.Join(dir, "home"),
		"RABBITMQ_NODENAME="+n.Name,
		"RABBITMQ_USE_LONGNAME=false",
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_DIST_PORT="+strconv.Itoa(ports[1]),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(dir, "rabbitmq-env.conf"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(dir, "advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "node.pid"),
	)

	cmd := exec.CommandContext(ctx, server, "-detached")
	cmd.Env, cmd.Dir = n.env, dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("tlstest: rabbitmq-server -detached: %v\n%s", err, out)
	}
	secs := strconv.Itoa(int(time.Until(deadline(ctx)).Seconds()))
	// wait (unlike await_startup) first waits for the pid file that the
	// detached node writes, then for the boot.
	if _, err := n.rabbitmqctl(ctx, "wait", "--timeout", secs, filepath.Join(dir, "node.pid")); err != nil {
		n.Stop(context.Background())
		return nil, fmt.Errorf("%w\n%s", err, n.LogTail())
	}
	life := cfg.MaxLifetime
	if life <= 0 {
		life = 15 * time.Minute
	}
	halt := fmt.Sprintf("{ok, _} = timer:apply_after(%d, erlang, halt, []), ok.", life.Milliseconds())
	if _, err := n.rabbitmqctl(ctx, "eval", halt); err != nil {
		n.Stop(context.Background())
		return nil, err
	}
	return n, nil
}

func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// config is the node's rabbitmq.conf: no plain listener, one TLS listener.
func (n *Node) config(cfg NodeConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, "listeners.tcp = none\n")
	fmt.Fprintf(&b, "listeners.ssl.default = 127.0.0.1:%d\n", n.Port)
	fmt.Fprintf(&b, "ssl_options.cacertfile = %s\n", cfg.Certs.CAFile)
	fmt.Fprintf(&b, "ssl_options.certfile = %s\n", cfg.Certs.ServerCertFile)
	fmt.Fprintf(&b, "ssl_options.keyfile = %s\n", cfg.Certs.ServerKeyFile)
	fmt.Fprintf(&b, "ssl_options.verify = verify_peer\n")
	fmt.Fprintf(&b, "ssl_options.fail_if_no_peer_cert = %t\n", cfg.RequireClientCert)
	fmt.Fprintf(&b, "ssl_options.versions.1 = tlsv1.3\nssl_options.versions.2 = tlsv1.2\n")
	fmt.Fprintf(&b, "log.console = false\nlog.file.level = info\n")
	// A small broker: tests only.
	fmt.Fprintf(&b, "vm_memory_high_watermark.absolute = 256MiB\ndisk_free_limit.absolute = 10MB\n")
	return b.String()
}

// URL is the node's amqps URL for guest on the default vhost, with host
// localhost or 127.0.0.1 (both in the server certificate).
func (n *Node) URL(host string) string {
	return fmt.Sprintf("amqps://guest:guest@%s/", net.JoinHostPort(host, strconv.Itoa(n.Port)))
}

// AddListener starts a second TLS listener on a free port with the same
// certificates and the other client-certificate policy, and returns its
// port. It uses rabbit_networking:start_ssl_listener/3, internal to
// RabbitMQ but stable since 3.7; starting a second node would cost another
// boot.
func (n *Node) AddListener(ctx context.Context, certs *Certs, requireClientCert bool) (int, error) {
	ports, err := freePorts(1)
	if err != nil {
		return 0, err
	}
	expr := fmt.Sprintf(`rabbit_networking:start_ssl_listener({"127.0.0.1", %d}, [{cacertfile, %q}, {certfile, %q}, {keyfile, %q}, {verify, verify_peer}, {fail_if_no_peer_cert, %t}, {versions, ['tlsv1.3', 'tlsv1.2']}], 1).`,
		ports[0], certs.CAFile, certs.ServerCertFile, certs.ServerKeyFile, requireClientCert)
	out, err := n.rabbitmqctl(ctx, "eval", expr)
	if err != nil {
		return 0, err
	}
	if !strings.HasPrefix(strings.TrimSpace(out), "ok") {
		return 0, fmt.Errorf("tlstest: start_ssl_listener: %s", strings.TrimSpace(out))
	}
	return ports[0], nil
}

// Rabbitmqctl runs rabbitmqctl against the node and returns its output.
func (n *Node) Rabbitmqctl(ctx context.Context, args ...string) (string, error) {
	return n.rabbitmqctl(ctx, args...)
}

func (n *Node) rabbitmqctl(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, n.ctl, append([]string{"-n", n.Name}, args...)...)
	cmd.Env, cmd.Dir = n.env, n.dir
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("tlstest: rabbitmqctl %s: %v: %s", args[0], err, strings.TrimSpace(stderr.String()+"\n"+stdout.String()))
	}
	return stdout.String(), nil
}

// Stop stops the node and waits for its VM to exit.
func (n *Node) Stop(ctx context.Context) error {
	_, err := n.rabbitmqctl(ctx, "stop", filepath.Join(n.dir, "node.pid"))
	return err
}

// LogTail returns the end of the node's log, for error messages.
func (n *Node) LogTail() string {
	logs, _ := filepath.Glob(filepath.Join(n.dir, "log", "*.log"))
	var b strings.Builder
	for _, l := range logs {
		data, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		if len(data) > 4000 {
			data = data[len(data)-4000:]
		}
		fmt.Fprintf(&b, "== %s\n%s\n", l, data)
	}
	return b.String()
}

// freePorts returns n ports that were free a moment ago on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}
