package tlstest_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/warrenrpc/warren/internal/tlstest"
)

func TestWriteCerts(t *testing.T) {
	c, err := tlstest.WriteCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	load := func(cert, key string) *x509.Certificate {
		t.Helper()
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		x, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	server := load(c.ServerCertFile, c.ServerKeyFile)
	for _, host := range []string{"localhost", "127.0.0.1"} {
		if _, err := server.Verify(x509.VerifyOptions{Roots: c.CAPool, DNSName: host}); err != nil {
			t.Errorf("server certificate for %s: %v", host, err)
		}
	}
	if _, err := server.Verify(x509.VerifyOptions{Roots: c.CAPool, DNSName: "example.com"}); err == nil {
		t.Error("server certificate valid for example.com")
	}
	clientOpts := x509.VerifyOptions{Roots: c.CAPool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, err := load(c.ClientCertFile, c.ClientKeyFile).Verify(clientOpts); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := load(c.RogueCertFile, c.RogueKeyFile).Verify(clientOpts); err == nil {
		t.Error("rogue client certificate verifies against the CA")
	}
	for _, f := range []string{c.CAFile, c.ServerKeyFile, c.ClientKeyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v", f, fi.Mode().Perm())
		}
	}
	if cfg, err := c.ClientConfig(true); err != nil || len(cfg.Certificates) != 1 {
		t.Errorf("ClientConfig: %v", err)
	}
}

func ExampleWriteCerts() {
	dir, err := os.MkdirTemp("", "certs")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	c, err := tlstest.WriteCerts(dir, "localhost", "127.0.0.1")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(filepath.Base(c.CAFile), filepath.Base(c.ServerCertFile), filepath.Base(c.ClientKeyFile))
	// Output: ca.pem server.pem client.key
}
