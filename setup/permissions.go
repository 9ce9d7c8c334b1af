package setup

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/warrenrpc/warren/wire"
)

// Permissions are the three regular expressions RabbitMQ matches against the
// name of an exchange or queue for configure, write and read operations.
type Permissions struct {
	Configure string `json:"configure"`
	Write     string `json:"write"`
	Read      string `json:"read"`
}

func (p Permissions) String() string {
	return fmt.Sprintf("configure '%s' write '%s' read '%s'", p.Configure, p.Write, p.Read)
}

// Patterns shared by both roles. Every pattern is anchored.
const (
	// topology: what wire.Topology declares (configure).
	topologyNames = `warren\.(request|service|heartbeat|control|dlx|dead)`
	// serverNamed: exclusive queues named by the broker.
	serverNamed = `amq\.gen-.+`
)

// AgentPermissions returns the permissions of an agent user. With no
// identities the user may run agents of any identity (queues
// warren.agent.*); with identities it may only declare and consume the
// queues of those (one user per agent), so it cannot take another agent's
// requests from its queue. It may use every service queue: see
// AgentScope to limit those too.
func AgentPermissions(identities ...string) (Permissions, error) {
	return AgentScope{Identities: identities}.Permissions()
}

// AgentScope is what an agent user may use beyond what every agent needs.
type AgentScope struct {
	// Identities limit the agent queues (warren.agent.ID) to these agent
	// identities; none: any.
	Identities []string
	// Services limit the shared service queues (warren.service.PATH) to
	// these service paths ("/bank/transfer") or actors ("/bank/": every
	// path under it); none: any. Declaring, consuming, purging and
	// deleting a queue are all one permission or another on its name, so
	// an agent user may do each to the service queues it may use, and
	// none to the others. An agent serving a path outside them cannot
	// declare its queue and does not start (unless it runs without shared
	// queues).
	Services []string
}

// Permissions returns the permissions of an agent user limited to s.
func (s AgentScope) Permissions() (Permissions, error) {
	agentQueues := `warren\.agent\..+`
	if len(s.Identities) > 0 {
		quoted := make([]string, len(s.Identities))
		for i, id := range s.Identities {
			if err := wire.CheckIdentity(id); err != nil {
				return Permissions{}, fmt.Errorf("setup: agent identity: %w", err)
			}
			quoted[i] = regexp.QuoteMeta(id)
		}
		agentQueues = `warren\.agent\.(` + strings.Join(quoted, "|") + `)`
	}
	serviceQueues := `warren\.service\..+`
	if len(s.Services) > 0 {
		alts := make([]string, len(s.Services))
		for i, p := range s.Services {
			if err := checkServiceScope(p); err != nil {
				return Permissions{}, err
			}
			alts[i] = regexp.QuoteMeta(p)
			if strings.HasSuffix(p, "/") {
				alts[i] += ".+"
			}
		}
		serviceQueues = `warren\.service\.(` + strings.Join(alts, "|") + `)`
	}
	own := agentQueues + `|` + serviceQueues + `|` + serverNamed
	return Permissions{
		// Topology, its own queues (declared with x-dead-letter-exchange).
		Configure: anchor(topologyNames, own),
		// Heartbeats and dead letters (publish); warren.dlx also because
		// declaring a queue with a dead-letter exchange needs write on it;
		// warren.dead and its own queues to bind them; amq.default for
		// replies.
		Write: anchor(`warren\.(heartbeat|dlx|dead)`, own, `amq\.default`),
		// Bind from warren.request, warren.service, warren.control and
		// warren.dlx (to warren.dead); consume its own queues (and read on
		// them to declare them with a dead-letter exchange).
		Read: anchor(`warren\.(request|service|control|dlx)`, own),
	}, nil
}

// checkServiceScope accepts a service path (/actor/method) or an actor
// (/actor/).
func checkServiceScope(p string) error {
	q := p
	if strings.HasSuffix(p, "/") && strings.Count(p, "/") == 2 {
		q = p + "x" // an actor: every path under it
	}
	if err := wire.CheckPath(q); err != nil {
		return fmt.Errorf("setup: agent service %q: want /actor/method, or /actor/ for all of an actor's services", p)
	}
	return nil
}

// MapperPermissions returns the permissions of a mapper user.
func MapperPermissions() Permissions {
	return Permissions{
		// Topology and its two server-named queues.
		Configure: anchor(topologyNames, serverNamed),
		// Requests, pushes and announces (publish); warren.dead and its
		// heartbeat queue to bind them.
		Write: anchor(`warren\.(request|service|control|dead)`, serverNamed),
		// Bind from warren.heartbeat and warren.dlx; consume its queues.
		Read: anchor(`warren\.(heartbeat|dlx)`, serverNamed),
	}
}

func anchor(alts ...string) string {
	return "^(" + strings.Join(alts, "|") + ")$"
}
