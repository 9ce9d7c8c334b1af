package setup

import (
	"errors"
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
	// identities; none: any. They limit the queues of durable All event
	// subscriptions (warren.events.all.ID) too: a Bus of the agent user
	// subscribes durably to All under one of these identities.
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
	// Events is what the user may do with events (package events).
	Events EventScope
}

// EventScope is what a user may do with events (package events): publish
// to warren.events any key, and subscribe with every mode, durable or
// transient, unless NoEvents.
type EventScope struct {
	// Groups limit the queues of One and PerHost subscriptions
	// (warren.events.one.GROUP, warren.events.host.GROUP.HOST) to these
	// groups; none: any. The user may consume, purge, bind and delete
	// the queues of these groups, and none of the others' (but a PerHost
	// queue's name cannot tell a dot in the group from the one before the
	// host: group enc also allows the PerHost queues of group enc.x).
	Groups []string
	// NoEvents withholds every permission on events: the user can
	// neither publish nor subscribe.
	NoEvents bool
}

// queues is the pattern of the subscriber queues a user may use, its
// durable All queues limited to ids (regexp-quoted identities; none: any).
// "" with NoEvents.
func (e EventScope) queues(ids []string) (string, error) {
	if e.NoEvents {
		if len(e.Groups) > 0 {
			return "", errors.New("setup: event groups given with no events")
		}
		return "", nil
	}
	const prefix = `warren\.events\.` // wire.EventQueuePrefix
	var alts []string
	if len(e.Groups) == 0 {
		if len(ids) == 0 {
			return prefix + `(one|host|all)\..+`, nil
		}
		alts = append(alts, prefix+`(one|host)\..+`)
	} else {
		quoted := make([]string, len(e.Groups))
		for i, g := range e.Groups {
			if err := wire.CheckIdentity(g); err != nil {
				return "", fmt.Errorf("setup: event group: %w", err)
			}
			quoted[i] = regexp.QuoteMeta(g)
		}
		groups := `(` + strings.Join(quoted, "|") + `)`
		alts = append(alts, prefix+`one\.`+groups, prefix+`host\.`+groups+`\..+`)
	}
	if len(ids) == 0 {
		alts = append(alts, prefix+`all\..+`)
	} else {
		alts = append(alts, prefix+`all\.(`+strings.Join(ids, "|")+`)`)
	}
	return strings.Join(alts, "|"), nil
}

// exchanges is the pattern of some of Warren's exchanges and queues named
// warren.NAME.
func exchanges(names ...string) string {
	return `warren\.(` + strings.Join(names, "|") + `)`
}

// withEvents returns names, and events when queues are not "".
func withEvents(queues string, names ...string) []string {
	if queues == "" {
		return names
	}
	return append(names, "events")
}

// orEvents returns the alternatives alts, and queues when not "".
func orEvents(queues string, alts ...string) []string {
	if queues == "" {
		return alts
	}
	return append(alts, queues)
}

// Permissions returns the permissions of an agent user limited to s.
func (s AgentScope) Permissions() (Permissions, error) {
	agentQueues := `warren\.agent\..+`
	var ids []string
	if len(s.Identities) > 0 {
		ids = make([]string, len(s.Identities))
		for i, id := range s.Identities {
			if err := wire.CheckIdentity(id); err != nil {
				return Permissions{}, fmt.Errorf("setup: agent identity: %w", err)
			}
			ids[i] = regexp.QuoteMeta(id)
		}
		agentQueues = `warren\.agent\.(` + strings.Join(ids, "|") + `)`
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
	evq, err := s.Events.queues(ids)
	if err != nil {
		return Permissions{}, err
	}
	own := agentQueues + `|` + serviceQueues + `|` + serverNamed
	// With events: declare, publish to and bind from warren.events, and
	// declare, bind and consume the subscriber queues (with warren.dlx as
	// their dead-letter exchange, and dead letters published to it, which
	// an agent already may).
	return Permissions{
		// Topology, its own queues (declared with x-dead-letter-exchange).
		Configure: anchor(orEvents(evq, exchanges(withEvents(evq, "request", "service", "heartbeat", "control", "dlx", "dead")...), own)...),
		// Heartbeats and dead letters (publish); warren.dlx also because
		// declaring a queue with a dead-letter exchange needs write on it;
		// warren.dead and its own queues to bind them; amq.default for
		// replies.
		Write: anchor(orEvents(evq, exchanges(withEvents(evq, "heartbeat", "dlx", "dead")...), own, `amq\.default`)...),
		// Bind from warren.request, warren.service, warren.control and
		// warren.dlx (to warren.dead); consume its own queues (and read on
		// them to declare them with a dead-letter exchange).
		Read: anchor(orEvents(evq, exchanges(withEvents(evq, "request", "service", "control", "dlx")...), own)...),
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

// MapperPermissions returns the permissions of a mapper user, with every
// permission on events (MapperScope for less).
func MapperPermissions() Permissions {
	p, _ := MapperScope{}.Permissions() // cannot fail without groups
	return p
}

// MapperScope is what a mapper user may use beyond what every mapper needs.
type MapperScope struct {
	// Events is what the user may do with events. A mapper user has no
	// identity scope: it may use the queue of any durable All
	// subscription (warren.events.all.ID).
	Events EventScope
}

// Permissions returns the permissions of a mapper user limited to s.
func (s MapperScope) Permissions() (Permissions, error) {
	evq, err := s.Events.queues(nil)
	if err != nil {
		return Permissions{}, err
	}
	// With events: as an agent (AgentScope.Permissions), and write on
	// warren.dlx, to declare subscriber queues with it as their
	// dead-letter exchange and publish dead letters.
	write := []string{"request", "service", "control", "dead"}
	if evq != "" {
		write = append(write, "dlx")
	}
	return Permissions{
		// Topology and its two server-named queues.
		Configure: anchor(orEvents(evq, exchanges(withEvents(evq, "request", "service", "heartbeat", "control", "dlx", "dead")...), serverNamed)...),
		// Requests, pushes and announces (publish); warren.dead and its
		// heartbeat queue to bind them.
		Write: anchor(orEvents(evq, exchanges(withEvents(evq, write...)...), serverNamed)...),
		// Bind from warren.heartbeat and warren.dlx; consume its queues.
		Read: anchor(orEvents(evq, exchanges(withEvents(evq, "heartbeat", "dlx")...), serverNamed)...),
	}, nil
}

func anchor(alts ...string) string {
	return "^(" + strings.Join(alts, "|") + ")$"
}

// TopicPermissions are a user's RabbitMQ topic permissions on one topic
// exchange: regular expressions matched against the routing key of what
// it publishes (write) and the binding key of the queues it binds (read).
type TopicPermissions struct {
	Exchange string `json:"exchange"`
	Write    string `json:"write"`
	Read     string `json:"read"`
}

func (t TopicPermissions) String() string {
	return fmt.Sprintf("%s: write '%s' read '%s'", t.Exchange, t.Write, t.Read)
}

// EventTopicPermissions returns the topic permissions on warren.events
// that limit a user to the event keys beginning, word by word, with one
// of prefixes (each an event key: file, audit.eu): it may publish file
// and file.encrypt, not filex or log.x, and subscribe with file.#,
// file.*, not # or *.encrypt.
func EventTopicPermissions(prefixes ...string) (TopicPermissions, error) {
	if len(prefixes) == 0 {
		return TopicPermissions{}, errors.New("setup: no event prefix")
	}
	quoted := make([]string, len(prefixes))
	for i, p := range prefixes {
		if err := wire.CheckEventKey(p); err != nil {
			return TopicPermissions{}, fmt.Errorf("setup: event prefix: %w", err)
		}
		quoted[i] = regexp.QuoteMeta(p)
	}
	re := `^(` + strings.Join(quoted, "|") + `)(\.|$)`
	return TopicPermissions{Exchange: wire.EventExchange, Write: re, Read: re}, nil
}
