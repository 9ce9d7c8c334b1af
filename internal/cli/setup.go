package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/warrenrpc/warren/internal/tlsflags"
	"github.com/warrenrpc/warren/setup"
)

type setupCmd struct {
	AdminURL          string        `name:"admin-url" env:"WARREN_ADMIN_URL" default:"http://127.0.0.1:15672" help:"RabbitMQ management API (the rabbitmq_management plugin)."`
	AdminUser         string        `name:"admin-user" env:"WARREN_ADMIN_USER" default:"guest" help:"Management user tagged administrator."`
	AdminPasswordFile string        `name:"admin-password-file" env:"WARREN_ADMIN_PASSWORD_FILE" placeholder:"FILE" help:"File holding the admin password (else env WARREN_ADMIN_PASSWORD; never a flag)."`
	VHost             string        `name:"vhost" required:"" placeholder:"/myapp" help:"The application's virtual host."`
	AgentUser         string        `name:"agent-user" placeholder:"NAME" help:"User for agents (default: the vhost's name with -agent)."`
	MapperUser        string        `name:"mapper-user" placeholder:"NAME" help:"User for mappers (default: the vhost's name with -mapper)."`
	AgentIdentity     []string      `name:"agent-identity" placeholder:"ID" help:"Limit the agent user to the queues of these agent identities (repeatable; one user per agent)."`
	AgentService      []string      `name:"agent-service" placeholder:"PATH" help:"Limit the agent user to the shared queues of these services (/actor/method) or actors (/actor/) (repeatable)."`
	EventGroup        []string      `name:"event-group" placeholder:"GROUP" help:"Limit both users to the queues of these groups of event subscribers (events.One, events.PerHost) (repeatable)."`
	EventPrefix       []string      `name:"event-prefix" placeholder:"KEY" help:"Limit both users to events whose keys begin, word by word, with KEY (file: file, file.encrypt, not filex): what they publish and the patterns they subscribe with (RabbitMQ topic permissions on warren.events) (repeatable)."`
	NoEvents          bool          `name:"no-events" help:"Give neither user any permission on events (warren publish, warren subscribe, package events)."`
	SecretsDir        string        `name:"secrets-dir" default:"." placeholder:"DIR" help:"Where passwords are read from and generated ones written to: DIR/USER.password, mode 0600."`
	NoTopology        bool          `name:"no-topology" help:"Do not declare Warren's exchanges and warren.dead (agents and mappers do when they start)."`
	DryRun            bool          `name:"dry-run" short:"n" help:"Change nothing; print what would be done."`
	Timeout           time.Duration `name:"timeout" default:"30s" help:"Give up after this long."`
}

func (c *setupCmd) Help() string {
	return `Creates (or checks) what an application needs on the broker: a virtual
host, Warren's exchanges (warren.events too) and dead-letter queue, an agent
user and a mapper user with least-privilege permissions (docs/operations.md
lists them). Both users may publish events and subscribe to them, unless
--no-events; --event-group limits the groups they may subscribe in,
--event-prefix the keys and patterns.
Running it again changes nothing and says so.

Passwords never go on the command line. The admin password comes from
WARREN_ADMIN_PASSWORD or --admin-password-file. The agent and mapper
passwords come from WARREN_AGENT_PASSWORD and WARREN_MAPPER_PASSWORD, or
from DIR/USER.password when that file exists; a new user without one gets a
generated password, written to DIR/USER.password with mode 0600.

  warren setup --vhost /myapp --admin-user admin --secrets-dir /etc/warren`
}

func (c *setupCmd) Run(g *Globals) error {
	ctx := g.Context()
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	adminPW, err := c.adminPassword()
	if err != nil {
		return err
	}
	admin, err := setup.NewAdmin(c.AdminURL, c.AdminUser, adminPW, nil)
	if err != nil {
		return usageError{err}
	}
	base := strings.Trim(strings.ReplaceAll(c.VHost, "/", "-"), "-")
	if base == "" {
		base = "warren"
	}
	agentName, mapperName := c.AgentUser, c.MapperUser
	if agentName == "" {
		agentName = base + "-agent"
	}
	if mapperName == "" {
		mapperName = base + "-mapper"
	}
	for _, n := range []string{agentName, mapperName} {
		if strings.ContainsAny(n, "/\\") || n == "." || n == ".." {
			return usageError{fmt.Errorf("user name %q cannot name a password file", n)}
		}
	}
	plan := setup.Plan{
		VHost:           c.VHost,
		Agent:           setup.User{Name: agentName, Password: os.Getenv("WARREN_AGENT_PASSWORD"), PasswordFile: filepath.Join(c.SecretsDir, agentName+".password")},
		Mapper:          setup.User{Name: mapperName, Password: os.Getenv("WARREN_MAPPER_PASSWORD"), PasswordFile: filepath.Join(c.SecretsDir, mapperName+".password")},
		AgentIdentities: c.AgentIdentity,
		AgentServices:   c.AgentService,
		EventGroups:     c.EventGroup,
		NoEvents:        c.NoEvents,
		EventPrefixes:   c.EventPrefix,
		NoTopology:      c.NoTopology,
	}
	r, err := setup.Apply(ctx, admin, plan, c.DryRun)
	if r != nil {
		fmt.Fprint(g.Out(), r.String())
	}
	if errors.Is(err, setup.ErrInvalidPlan) {
		return usageError{err}
	}
	return err
}

// adminPassword reads the admin password from WARREN_ADMIN_PASSWORD or the
// file named by --admin-password-file.
func (c *setupCmd) adminPassword() (string, error) {
	env := os.Getenv("WARREN_ADMIN_PASSWORD")
	switch {
	case c.AdminPasswordFile != "" && env != "":
		return "", usageError{errors.New("both WARREN_ADMIN_PASSWORD and --admin-password-file are set: use one")}
	case c.AdminPasswordFile != "":
		// Checked first: the open error would quote the value, which may
		// be the password given instead of a file.
		if err := tlsflags.CheckFile("--admin-password-file", "WARREN_ADMIN_PASSWORD_FILE", c.AdminPasswordFile); err != nil {
			return "", usageError{err}
		}
		pw, err := setup.ReadPasswordFile(c.AdminPasswordFile)
		if err != nil {
			return "", usageError{err}
		}
		return pw, nil
	case env != "":
		return env, nil
	}
	return "", usageError{errors.New("no admin password: set WARREN_ADMIN_PASSWORD or --admin-password-file")}
}
