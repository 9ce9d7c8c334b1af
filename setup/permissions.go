package setup

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode"
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
// requests from its queue.
func AgentPermissions(identities ...string) (Permissions, error) {
	agentQueues := `warren\.agent\..+`
	if len(identities) > 0 {
		quoted := make([]string, len(identities))
		for i, id := range identities {
			if err := checkIdentity(id); err != nil {
				return Permissions{}, err
			}
			quoted[i] = regexp.QuoteMeta(id)
		}
		agentQueues = `warren\.agent\.(` + strings.Join(quoted, "|") + `)`
	}
	own := agentQueues + `|warren\.service\..+|` + serverNamed
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

// checkIdentity applies the protocol's rule: non-empty, no whitespace,
// control characters or '/'.
func checkIdentity(id string) error {
	if id == "" {
		return errors.New("setup: empty agent identity")
	}
	for _, r := range id {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == '/' {
			return fmt.Errorf("setup: agent identity %q: no whitespace, control characters or '/'", id)
		}
	}
	return nil
}
