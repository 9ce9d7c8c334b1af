package setup

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/warrenrpc/warren/wire"
)

// User is a user to provision.
type User struct {
	Name string
	// Password of the user. "" means: read PasswordFile when it exists;
	// otherwise, for a user that does not exist yet, generate a password and
	// write it to PasswordFile (mode 0600); for an existing user, leave its
	// password alone.
	Password string
	// PasswordFile is where the password is read from or written to.
	PasswordFile string
}

// Plan is what Apply provisions.
type Plan struct {
	// VHost is the application's virtual host, e.g. "/myapp".
	VHost string
	// Agent and Mapper are the two users. They must differ from each other
	// and from the admin user.
	Agent, Mapper User
	// AgentIdentities, when set, limit the agent user to the queues of
	// these agent identities (see AgentPermissions).
	AgentIdentities []string
	// AgentServices, when set, limit the agent user to the shared queues
	// of these services or actors (see AgentScope).
	AgentServices []string
	// EventGroups, when set, limit both users to the queues of these
	// groups of event subscribers (see EventScope).
	EventGroups []string
	// NoEvents withholds from both users every permission on events
	// (warren.events and its subscriber queues), and skips declaring
	// warren.events.
	NoEvents bool
	// EventPrefixes, when set, limit both users to events whose keys
	// begin with one of these keys, word by word: "file" allows file and
	// file.encrypt, not filex. They may publish only such keys and
	// subscribe only with such patterns (file.#, file.*, not #), through
	// RabbitMQ topic permissions on warren.events (EventTopicPermissions).
	// Without them setup leaves the users' topic permissions as they are.
	EventPrefixes []string
	// NoTopology skips declaring Warren's exchanges and warren.dead (every
	// agent and mapper declares them anyway when it starts).
	NoTopology bool
}

// Action is what Apply did, or would do in a dry run, to one object.
type Action string

// Actions.
const (
	Created   Action = "created"
	Updated   Action = "updated"
	Unchanged Action = "unchanged"
)

// Step is one object Apply looked at.
type Step struct {
	Object string // e.g. "vhost /myapp", "user myapp-agent", "exchange warren.request"
	Action Action
	Detail string // what changed, or a warning
}

// Result lists the steps of Apply in order.
type Result struct {
	DryRun bool
	Steps  []Step

	complete bool // Apply went through every step
}

// Changed reports whether any step created or updated something (or would
// have, in a dry run).
func (r *Result) Changed() bool {
	return slices.ContainsFunc(r.Steps, func(s Step) bool { return s.Action != Unchanged })
}

// String prints one line per step and, when Apply went through all of them,
// a last line that says whether anything changed.
func (r *Result) String() string {
	var b strings.Builder
	for _, s := range r.Steps {
		act := string(s.Action)
		if r.DryRun && s.Action != Unchanged {
			act = map[Action]string{Created: "would create", Updated: "would update"}[s.Action]
		}
		fmt.Fprintf(&b, "%s: %s", s.Object, act)
		if s.Detail != "" {
			fmt.Fprintf(&b, " (%s)", s.Detail)
		}
		b.WriteByte('\n')
	}
	switch {
	case !r.complete:
	case !r.Changed():
		b.WriteString("nothing to change\n")
	case r.DryRun:
		b.WriteString("dry run: nothing changed\n")
	}
	return b.String()
}

// Apply provisions p through admin. It reads each object first and changes
// only what differs, so running it again changes nothing. With dryRun it
// changes nothing at all (and writes no password file) and reports what it
// would do. On error, the result holds the steps done so far.
func Apply(ctx context.Context, admin *Admin, p Plan, dryRun bool) (*Result, error) {
	r := &Result{DryRun: dryRun}
	agentPerm, mapperPerm, err := p.check(admin)
	if err != nil {
		return r, err
	}
	s := &applier{a: admin, r: r, dry: dryRun}
	if err := s.vhost(ctx, p.VHost); err != nil {
		return r, err
	}
	if !p.NoTopology {
		if err := s.topology(ctx, p.VHost, !p.NoEvents); err != nil {
			return r, err
		}
	}
	for _, u := range []struct {
		user User
		perm Permissions
	}{{p.Agent, agentPerm}, {p.Mapper, mapperPerm}} {
		if err := s.user(ctx, u.user); err != nil {
			return r, err
		}
		if err := s.permissions(ctx, p.VHost, u.user.Name, u.perm); err != nil {
			return r, err
		}
		if !p.NoEvents {
			if err := s.topicPermissions(ctx, p.VHost, u.user.Name, p.EventPrefixes); err != nil {
				return r, err
			}
		}
	}
	r.complete = true
	return r, nil
}

// ErrInvalidPlan is wrapped by the errors of a Plan that Apply refuses
// before talking to the broker.
var ErrInvalidPlan = errors.New("setup: invalid plan")

func (p Plan) check(admin *Admin) (agent, mapper Permissions, err error) {
	switch {
	case p.VHost == "":
		err = fmt.Errorf("%w: empty vhost", ErrInvalidPlan)
	case p.Agent.Name == "" || p.Mapper.Name == "":
		err = fmt.Errorf("%w: agent and mapper users must be named", ErrInvalidPlan)
	case p.Agent.Name == p.Mapper.Name:
		err = fmt.Errorf("%w: agent and mapper users are both %q: they need different permissions", ErrInvalidPlan, p.Agent.Name)
	case p.Agent.Name == admin.user || p.Mapper.Name == admin.user:
		err = fmt.Errorf("%w: the admin user %q cannot be the agent or mapper user", ErrInvalidPlan, admin.user)
	}
	if err != nil {
		return agent, mapper, err
	}
	if p.NoEvents && len(p.EventPrefixes) > 0 {
		return agent, mapper, fmt.Errorf("%w: event prefixes given with no events", ErrInvalidPlan)
	}
	if len(p.EventPrefixes) > 0 {
		if _, err := EventTopicPermissions(p.EventPrefixes...); err != nil {
			return agent, mapper, fmt.Errorf("%w: %s", ErrInvalidPlan, strings.TrimPrefix(err.Error(), "setup: "))
		}
	}
	ev := EventScope{Groups: p.EventGroups, NoEvents: p.NoEvents}
	if agent, err = (AgentScope{Identities: p.AgentIdentities, Services: p.AgentServices, Events: ev}).Permissions(); err == nil {
		mapper, err = MapperScope{Events: ev}.Permissions()
	}
	if err != nil {
		return agent, mapper, fmt.Errorf("%w: %s", ErrInvalidPlan, strings.TrimPrefix(err.Error(), "setup: "))
	}
	return agent, mapper, nil
}

type applier struct {
	a   *Admin
	r   *Result
	dry bool
}

func (s *applier) step(object string, act Action, detail string) {
	s.r.Steps = append(s.r.Steps, Step{Object: object, Action: act, Detail: detail})
}

// get returns false for a 404.
func (s *applier) get(ctx context.Context, path string, out any) (bool, error) {
	err := s.a.do(ctx, http.MethodGet, path, nil, out)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

func (s *applier) put(ctx context.Context, path string, body any) error {
	if s.dry {
		return nil
	}
	return s.a.do(ctx, http.MethodPut, path, body, nil)
}

func (s *applier) vhost(ctx context.Context, name string) error {
	obj := "vhost " + name
	ok, err := s.get(ctx, apiPath("vhosts", name), &struct{}{})
	if err != nil || ok {
		if ok {
			s.step(obj, Unchanged, "")
		}
		return err
	}
	if err := s.put(ctx, apiPath("vhosts", name), map[string]any{"description": "Warren application"}); err != nil {
		return err
	}
	s.step(obj, Created, "")
	return nil
}

// topology mirrors wire.Topology and, with events, the exchange of
// package events (kept in step by TestTopologyMatchesWire).
func (s *applier) topology(ctx context.Context, vhost string, events bool) error {
	exs := topologyExchanges
	if events {
		exs = append(slices.Clip(exs), eventExchange)
	}
	for _, ex := range exs {
		obj := "exchange " + ex.name
		path := apiPath("exchanges", vhost, ex.name)
		want := exchangeInfo{Type: ex.kind, Durable: true, Arguments: map[string]any{}}
		var got exchangeInfo
		ok, err := s.get(ctx, path, &got)
		if err != nil {
			return err
		}
		if ok {
			if got.Type != want.Type || got.Durable != want.Durable || got.AutoDelete || got.Internal || len(got.Arguments) > 0 {
				return fmt.Errorf("setup: %s in vhost %s exists as %+v, Warren needs a durable %s exchange without arguments: delete it first", obj, vhost, got, want.Type)
			}
			s.step(obj, Unchanged, "")
			continue
		}
		if err := s.put(ctx, path, want); err != nil {
			return adminHint(err, vhost)
		}
		s.step(obj, Created, ex.kind+", durable")
	}

	obj := "queue " + deadQueue
	path := apiPath("queues", vhost, deadQueue)
	var q queueInfo
	ok, err := s.get(ctx, path, &q)
	if err != nil {
		return err
	}
	if ok {
		args := maps.Clone(q.Arguments)
		delete(args, "x-queue-type") // 3.10 may report the default "classic"
		if !q.Durable || q.AutoDelete || q.Exclusive || len(args) > 0 {
			return fmt.Errorf("setup: %s in vhost %s exists as %+v, Warren needs a durable quorum (or classic) queue without other arguments: delete it first", obj, vhost, q)
		}
		s.step(obj, Unchanged, "")
	} else {
		// A quorum queue, as agents and mappers declare it
		// (wire.DeclareShared): a classic one stops taking dead letters
		// when its node is down.
		if err := s.put(ctx, path, queueInfo{Durable: true, Arguments: map[string]any{"x-queue-type": "quorum"}}); err != nil {
			return adminHint(err, vhost)
		}
		s.step(obj, Created, "quorum, durable")
	}

	obj = "binding " + deadExchange + " -> " + deadQueue
	bpath := apiPath("bindings", vhost, "e", deadExchange, "q", deadQueue)
	var bindings []struct {
		RoutingKey string `json:"routing_key"`
	}
	if _, err := s.get(ctx, bpath, &bindings); err != nil {
		return err
	}
	if slices.ContainsFunc(bindings, func(b struct {
		RoutingKey string `json:"routing_key"`
	}) bool {
		return b.RoutingKey == ""
	}) {
		s.step(obj, Unchanged, "")
		return nil
	}
	if !s.dry {
		if err := s.a.do(ctx, http.MethodPost, bpath, map[string]any{"routing_key": "", "arguments": map[string]any{}}, nil); err != nil {
			return adminHint(err, vhost)
		}
	}
	s.step(obj, Created, "")
	return nil
}

// adminHint explains the usual reason a declaration is refused.
func adminHint(err error, vhost string) error {
	var ae *APIError
	if errors.As(err, &ae) && (ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden) {
		return fmt.Errorf("%w (the admin user needs permissions on vhost %s to declare Warren's exchanges; grant them, or skip with --no-topology)", err, vhost)
	}
	return err
}

// Warren's topology (docs/protocol.md), as in wire.Topology.
const (
	deadExchange = wire.DeadLetterExchange
	deadQueue    = wire.DeadLetterQueue
)

var topologyExchanges = []struct{ name, kind string }{
	{wire.RequestExchange, "direct"},
	{wire.ServiceExchange, "direct"},
	{wire.HeartbeatExchange, "fanout"},
	{wire.ControlExchange, "fanout"},
	{deadExchange, "fanout"},
}

// eventExchange is the exchange of package events.
var eventExchange = struct{ name, kind string }{wire.EventExchange, "topic"}

func (s *applier) user(ctx context.Context, u User) error {
	obj := "user " + u.Name
	path := apiPath("users", u.Name)
	var got userInfo
	exists, err := s.get(ctx, path, &got)
	if err != nil {
		return err
	}
	pw, fromFile, err := knownPassword(u)
	if err != nil {
		return err
	}
	if exists {
		var notes []string
		if tags := got.tags(); len(tags) > 0 {
			notes = append(notes, fmt.Sprintf("warning: has tags %s; a Warren user needs none", strings.Join(tags, ",")))
		}
		if pw == "" {
			notes = append(notes, "password left as is")
			s.step(obj, Unchanged, strings.Join(notes, "; "))
			return nil
		}
		if match, known := checkPassword(got.HashingAlgorithm, got.PasswordHash, pw); match && known {
			s.step(obj, Unchanged, strings.Join(notes, "; "))
			return nil
		}
		if err := s.put(ctx, path, map[string]any{"password": pw, "tags": strings.Join(got.tags(), ",")}); err != nil {
			return err
		}
		what := "password changed"
		if fromFile {
			what = "password changed to the one in " + u.PasswordFile
		}
		s.step(obj, Updated, strings.Join(append([]string{what}, notes...), "; "))
		return nil
	}
	detail := "password given"
	switch {
	case pw != "" && fromFile:
		detail = "password from " + u.PasswordFile
	case pw == "":
		if u.PasswordFile == "" {
			return fmt.Errorf("setup: new user %s needs a password or a password file to write one to", u.Name)
		}
		if pw, err = newPassword(); err != nil {
			return err
		}
		detail = "password generated, written to " + u.PasswordFile
		if s.dry {
			detail = "a generated password would be written to " + u.PasswordFile
		} else if err := writePasswordFile(u.PasswordFile, pw); err != nil {
			return err
		}
	}
	if err := s.put(ctx, path, map[string]any{"password": pw, "tags": ""}); err != nil {
		return err
	}
	s.step(obj, Created, detail)
	return nil
}

func (s *applier) permissions(ctx context.Context, vhost, user string, want Permissions) error {
	obj := fmt.Sprintf("permissions of %s on %s", user, vhost)
	path := apiPath("permissions", vhost, user)
	var got Permissions
	ok, err := s.get(ctx, path, &got)
	if err != nil {
		return err
	}
	if ok && got == want {
		s.step(obj, Unchanged, "")
		return nil
	}
	if err := s.put(ctx, path, want); err != nil {
		return err
	}
	if ok {
		s.step(obj, Updated, want.String())
	} else {
		s.step(obj, Created, want.String())
	}
	return nil
}

// topicPermissions sets user's topic permissions on warren.events to
// those of prefixes; without prefixes it leaves them as they are, and
// says so when there are some.
func (s *applier) topicPermissions(ctx context.Context, vhost, user string, prefixes []string) error {
	obj := fmt.Sprintf("topic permissions of %s on %s", user, vhost)
	path := apiPath("topic-permissions", vhost, user)
	var list []TopicPermissions
	if _, err := s.get(ctx, path, &list); err != nil {
		return err
	}
	i := slices.IndexFunc(list, func(t TopicPermissions) bool { return t.Exchange == wire.EventExchange })
	if len(prefixes) == 0 {
		if i >= 0 {
			s.step(obj, Unchanged, list[i].String()+"; left as they are without --event-prefix")
		}
		return nil
	}
	want, err := EventTopicPermissions(prefixes...)
	if err != nil {
		return err
	}
	if i >= 0 && list[i] == want {
		s.step(obj, Unchanged, "")
		return nil
	}
	if err := s.put(ctx, path, want); err != nil {
		return err
	}
	if i >= 0 {
		s.step(obj, Updated, want.String())
	} else {
		s.step(obj, Created, want.String())
	}
	return nil
}
