package secure

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"sync/atomic"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Reason is why a message was rejected: the value of the
// warren-dead-reason header of its dead letter, and the warren-error-code
// of the error reply its sender gets.
type Reason string

// Rejection reasons.
const (
	// ReasonUnsigned: the message is not a secure envelope.
	ReasonUnsigned Reason = "security_unsigned"
	// ReasonUntrusted: the signer is unknown, its certificate is not signed
	// by the Authority, is revoked, or names another identity.
	ReasonUntrusted Reason = "security_untrusted"
	// ReasonBadSignature: the signature does not verify (body, properties or
	// warren- headers altered), the signer is not the claimed sender, or
	// the ciphertext does not decrypt.
	ReasonBadSignature Reason = "security_bad_signature"
	// ReasonExpired: the signer's certificate (or its CA's) is expired or
	// not yet valid.
	ReasonExpired Reason = "security_expired"
	// ReasonReplayed: the message was seen before, or was signed before the
	// replay window (or too far in the future).
	ReasonReplayed Reason = "security_replayed"
	// ReasonNotForMe: the message is addressed or encrypted to another
	// identity or certificate.
	ReasonNotForMe Reason = "security_not_for_me"
	// ReasonMalformed: the envelope does not decode, is too large or too
	// deep.
	ReasonMalformed Reason = "security_malformed"
)

// Reasons lists every rejection reason.
var Reasons = []Reason{ReasonUnsigned, ReasonUntrusted, ReasonBadSignature, ReasonExpired, ReasonReplayed, ReasonNotForMe, ReasonMalformed}

func reasonIndex(r Reason) int {
	for i, x := range Reasons {
		if x == r {
			return i
		}
	}
	return len(Reasons) - 1
}

type stats struct {
	sealed, opened atomic.Int64
	rejected       [7]atomic.Int64
	deadLetterFail atomic.Int64
}

// Stats counts what a Transport did since Wrap.
type Stats struct {
	Sealed   int64            // messages signed (and encrypted) by Publish
	Opened   int64            // deliveries verified and handed on
	Rejected map[Reason]int64 // deliveries rejected, by reason (every reason present)
	// DeadLetterFailures counts rejections whose dead-letter copy could not
	// be published; the message was then rejected without requeue.
	DeadLetterFailures int64
	// ReplayFloor is zero until the replay cache overflowed; then messages
	// signed at or before it are refused as security_replayed, even within
	// MaxAge. ReplayFloorRefusals counts them: when it grows, raise
	// Config.ReplayCache.
	ReplayFloor         time.Time
	ReplayFloorRefusals int64
}

// Stats returns the counters.
func (t *Transport) Stats() Stats {
	s := Stats{
		Sealed:             t.stats.sealed.Load(),
		Opened:             t.stats.opened.Load(),
		Rejected:           make(map[Reason]int64, len(Reasons)),
		DeadLetterFailures: t.stats.deadLetterFail.Load(),
	}
	for i, r := range Reasons {
		s.Rejected[r] = t.stats.rejected[i].Load()
	}
	floor, n := t.replay.stats()
	if floor > 0 {
		s.ReplayFloor = time.UnixMilli(floor)
	}
	s.ReplayFloorRefusals = n
	return s
}

// reject handles a delivery that failed verification: it is logged
// without its payload, dead-lettered with its reason, counted and, when the
// rejection is one to tell an authenticated sender about (see
// rejection.answer) and it waits for a reply, answered with an error.
func (t *Transport) reject(ctx context.Context, d *transport.Delivery, rej *rejection) {
	// Counted once settled: a rejection in the stats has been acked or
	// nacked (its consumer may be stopped right after).
	defer t.stats.rejected[reasonIndex(rej.reason)].Add(1)
	t.log.Warn("secure: message rejected",
		"reason", string(rej.reason), "err", rej.err,
		"type", d.Type, "message_id", d.MessageID, "correlation_id", d.CorrelationID,
		"exchange", d.Exchange, "routing_key", d.RoutingKey,
		"claimed_from", d.AppID, "authenticated", rej.signer != "",
		"size", len(d.Body))
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if rej.answer && rej.signer != "" && d.ReplyTo != "" && d.Type != wire.TypeReply {
		t.errorReply(pctx, d, rej)
	}
	if err := wire.PublishDeadLetter(pctx, t.inner, d, string(rej.reason), rej.err.Error(), t.self); err != nil {
		t.stats.deadLetterFail.Add(1)
		t.log.Error("secure: dead-letter publish failed: rejecting instead", "err", err, "reason", string(rej.reason), "message_id", d.MessageID)
		if err := d.Nack(false); err != nil {
			t.log.Warn("secure: reject failed", "err", err, "message_id", d.MessageID)
		}
		return
	}
	if err := d.Ack(); err != nil {
		t.log.Warn("secure: ack of a dead-lettered message failed", "err", err, "message_id", d.MessageID)
	}
}

// errorReply tells an authenticated sender why its request was refused,
// as the agent would: a signed (and encrypted) error reply.
func (t *Transport) errorReply(ctx context.Context, d *transport.Delivery, rej *rejection) {
	reply := wire.ErrorReply(d, t.self, rej.signer, string(rej.reason), rej.err.Error())
	if err := t.Publish(ctx, transport.DefaultExchange, d.ReplyTo, reply, transport.PublishOptions{}); err != nil {
		t.log.Warn("secure: error reply failed", "err", err, "reason", string(rej.reason), "to", rej.signer)
	}
}

func fingerprintDER(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
