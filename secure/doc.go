// Package secure is Warren's secure mode: a transport decorator that signs
// every message with its sender's X.509 certificate key and encrypts
// messages addressed to one identity to that identity's certificate, so
// that agents and mappers need no change to run securely:
//
//	cfg, err := secure.ConfigFromFiles("fred.crt", "fred.key", "ca.crt")
//	tr, err := secure.Wrap(amqpTransport, cfg, secure.WithLogger(log))
//	a, err := agent.New(tr, agent.Config{Identity: cfg.Identity.Name()})
//
// # Format
//
// A secure message is an ordinary Warren message whose body is a JSON
// envelope (content type application/vnd.warren.secure+json) holding the
// signer, its certificate, the original content type and the body:
// plaintext, or an RFC 9180 HPKE ciphertext (DHKEM(P-256, HKDF-SHA256),
// HKDF-SHA256, AES-128-GCM, from crypto/hpke). The signature (ECDSA P-256
// with SHA-256, or Ed25519) covers the body, the exchange and routing key
// the message was published with, and the security-relevant AMQP
// properties and headers: type, message_id, correlation_id, reply_to,
// expiration, timestamp and every warren- header. Headers stay where they
// are, readable by the broker. A receiver accepts a message only from the
// queue its signed exchange and routing key route to. docs/security.md specifies the format
// exactly, with the threat model and the setup.
//
// Messages carrying a warren-to header (requests and pushes to an agent,
// replies) are encrypted to it unless Config.SignOnly; broadcasts
// (heartbeats, announces) are signed only. An Ed25519 identity, which
// nothing can be encrypted to, must be SignOnly.
//
// # Trust
//
// A sender's certificate is trusted when it is in the Store (pinned), or
// when it chains to the Authority; either way it must name the sender
// (equal to the message's app_id) in its URI SAN warren:ID (a pinned
// certificate may use its Common Name instead), be within its validity
// period, allow digital signatures and not be on the DenyList. Messages carry their sender's certificate, so with an
// Authority a fabric needs no distribution of certificates: a mapper
// learns each agent's certificate from its heartbeats, an agent each
// mapper's from its requests.
//
// # Rejection
//
// A delivery that is unsigned, signed by an unknown or untrusted identity,
// altered, signed with an expired certificate, replayed (seen before, or
// older than Config.MaxAge), addressed or encrypted to someone else, or
// malformed is never handed to the agent or mapper. It is dead-lettered
// (a copy to warren.dlx with headers warren-dead-reason, one of the Reason
// values, and warren-error; publisher-confirmed and mandatory, as every
// dead letter (wire.PublishDeadLetter), then the original is acked; if
// that fails or no queue takes it the original is rejected without
// requeue), counted
// (Transport.Stats), logged without its payload, and, when its sender was
// authenticated, gave a reply_to and the message itself is at fault (not a
// copy an attacker replayed or moved to another queue), answered with an
// error reply whose warren-error-code is the reason.
//
// # Secrets
//
// Keys come from files (LoadIdentity) or environment variables
// (LoadIdentityFromEnv), never from command-line arguments. PrivateKey and
// Identity print and log as "[redacted]" and a fingerprint.
package secure
