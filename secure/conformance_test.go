package secure

import (
	"context"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/transport/transporttest"
)

// conformanceSkips are the scenarios of the conformance suite a secure
// Transport changes on purpose (docs/security.md), with why.
var conformanceSkips = func() map[string]string {
	const (
		fills = "a secure transport sets app_id (its identity), message_id and timestamp on every message it signs"
		once  = "a secure transport accepts a message once: a copy the broker routes to a second queue it consumes is a replay (security_replayed)"
		dead  = "a dead-lettered copy arrives from the dead-letter exchange, not from where it was signed for (security_bad_signature): dead letters are read with a plain transport"
	)
	m := map[string]string{
		"EmptyMessageRoundTrip": fills,
		"UnreadableHeadersDelivered": "a secure transport refuses a message whose headers the transport removed " +
			"(security_malformed: TestRejections): it is dead-lettered, not delivered",
	}
	for _, s := range []string{"DirectRouting", "FanoutToAllBoundQueues", "TopicWildcards"} {
		m[s] = once
	}
	for _, s := range []string{"NackWithoutRequeueDeadLetters", "QueueTTLExpiresToDLX", "PerMessageExpirationToDLX",
		"MaxLengthDropsOrDeadLettersOldest", "DeadLetterRoutingKey", "DeadLetterCountIncrements", "QuorumDeliveryLimit"} {
		m[s] = dead
	}
	return m
}()

// TestConformance runs the transport conformance suite through a secure
// Transport: it is a transport.Transport, and what it adds (signing,
// encryption, verification) must change nothing else the broker does.
func TestConformance(t *testing.T) {
	p := testPKI(t)
	// The suite's messages name "transporttest" as their sender: a secure
	// transport signs as, and only as, the identity of its certificate.
	id, err := p.ca.Issue("transporttest", CertOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := p.caConfig("fred")
	cfg.Identity = id
	wrap := func(t *testing.T, inner transport.Transport) transport.Transport {
		tr, err := Wrap(inner, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	t.Run("mem", func(t *testing.T) {
		b := mem.NewBroker()
		t.Cleanup(func() { b.Close() })
		transporttest.Run(t, func(t *testing.T) transport.Transport { return wrap(t, b.Connect()) }, transporttest.Harness{Skip: conformanceSkips})
	})
	t.Run("rabbitmq", func(t *testing.T) {
		url := testenv.AMQPURL(t)
		transporttest.Run(t, func(t *testing.T) transport.Transport {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			inner, err := amqp.Dial(ctx, url, amqp.Config{ConnectionName: "warren-secure-conformance"}, amqp.WithLogger(testenv.Logger(t)))
			if err != nil {
				t.Fatal(err)
			}
			return wrap(t, inner)
		}, transporttest.Harness{Skip: conformanceSkips})
	})
}
