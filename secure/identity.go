package secure

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hpke"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
)

// IdentityScheme is the URI scheme of a subject alternative name that names
// a Warren identity: a certificate carrying the URI SAN "warren:fred" is
// fred's, whatever its Common Name. A certificate trusted because the
// Authority signed it must carry one; only a certificate pinned in the
// Store may name its identity by its subject Common Name alone.
const IdentityScheme = "warren"

// IdentityOf returns the Warren identity a certificate names: its first URI
// SAN with scheme "warren" (warren:ID), else its subject Common Name. The
// Common Name counts only for a certificate pinned in a Store: one trusted
// through an Authority needs the URI SAN (a CA may well sign certificates
// for other purposes, whose Common Names are no Warren identities).
func IdentityOf(cert *x509.Certificate) (string, error) {
	return identityOf(cert, true)
}

// identityOf is IdentityOf, falling back to the Common Name only when
// allowCN.
func identityOf(cert *x509.Certificate, allowCN bool) (string, error) {
	if cert == nil {
		return "", errors.New("secure: nil certificate")
	}
	id, found := "", false
	for _, u := range cert.URIs {
		if u.Scheme == IdentityScheme {
			id, found = u.Opaque, true
			if id == "" {
				id = u.Host
			}
			break
		}
	}
	if !found {
		if !allowCN {
			return "", fmt.Errorf("secure: certificate %s has no URI SAN %s:ID: a certificate trusted through the Authority must name its identity so (its Common Name %q counts only when the certificate is pinned in the Store)", Fingerprint(cert)[:16], IdentityScheme, cert.Subject.CommonName)
		}
		id = cert.Subject.CommonName
	}
	if err := checkIdentity(id); err != nil {
		return "", fmt.Errorf("secure: certificate %s: %w", Fingerprint(cert), err)
	}
	return id, nil
}

// checkIdentity applies the protocol's rule: non-empty, no whitespace,
// control characters or slashes.
func checkIdentity(id string) error {
	if id == "" {
		return errors.New("no identity (want a Common Name or a warren:ID URI SAN)")
	}
	if len(id) > 255 {
		return fmt.Errorf("identity longer than 255 bytes")
	}
	for _, r := range id {
		if r <= ' ' || r == '/' || r == 0x7f {
			return fmt.Errorf("identity %q: no spaces, control characters or slashes", id)
		}
	}
	return nil
}

// Fingerprint returns the SHA-256 of the certificate's DER encoding in lower
// case hex: how docs, logs and deny lists name a certificate.
func Fingerprint(cert *x509.Certificate) string {
	if cert == nil {
		return ""
	}
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// PrivateKey holds a private key so that it is never printed: fmt, slog and
// encoding/json see "[redacted]". The key bytes are two pointers away, so
// that even where fmt cannot call its methods (an unexported field of a
// value being printed, with any verb), it shows addresses, never key bytes.
type PrivateKey struct {
	h *keyHolder
}

// keyHolder holds one of the keys, each behind a pointer (an Ed25519 key
// is a byte slice, which fmt would print).
type keyHolder struct {
	ecdsa *ecdsa.PrivateKey
	ed    *ed25519.PrivateKey
}

// signer returns the key, nil for the zero PrivateKey.
func (k PrivateKey) signer() crypto.Signer {
	switch {
	case k.h == nil:
		return nil
	case k.h.ed != nil:
		return *k.h.ed
	}
	return k.h.ecdsa
}

// NewPrivateKey wraps an ECDSA P-256 or Ed25519 private key.
func NewPrivateKey(k crypto.Signer) (PrivateKey, error) {
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		if k == nil {
			return PrivateKey{}, errors.New("secure: nil private key")
		}
		if k.Curve != elliptic.P256() {
			return PrivateKey{}, fmt.Errorf("secure: ECDSA key on %s: want P-256", k.Curve.Params().Name)
		}
		return PrivateKey{h: &keyHolder{ecdsa: k}}, nil
	case ed25519.PrivateKey:
		if len(k) != ed25519.PrivateKeySize {
			return PrivateKey{}, errors.New("secure: malformed Ed25519 private key")
		}
		return PrivateKey{h: &keyHolder{ed: &k}}, nil
	case nil:
		return PrivateKey{}, errors.New("secure: nil private key")
	default:
		return PrivateKey{}, fmt.Errorf("secure: %T private key: want ECDSA P-256 or Ed25519", k)
	}
}

const redacted = "[redacted]"

// LogValue implements slog.LogValuer: the key is never logged.
func (PrivateKey) LogValue() slog.Value { return slog.StringValue(redacted) }

// String implements fmt.Stringer: the key is never printed.
func (PrivateKey) String() string { return redacted }

// GoString implements fmt.GoStringer, for %#v.
func (PrivateKey) GoString() string { return "secure.PrivateKey(" + redacted + ")" }

// MarshalText keeps the key out of JSON, YAML and every text encoding.
func (PrivateKey) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Format implements fmt.Formatter: every verb prints "[redacted]" (%#v its
// GoString).
func (k PrivateKey) Format(f fmt.State, verb rune) { formatAs(f, verb, k.String(), k.GoString()) }

// formatAs writes s, or gs for %#v, as a string whatever the verb, so that
// no verb (%x, %d, …) walks the fields of a value holding a key.
func formatAs(f fmt.State, verb rune, s, gs string) {
	if verb == 'v' && f.Flag('#') {
		fmt.Fprint(f, gs)
		return
	}
	fmt.Fprint(f, s)
}

// Identity is a certificate and its private key: what a participant signs
// with and decrypts with. Printing or logging it shows the identity and the
// certificate's fingerprint, never the key.
type Identity struct {
	name string
	cert *x509.Certificate
	key  PrivateKey
	alg  string
	kem  hpke.PrivateKey // nil for Ed25519 keys, which cannot decrypt
}

// NewIdentity pairs a certificate with its private key (ECDSA P-256 or
// Ed25519). It fails when the key does not match the certificate or the
// certificate names no valid identity.
func NewIdentity(cert *x509.Certificate, key crypto.Signer) (*Identity, error) {
	pk, err := NewPrivateKey(key)
	if err != nil {
		return nil, err
	}
	if cert == nil {
		return nil, errors.New("secure: nil certificate")
	}
	name, err := IdentityOf(cert)
	if err != nil {
		return nil, err
	}
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("secure: the private key does not match the certificate of %s", name)
	}
	id := &Identity{name: name, cert: cert, key: pk}
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		id.alg = algES256
		ek, err := k.ECDH()
		if err != nil {
			return nil, fmt.Errorf("secure: key of %s: %w", name, err)
		}
		if id.kem, err = hpke.NewDHKEMPrivateKey(ek); err != nil {
			return nil, fmt.Errorf("secure: key of %s: %w", name, err)
		}
	case ed25519.PrivateKey:
		id.alg = algEdDSA
	}
	return id, nil
}

// Name returns the identity the certificate names: the agent or mapper
// identity to configure.
func (id *Identity) Name() string { return id.name }

// Certificate returns the identity's certificate.
func (id *Identity) Certificate() *x509.Certificate { return id.cert }

// Key returns the private key, wrapped so that it is never printed.
func (id *Identity) Key() PrivateKey { return id.key }

// CanDecrypt reports whether messages can be encrypted to this identity:
// true for ECDSA P-256 keys, false for Ed25519 (sign only).
func (id *Identity) CanDecrypt() bool { return id.kem != nil }

// String describes the identity without its key. It and the other
// printing methods have value receivers, so that an Identity value prints
// as its pointer does (fmt would otherwise print its fields).
func (id Identity) String() string {
	if id.cert == nil {
		return "secure.Identity(" + id.name + ")"
	}
	return fmt.Sprintf("secure.Identity(%s, sha256:%s)", id.name, Fingerprint(id.cert))
}

// GoString is String, so that %#v does not print the key.
func (id Identity) GoString() string { return id.String() }

// Format implements fmt.Formatter: every verb prints String.
func (id Identity) Format(f fmt.State, verb rune) { formatAs(f, verb, id.String(), id.GoString()) }

// LogValue implements slog.LogValuer: name and fingerprint, never the key.
func (id Identity) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("name", id.name),
		slog.String("fingerprint", Fingerprint(id.cert)),
		slog.String("key", redacted),
	)
}

// sign signs msg: ECDSA with SHA-256 (ASN.1 signature) or pure Ed25519.
func (id *Identity) sign(rand interface{ Read([]byte) (int, error) }, msg []byte) ([]byte, error) {
	switch id.alg {
	case algES256:
		h := sha256.Sum256(msg)
		return id.key.signer().Sign(rand, h[:], crypto.SHA256)
	case algEdDSA:
		return id.key.signer().Sign(rand, msg, crypto.Hash(0))
	}
	return nil, fmt.Errorf("secure: unsupported algorithm %q", id.alg)
}

// Signature algorithms, named as in JOSE (RFC 7518, RFC 8037).
const (
	algES256 = "ES256" // ECDSA P-256 with SHA-256, ASN.1 DER signature
	algEdDSA = "EdDSA" // Ed25519
)

// keyAlg returns the signature algorithm of a certificate's public key.
func keyAlg(cert *x509.Certificate) (string, error) {
	switch k := cert.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return "", fmt.Errorf("ECDSA key on %s: want P-256", k.Curve.Params().Name)
		}
		return algES256, nil
	case ed25519.PublicKey:
		return algEdDSA, nil
	}
	return "", fmt.Errorf("%s key: want ECDSA P-256 or Ed25519", strings.ToLower(cert.PublicKeyAlgorithm.String()))
}

// verifySig checks sig over msg with the certificate's key.
func verifySig(cert *x509.Certificate, alg string, msg, sig []byte) bool {
	switch k := cert.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if alg != algES256 {
			return false
		}
		h := sha256.Sum256(msg)
		return ecdsa.VerifyASN1(k, h[:], sig)
	case ed25519.PublicKey:
		return alg == algEdDSA && ed25519.Verify(k, msg, sig)
	}
	return false
}

// kemPublicKey returns the HPKE public key of a certificate, or an error
// for keys that cannot be encrypted to.
func kemPublicKey(cert *x509.Certificate) (hpke.PublicKey, error) {
	k, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: %s key (only ECDSA P-256 certificates can receive encrypted messages)", ErrCannotEncrypt, strings.ToLower(cert.PublicKeyAlgorithm.String()))
	}
	ek, err := k.ECDH()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCannotEncrypt, err)
	}
	if ek.Curve() != ecdh.P256() {
		return nil, fmt.Errorf("%w: not a P-256 key", ErrCannotEncrypt)
	}
	return hpke.NewDHKEMPublicKey(ek)
}
