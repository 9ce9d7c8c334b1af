package agent

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Discovery (docs/protocol.md): the agent answers PING, INFO and STATS
// for each actor it hosts, a NATS micro "service" named after the actor
// whose id is the agent's identity and whose endpoints are the actor's
// methods.

// semver is the regular expression semver.org suggests.
var semver = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$`)

// endpointStats counts one service path's handler runs.
type endpointStats struct {
	requests atomic.Int64
	errors   atomic.Int64
	nanos    atomic.Int64
	mu       sync.Mutex
	lastErr  string
}

// record counts one handler run of d that returned err. A declined
// request is not counted: another agent will run it.
func (s *endpointStats) record(d time.Duration, err error) {
	if errors.Is(err, ErrDecline) {
		return
	}
	s.requests.Add(1)
	s.nanos.Add(int64(d))
	if err != nil {
		s.errors.Add(1)
		msg := codeOf(err) + ": " + messageOf(err)
		s.mu.Lock()
		s.lastErr = msg
		s.mu.Unlock()
	}
}

func (s *endpointStats) read(e *wire.EndpointStats) {
	e.NumRequests = int(s.requests.Load())
	e.NumErrors = int(s.errors.Load())
	e.ProcessingTime = time.Duration(s.nanos.Load())
	if e.NumRequests > 0 {
		e.AverageProcessingTime = e.ProcessingTime / time.Duration(e.NumRequests)
	}
	s.mu.Lock()
	e.LastError = s.lastErr
	s.mu.Unlock()
}

// splitPath cuts "/actor/method" into its actor and method.
func splitPath(p string) (actor, method string) {
	actor, method, _ = strings.Cut(strings.TrimPrefix(p, "/"), "/")
	return actor, method
}

// actors groups the agent's services by actor, actors and methods sorted.
func (a *Agent) actors() (names []string, by map[string][]*service) {
	by = map[string][]*service{}
	for _, p := range a.Services() {
		actor, _ := splitPath(p)
		if _, ok := by[actor]; !ok {
			names = append(names, actor)
		}
		by[actor] = append(by[actor], a.service(p))
	}
	return names, by
}

func (a *Agent) serviceIdentity(actor string) wire.ServiceIdentity {
	md := map[string]string{}
	if len(a.cfg.Tags) > 0 {
		md["warren.tags"] = strings.Join(a.cfg.Tags, ",")
	}
	return wire.ServiceIdentity{Name: actor, ID: a.cfg.Identity, Version: a.cfg.Version, Metadata: md}
}

// queueGroup is the shared queue the agent consumes for path, "" if none.
func (a *Agent) queueGroup(path string) string {
	if a.cfg.NoSharedQueues {
		return ""
	}
	return wire.ServiceQueue(path)
}

// discoveryAnswer is actor's answer to verb.
func (a *Agent) discoveryAnswer(verb, actor string, svcs []*service) any {
	id := a.serviceIdentity(actor)
	switch verb {
	case wire.VerbPing:
		return wire.ServicePing{ServiceIdentity: id, Type: wire.PingResponseType}
	case wire.VerbInfo:
		info := wire.ServiceInfo{ServiceIdentity: id, Type: wire.InfoResponseType, Endpoints: []wire.EndpointInfo{}}
		draining := a.draining.Load()
		for _, s := range svcs {
			_, method := splitPath(s.path)
			md := map[string]string{}
			if draining || !s.isActive() {
				md["warren.inactive"] = "true"
			}
			info.Endpoints = append(info.Endpoints, wire.EndpointInfo{Name: method, Subject: s.path, QueueGroup: a.queueGroup(s.path), Metadata: md})
		}
		return info
	default:
		st := wire.ServiceStats{ServiceIdentity: id, Type: wire.StatsResponseType, Started: a.started.UTC(), Endpoints: []wire.EndpointStats{}}
		for _, s := range svcs {
			_, method := splitPath(s.path)
			e := wire.EndpointStats{Name: method, Subject: s.path, QueueGroup: a.queueGroup(s.path)}
			s.stats.read(&e)
			st.Endpoints = append(st.Endpoints, e)
		}
		return st
	}
}

// discoverTimeout bounds the answers to one discovery question.
const discoverTimeout = 2 * time.Second

// discover answers the discovery question d, one message per matching
// actor, within discoverTimeout or a ping interval, whichever is shorter,
// so that the serve loop is not held up. A malformed question is logged
// and dropped: it came on the fanout every agent reads, and has no one to
// answer.
func (a *Agent) discover(ctx context.Context, d *transport.Delivery) {
	q, err := wire.ReadDiscover(d)
	if err != nil {
		a.log.Warn("bad discovery question", "err", err, "from", d.AppID)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, min(discoverTimeout, a.cfg.PingInterval))
	defer cancel()
	names, by := a.actors()
	for _, actor := range names {
		if !q.Matches(actor, a.cfg.Identity) {
			continue
		}
		msg, err := wire.DiscoverReply(d, a.cfg.Identity, a.discoveryAnswer(q.Verb, actor, by[actor]))
		if err == nil {
			err = a.tr.Publish(ctx, transport.DefaultExchange, d.ReplyTo, msg, transport.PublishOptions{})
		}
		if err != nil {
			a.log.Warn("discovery answer failed", "err", err, "verb", q.Verb, "service", actor)
			return
		}
	}
}
