package secure

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"time"
)

// CA is a certificate authority that issues Warren identities: a helper for
// tests and small deployments (docs/security.md shows the same with
// openssl). Its key stays in memory unless written with WriteFiles.
type CA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// NewCA creates a self-signed ECDSA P-256 certificate authority named name,
// valid from an hour ago for validity (0 means ten years).
func NewCA(name string, validity time.Duration) (*CA, error) {
	if validity <= 0 {
		validity = 10 * 365 * 24 * time.Hour
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Warren"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("secure: create CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{cert: cert, key: key}, nil
}

// LoadCA reads a CA certificate and its private key from PEM files.
func LoadCA(certFile, keyFile string) (*CA, error) {
	c, err := readSmall(certFile)
	if err != nil {
		return nil, fmt.Errorf("secure: CA certificate: %w", err)
	}
	k, err := readSmall(keyFile)
	if err != nil {
		return nil, fmt.Errorf("secure: CA key: %w", err)
	}
	certs, err := ParseCertificates(c)
	if err != nil {
		return nil, err
	}
	key, err := ParsePrivateKey(k)
	if err != nil {
		return nil, err
	}
	if !certs[0].IsCA {
		return nil, errors.New("secure: not a CA certificate")
	}
	return &CA{cert: certs[0], key: key}, nil
}

// Certificate returns the CA's certificate: what Authority trusts.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Authority returns an Authority trusting this CA.
func (ca *CA) Authority() *Authority { return NewAuthority(ca.cert) }

// CertOptions tune Issue.
type CertOptions struct {
	// NotBefore and NotAfter bound validity; zero means from an hour ago
	// for a year.
	NotBefore, NotAfter time.Time
	// Ed25519 issues an Ed25519 key (sign only: nothing can be encrypted
	// to it) instead of ECDSA P-256.
	Ed25519 bool
	// Serial is the serial number; nil means random.
	Serial *big.Int
}

// Issue creates a key and a certificate for identity, signed by the CA.
// The certificate names the identity both as Common Name and as the URI
// SAN warren:identity, and allows signatures and key agreement.
func (ca *CA) Issue(identity string, o CertOptions) (*Identity, error) {
	if err := checkIdentity(identity); err != nil {
		return nil, fmt.Errorf("secure: %w", err)
	}
	var key crypto.Signer
	var err error
	if o.Ed25519 {
		_, key, err = ed25519.GenerateKey(rand.Reader)
	} else {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if o.NotBefore.IsZero() {
		o.NotBefore = now.Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = now.Add(365 * 24 * time.Hour)
	}
	if o.Serial == nil {
		o.Serial = newSerial()
	}
	usage := x509.KeyUsageDigitalSignature
	if !o.Ed25519 {
		usage |= x509.KeyUsageKeyAgreement
	}
	tmpl := &x509.Certificate{
		SerialNumber: o.Serial,
		Subject:      pkix.Name{CommonName: identity, Organization: []string{"Warren"}},
		URIs:         []*url.URL{{Scheme: IdentityScheme, Opaque: identity}},
		NotBefore:    o.NotBefore,
		NotAfter:     o.NotAfter,
		KeyUsage:     usage,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("secure: issue %s: %w", identity, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return NewIdentity(cert, key)
}

// WriteFiles writes the CA's certificate (mode 0644) and key (mode 0600)
// as PEM.
func (ca *CA) WriteFiles(certFile, keyFile string) error {
	return writePair(ca.cert, ca.key, certFile, keyFile)
}

// WriteIdentity writes an identity's certificate (mode 0644) and private
// key (PKCS #8, mode 0600) as PEM files, for LoadIdentity.
func WriteIdentity(id *Identity, certFile, keyFile string) error {
	return writePair(id.cert, id.key.signer(), certFile, keyFile)
}

func writePair(cert *x509.Certificate, key crypto.Signer, certFile, keyFile string) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("secure: encode key: %w", err)
	}
	if err := os.WriteFile(certFile, CertificatePEM(cert), 0o644); err != nil {
		return fmt.Errorf("secure: %w", err)
	}
	f, err := os.OpenFile(keyFile, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("secure: %w", err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		return fmt.Errorf("secure: write %s: %w", keyFile, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("secure: write %s: %w", keyFile, err)
	}
	return nil
}

// CertificatePEM encodes a certificate as PEM.
func CertificatePEM(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

func newSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n.Add(n, big.NewInt(1))
}
