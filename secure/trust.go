package secure

import (
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// Authority is a set of certificate authorities: a certificate that chains
// to one of its roots (through its intermediates) is trusted for the
// identity it names, without being distributed beforehand.
type Authority struct {
	roots         *x509.CertPool
	intermediates *x509.CertPool
	n             int
}

// NewAuthority trusts certificates signed by roots.
func NewAuthority(roots ...*x509.Certificate) *Authority {
	a := &Authority{roots: x509.NewCertPool(), intermediates: x509.NewCertPool()}
	for _, r := range roots {
		if r != nil {
			a.roots.AddCert(r)
			a.n++
		}
	}
	return a
}

// AddIntermediates adds intermediate CA certificates used to build chains.
func (a *Authority) AddIntermediates(certs ...*x509.Certificate) {
	for _, c := range certs {
		if c != nil {
			a.intermediates.AddCert(c)
		}
	}
}

// DenyList names revoked certificates: by SHA-256 fingerprint (64 hex
// digits, as Fingerprint prints it) or by serial number ("serial:" followed
// by hex digits; "serial=HEX" as `openssl x509 -serial` prints it works too).
// Colons and a "sha256:" prefix are ignored in fingerprints, so
// `openssl x509 -fingerprint -sha256` output can be pasted. A denied certificate
// is refused wherever it appears in a chain.
type DenyList struct {
	fingerprints map[string]bool
	serials      map[string]bool // lower-case hex without leading zeros
}

// ParseDenyList parses deny list entries; blank entries and entries
// starting with # are skipped.
func ParseDenyList(entries ...string) (*DenyList, error) {
	d := &DenyList{fingerprints: map[string]bool{}, serials: map[string]bool{}}
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if e == "" || strings.HasPrefix(e, "#") {
			continue
		}
		lower := strings.ToLower(e)
		if s, ok := cutAnyPrefix(lower, "serial:", "serial="); ok {
			s = strings.ReplaceAll(s, ":", "")
			n, ok := new(big.Int).SetString(s, 16)
			if !ok {
				return nil, fmt.Errorf("secure: deny list entry %q: serial is not hex", e)
			}
			d.serials[n.Text(16)] = true
			continue
		}
		fp, _ := cutAnyPrefix(lower, "sha256:", "sha256 fingerprint=")
		low := strings.ReplaceAll(fp, ":", "")
		if b, err := hex.DecodeString(low); err != nil || len(b) != 32 {
			return nil, fmt.Errorf("secure: deny list entry %q: want a SHA-256 fingerprint (64 hex digits) or serial:HEX", e)
		}
		d.fingerprints[low] = true
	}
	return d, nil
}

func cutAnyPrefix(s string, prefixes ...string) (string, bool) {
	for _, p := range prefixes {
		if rest, ok := strings.CutPrefix(s, p); ok {
			return rest, true
		}
	}
	return s, false
}

// LoadDenyList reads a deny list file: one entry per line (see DenyList),
// blank lines and lines starting with # skipped.
func LoadDenyList(path string) (*DenyList, error) {
	b, err := readSmall(path)
	if err != nil {
		return nil, fmt.Errorf("secure: deny list: %w", err)
	}
	d, err := ParseDenyList(strings.Split(string(b), "\n")...)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return d, nil
}

// Denied reports whether cert is on the list.
func (d *DenyList) Denied(cert *x509.Certificate) bool {
	if d == nil || cert == nil {
		return false
	}
	if d.fingerprints[Fingerprint(cert)] {
		return true
	}
	return cert.SerialNumber != nil && d.serials[cert.SerialNumber.Text(16)]
}

// certError is why a certificate is not trusted, with its reason.
type certError struct {
	reason Reason
	err    error
}

func (e *certError) Error() string { return e.err.Error() }
func (e *certError) Unwrap() error { return e.err }

func untrusted(format string, args ...any) *certError {
	return &certError{ReasonUntrusted, fmt.Errorf(format, args...)}
}

// checkCert decides whether cert may speak for identity at now: it names
// identity, has a supported key allowed to sign, is within its validity
// period, is not denied, and (with an authority) chains to a root. pinned
// says the certificate came from the Store, which trusts it by itself when
// there is no authority. One that is not pinned (it is trusted because
// the authority signed it) must name its identity in a warren: URI SAN
// and have a key usage extension that allows digital signatures: the CA
// vouches for a Warren identity only through a certificate made for one.
func checkCert(cert *x509.Certificate, identity string, now time.Time, auth *Authority, deny *DenyList, pinned bool) *certError {
	name, err := identityOf(cert, pinned)
	if err != nil {
		return untrusted("%v", err)
	}
	if name != identity {
		return untrusted("certificate %s names %q, not %q", Fingerprint(cert)[:16], name, identity)
	}
	if _, err := keyAlg(cert); err != nil {
		return untrusted("certificate of %s: %v", identity, err)
	}
	switch {
	case cert.KeyUsage == 0 && !pinned:
		return untrusted("certificate of %s has no key usage extension: one trusted through the Authority must allow digital signatures", identity)
	case cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageDigitalSignature == 0:
		return untrusted("certificate of %s: key usage does not allow digital signatures", identity)
	}
	if deny.Denied(cert) {
		return untrusted("certificate of %s (serial %s) is revoked", identity, cert.SerialNumber.Text(16))
	}
	if now.Before(cert.NotBefore) {
		return &certError{ReasonExpired, fmt.Errorf("certificate of %s is not valid before %s", identity, cert.NotBefore.UTC().Format(time.RFC3339))}
	}
	if now.After(cert.NotAfter) {
		return &certError{ReasonExpired, fmt.Errorf("certificate of %s expired at %s", identity, cert.NotAfter.UTC().Format(time.RFC3339))}
	}
	if auth == nil || auth.n == 0 {
		if pinned {
			return nil
		}
		return untrusted("certificate of %s is not in the store and no certificate authority is configured", identity)
	}
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots:         auth.roots,
		Intermediates: auth.intermediates,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			return &certError{ReasonExpired, fmt.Errorf("certificate of %s: %w", identity, err)}
		}
		return untrusted("certificate of %s: %v", identity, err)
	}
	for _, ch := range chains {
		for _, c := range ch[1:] {
			if deny.Denied(c) {
				return untrusted("certificate of %s: issuer %q (serial %s) is revoked", identity, c.Subject.CommonName, c.SerialNumber.Text(16))
			}
		}
	}
	return nil
}
