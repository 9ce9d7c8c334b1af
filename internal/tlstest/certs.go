package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Certs are the PEM files of a test PKI, all in one directory: a CA, a
// server certificate it signed for the given hosts, a client certificate it
// signed, and a client certificate signed by a second CA that nobody trusts.
// Keys are ECDSA P-256 and files have mode 0600.
type Certs struct {
	Dir string

	CAFile string // the CA certificate
	// ServerCertFile and ServerKeyFile: the server's certificate (SANs
	// are the hosts given to WriteCerts) and key.
	ServerCertFile, ServerKeyFile string
	// ClientCertFile and ClientKeyFile: a client certificate (CN
	// warren-test-client) signed by the CA.
	ClientCertFile, ClientKeyFile string
	// RogueCertFile and RogueKeyFile: a client certificate signed by
	// another CA.
	RogueCertFile, RogueKeyFile string

	// CAPool holds the CA certificate.
	CAPool *x509.CertPool
}

// ClientConfig returns a TLS client configuration that trusts the CA and
// presents the client certificate when withCert.
func (c *Certs) ClientConfig(withCert bool) (*tls.Config, error) {
	cfg := &tls.Config{RootCAs: c.CAPool, MinVersion: tls.VersionTLS12}
	if withCert {
		pair, err := tls.LoadX509KeyPair(c.ClientCertFile, c.ClientKeyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// WriteCerts generates the PKI into dir (created if needed). hosts are the
// server certificate's DNS names and IP addresses; none means localhost and
// 127.0.0.1. Certificates are valid from an hour ago for a day.
func WriteCerts(dir string, hosts ...string) (*Certs, error) {
	if len(hosts) == 0 {
		hosts = []string{"localhost", "127.0.0.1"}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	c := &Certs{
		Dir:            dir,
		CAFile:         filepath.Join(dir, "ca.pem"),
		ServerCertFile: filepath.Join(dir, "server.pem"),
		ServerKeyFile:  filepath.Join(dir, "server.key"),
		ClientCertFile: filepath.Join(dir, "client.pem"),
		ClientKeyFile:  filepath.Join(dir, "client.key"),
		RogueCertFile:  filepath.Join(dir, "rogue.pem"),
		RogueKeyFile:   filepath.Join(dir, "rogue.key"),
	}
	ca, caKey, err := newCert("warren test CA", nil, nil, nil, true, 0)
	if err != nil {
		return nil, err
	}
	srv, srvKey, err := newCert("warren test server", hosts, ca, caKey, false, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, err
	}
	cli, cliKey, err := newCert("warren-test-client", nil, ca, caKey, false, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	rogueCA, rogueCAKey, err := newCert("rogue CA", nil, nil, nil, true, 0)
	if err != nil {
		return nil, err
	}
	rogue, rogueKey, err := newCert("warren-test-client", nil, rogueCA, rogueCAKey, false, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	for _, f := range []struct {
		path string
		cert *x509.Certificate
		key  *ecdsa.PrivateKey
	}{
		{c.CAFile, ca, nil},
		{c.ServerCertFile, srv, nil}, {c.ServerKeyFile, nil, srvKey},
		{c.ClientCertFile, cli, nil}, {c.ClientKeyFile, nil, cliKey},
		{c.RogueCertFile, rogue, nil}, {c.RogueKeyFile, nil, rogueKey},
	} {
		var block *pem.Block
		if f.cert != nil {
			block = &pem.Block{Type: "CERTIFICATE", Bytes: f.cert.Raw}
		} else {
			// SEC 1, which every TLS stack (Erlang's too) reads.
			der, err := x509.MarshalECPrivateKey(f.key)
			if err != nil {
				return nil, err
			}
			block = &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}
		}
		if err := os.WriteFile(f.path, pem.EncodeToMemory(block), 0o600); err != nil {
			return nil, err
		}
	}
	c.CAPool = x509.NewCertPool()
	c.CAPool.AddCert(ca)
	return c, nil
}

// newCert creates a certificate for name signed by parent (self-signed when
// parent is nil).
func newCert(name string, hosts []string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, isCA bool, usage x509.ExtKeyUsage) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name, Organization: []string{"Warren tests"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if isCA {
		tmpl.IsCA = true
		tmpl.BasicConstraintsValid = true
		tmpl.KeyUsage |= x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{usage}
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	signer, signerKey := parent, parentKey
	if parent == nil {
		signer, signerKey = tmpl, key
	}
	if signerKey == nil {
		return nil, nil, errors.New("tlstest: no signing key")
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		return nil, nil, fmt.Errorf("tlstest: certificate %s: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}
