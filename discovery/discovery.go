// Package discovery asks a Warren fabric which services run, in the shape
// of NATS micro's discovery (ADR-32): PING, INFO and STATS, answered by
// every service instance (an actor on one agent) with NATS micro's JSON.
// The question and answers are plain AMQP (docs/protocol.md), so tools
// that are not Warren can ask too; this is Go's client, which
// `warren services` uses.
//
//	infos, err := discovery.Info(ctx, tr, discovery.Query{Name: "simple"})
package discovery

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Query narrows and bounds a question.
type Query struct {
	Name string // only the service (actor) of this name; "" for all
	ID   string // only the agent of this identity; "" for all
	// Wait is how long answers are collected; 0 means one second. Every
	// live agent answers at once: the wait covers the slowest.
	Wait time.Duration
	// From is the asker's identity, sent in app_id; "" generates one.
	From string
}

// Ask sends the question verb (wire.VerbPing, VerbInfo or VerbStats) and
// returns the answers that came within q.Wait, each checked with
// wire.ReadDiscoverReply, sorted by name and id. Malformed answers are
// skipped and counted in the error only when no good answer came.
func Ask(ctx context.Context, tr transport.Transport, verb string, q Query) ([]json.RawMessage, error) {
	if q.Wait <= 0 {
		q.Wait = time.Second
	}
	if q.From == "" {
		q.From = "discovery-" + randomID()
	}
	corr := randomID()
	if err := wire.Topology(ctx, tr); err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	qname, err := tr.DeclareQueue(ctx, transport.Queue{Exclusive: true, AutoDelete: true})
	if err != nil {
		return nil, fmt.Errorf("discovery: declare reply queue: %w", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	answers, err := tr.Consume(cctx, qname, transport.ConsumeOptions{AutoAck: true, Exclusive: true, Prefetch: 100})
	if err != nil {
		return nil, fmt.Errorf("discovery: consume reply queue: %w", err)
	}
	key, msg, err := wire.NewDiscover(wire.DiscoverQuestion{Verb: verb, Name: q.Name, ID: q.ID}, q.From, qname, corr)
	if err != nil {
		return nil, err
	}
	if err := tr.Publish(ctx, wire.ControlExchange, key, msg, transport.PublishOptions{Confirm: true}); err != nil {
		return nil, fmt.Errorf("discovery: publish %s: %w", key, err)
	}
	t := time.NewTimer(q.Wait)
	defer t.Stop()
	type answer struct {
		name, id string
		body     json.RawMessage
	}
	var got []answer
	var bad []error
	seen := map[[2]string]bool{}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			sort.Slice(got, func(i, j int) bool {
				if got[i].name != got[j].name {
					return got[i].name < got[j].name
				}
				return got[i].id < got[j].id
			})
			out := make([]json.RawMessage, 0, len(got))
			for _, a := range got {
				out = append(out, a.body)
			}
			if len(out) == 0 && len(bad) > 0 {
				return nil, fmt.Errorf("discovery: only malformed answers: %w", errors.Join(bad...))
			}
			return out, nil
		case d, ok := <-answers:
			if !ok {
				return nil, fmt.Errorf("discovery: reply queue closed: %w", transport.ErrConnectionLost)
			}
			body, typ, err := wire.ReadDiscoverReply(d, corr)
			if err == nil && typ != want[verb] {
				err = fmt.Errorf("%w: answer of type %s to %s", wire.ErrBadDiscover, typ, verb)
			}
			if err != nil {
				bad = append(bad, err)
				continue
			}
			var head wire.ServiceIdentity
			_ = json.Unmarshal(body, &head) // ReadDiscoverReply decoded it
			k := [2]string{head.Name, head.ID}
			if seen[k] {
				continue // a duplicate (redelivery): the first counts
			}
			seen[k] = true
			got = append(got, answer{head.Name, head.ID, body})
		}
	}
}

// Ping asks PING.
func Ping(ctx context.Context, tr transport.Transport, q Query) ([]wire.ServicePing, error) {
	return ask[wire.ServicePing](ctx, tr, wire.VerbPing, q)
}

// Info asks INFO.
func Info(ctx context.Context, tr transport.Transport, q Query) ([]wire.ServiceInfo, error) {
	return ask[wire.ServiceInfo](ctx, tr, wire.VerbInfo, q)
}

// Stats asks STATS.
func Stats(ctx context.Context, tr transport.Transport, q Query) ([]wire.ServiceStats, error) {
	return ask[wire.ServiceStats](ctx, tr, wire.VerbStats, q)
}

func ask[T any](ctx context.Context, tr transport.Transport, verb string, q Query) ([]T, error) {
	raw, err := Ask(ctx, tr, verb, q)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(raw))
	for _, r := range raw {
		var v T
		if err := json.Unmarshal(r, &v); err != nil {
			return nil, fmt.Errorf("discovery: %s answer: %w", verb, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// want is the answer type of each verb.
var want = map[string]string{
	wire.VerbPing:  wire.PingResponseType,
	wire.VerbInfo:  wire.InfoResponseType,
	wire.VerbStats: wire.StatsResponseType,
}

func randomID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
