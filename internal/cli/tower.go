package cli

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/tower"
	"github.com/warrenrpc/warren/transport/amqp"
)

type towerCmd struct {
	brokerFlags
	Addr         string        `name:"addr" default:"127.0.0.1:4000" help:"Listen on this address. Beyond loopback it needs a token or basic auth."`
	TokenFile    string        `name:"token-file" placeholder:"FILE" help:"Read the access token from this file (or set WARREN_TOWER_TOKEN). Open the page once with ?token=TOKEN; scrapers send Authorization: Bearer TOKEN."`
	User         string        `name:"user" env:"WARREN_TOWER_USER" help:"Basic auth user (its password in WARREN_TOWER_PASSWORD or --password-file)."`
	PasswordFile string        `name:"password-file" placeholder:"FILE" help:"Read the basic auth password from this file (or set WARREN_TOWER_PASSWORD)."`
	History      time.Duration `name:"history" default:"5m" help:"How far back the status charts reach."`
	Stats        time.Duration `name:"stats" default:"5s" help:"How often the Services page's fabric-wide figures are asked (discovery STATS), while a page is open."`
}

func (c *towerCmd) Help() string {
	return `Runs the Control Tower, a web page of the live fabric: the agents (status
chart, joins and drops as they happen), the services (who serves each path,
rate, errors and latency of the requests sent from the page), a form to send
a request or push with any selector, target or tags, and the dead letters
(list, show, replay, purge). Prometheus metrics are on /metrics.

  warren tower                                  # http://127.0.0.1:4000/
  WARREN_TOWER_TOKEN=s3cret warren tower --addr :4000

Without a token or basic auth it listens on loopback only. See docs/tower.md.`
}

// secretFrom returns the secret in the environment variable env, else in
// file (trailing newlines trimmed); "" when neither is given.
func secretFrom(env, flag, file string) (string, error) {
	if v := os.Getenv(env); v != "" {
		if file != "" {
			return "", usageError{fmt.Errorf("give %s or %s, not both", env, flag)}
		}
		return v, nil
	}
	if file == "" {
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", usageError{fmt.Errorf("%s: cannot read the file: %w", flag, errors.Unwrap(err))}
	}
	v := strings.TrimRight(string(b), "\r\n")
	if v == "" {
		return "", usageError{fmt.Errorf("%s: the file is empty", flag)}
	}
	return v, nil
}

func (c *towerCmd) Run(g *Globals) error {
	token, err := secretFrom("WARREN_TOWER_TOKEN", "--token-file", c.TokenFile)
	if err != nil {
		return err
	}
	password, err := secretFrom("WARREN_TOWER_PASSWORD", "--password-file", c.PasswordFile)
	if err != nil {
		return err
	}
	if (c.User == "") != (password == "") {
		return usageError{errors.New("basic auth needs --user and a password (WARREN_TOWER_PASSWORD or --password-file)")}
	}
	if c.History <= 0 {
		return usageError{fmt.Errorf("--history %v: want a positive duration", c.History)}
	}
	if c.Stats <= 0 {
		return usageError{fmt.Errorf("--stats %v: want a positive duration", c.Stats)}
	}
	cfg := tower.Config{Token: token, User: c.User, Password: password, History: c.History, Stats: c.Stats}
	if err := tower.CheckAddr(c.Addr, cfg); err != nil {
		return usageError{err}
	}
	ctx := g.Context()
	tr, id, err := c.dialAs(ctx, g, "tower")
	if err != nil {
		return err
	}
	defer tr.Close()
	cfg.Broker = amqp.RedactURL(c.Broker)
	cfg.Mapper = mapper.Config{Identity: id}
	t, err := tower.New(tr, cfg, tower.WithLogger(g.Logger()))
	if err != nil {
		return usageError{err}
	}
	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.Out(), "warren tower: Control Tower on http://%s/\n", ln.Addr())
	return t.Serve(ctx, ln)
}
