package secure

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// maxPEMFile bounds what is read from a certificate or key file.
const maxPEMFile = 1 << 20

func readSmall(path string) ([]byte, error) {
	if err := checkPath(path); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPEMFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxPEMFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxPEMFile)
	}
	return b, nil
}

// errContentsAsPath is the error for a file name that is file contents.
var errContentsAsPath = errors.New("a PEM block or several lines given as a file name: pass the path of the file, not its contents (the value is not shown)")

// checkPath refuses a "path" that is a PEM block or several lines (a key
// given instead of its path), which the errors of os would quote.
func checkPath(path string) error {
	if strings.Contains(path, "-----BEGIN") || strings.ContainsAny(path, "\r\n") {
		return errContentsAsPath
	}
	return nil
}

// ParseCertificates parses every CERTIFICATE block of PEM data.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("secure: certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("secure: no PEM CERTIFICATE block")
	}
	return certs, nil
}

// ParsePrivateKey parses a PEM private key: PKCS #8 ("PRIVATE KEY") or SEC 1
// ("EC PRIVATE KEY"). Encrypted PEM is not supported: protect key files
// with file permissions or a secret store. Errors never quote the key.
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("secure: no PEM private key block")
		}
		if _, enc := b.Headers["Proc-Type"]; enc {
			return nil, errors.New("secure: encrypted PEM keys are not supported")
		}
		var k any
		var err error
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("secure: encrypted PKCS #8 keys are not supported")
		default:
			continue
		}
		if err != nil {
			// The parser's error does not contain key material.
			return nil, fmt.Errorf("secure: parse %s: %w", strings.ToLower(b.Type), err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("secure: %T is not a signing key", k)
		}
		if _, err := NewPrivateKey(s); err != nil {
			return nil, err
		}
		return s, nil
	}
}

// ParseIdentity builds an identity from a PEM certificate (the first
// certificate is the leaf) and a PEM private key.
func ParseIdentity(certPEM, keyPEM []byte) (*Identity, error) {
	certs, err := ParseCertificates(certPEM)
	if err != nil {
		return nil, err
	}
	key, err := ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, err
	}
	return NewIdentity(certs[0], key)
}

// LoadIdentity reads a PEM certificate and a PEM private key from files.
// Pass key files as paths, never keys as command-line arguments; keep them
// readable by their owner only.
func LoadIdentity(certFile, keyFile string) (*Identity, error) {
	c, err := readSmall(certFile)
	if err != nil {
		return nil, fmt.Errorf("secure: certificate: %w", err)
	}
	k, err := readSmall(keyFile)
	if err != nil {
		return nil, fmt.Errorf("secure: private key: %w", err)
	}
	id, err := ParseIdentity(c, k)
	if err != nil {
		return nil, fmt.Errorf("%w (certificate %s, key %s)", err, certFile, keyFile)
	}
	return id, nil
}

// LoadIdentityFromEnv reads an identity from environment variables named
// with prefix: PREFIX_CERT (the PEM itself) or PREFIX_CERT_FILE (a path),
// and PREFIX_KEY (the PEM) or PREFIX_KEY_FILE (a path). With prefix
// "WARREN": WARREN_CERT_FILE=/etc/warren/fred.crt WARREN_KEY_FILE=....
func LoadIdentityFromEnv(prefix string) (*Identity, error) {
	get := func(name string) ([]byte, error) {
		inline, hasInline := os.LookupEnv(prefix + "_" + name)
		path, hasPath := os.LookupEnv(prefix + "_" + name + "_FILE")
		switch {
		case hasInline && inline != "" && hasPath && path != "":
			return nil, fmt.Errorf("secure: both %s_%s and %s_%s_FILE are set", prefix, name, prefix, name)
		case hasInline && inline != "":
			return []byte(inline), nil
		case hasPath && path != "":
			return readSmall(path)
		}
		return nil, fmt.Errorf("secure: set %s_%s or %s_%s_FILE", prefix, name, prefix, name)
	}
	c, err := get("CERT")
	if err != nil {
		return nil, err
	}
	k, err := get("KEY")
	if err != nil {
		return nil, err
	}
	return ParseIdentity(c, k)
}

// LoadCertificates reads PEM certificates from files and directories (every
// *.pem, *.crt and *.cert file in them, not recursively).
func LoadCertificates(paths ...string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, p := range paths {
		if err := checkPath(p); err != nil {
			return nil, fmt.Errorf("secure: %w", err)
		}
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("secure: %w", err)
		}
		files := []string{p}
		if st.IsDir() {
			entries, err := os.ReadDir(p)
			if err != nil {
				return nil, fmt.Errorf("secure: %w", err)
			}
			files = files[:0]
			for _, e := range entries {
				ext := strings.ToLower(filepath.Ext(e.Name()))
				if !e.IsDir() && slices.Contains([]string{".pem", ".crt", ".cert"}, ext) {
					files = append(files, filepath.Join(p, e.Name()))
				}
			}
		}
		for _, f := range files {
			b, err := readSmall(f)
			if err != nil {
				return nil, fmt.Errorf("secure: %w", err)
			}
			certs, err := ParseCertificates(b)
			if err != nil {
				return nil, fmt.Errorf("%w in %s", err, f)
			}
			out = append(out, certs...)
		}
	}
	return out, nil
}

// ConfigFromFiles is what a command line needs: it loads the identity from
// certFile and keyFile and trusts every certificate signed by the CA
// certificates in caFile (PEM, one or more). Peers' certificates then need
// no distribution: each message carries its sender's certificate, checked
// against the CA. Encryption is on. Adjust the returned Config before
// passing it to Wrap.
func ConfigFromFiles(certFile, keyFile, caFile string) (Config, error) {
	id, err := LoadIdentity(certFile, keyFile)
	if err != nil {
		return Config{}, err
	}
	if caFile == "" {
		return Config{}, errors.New("secure: no CA file: secure mode needs the certificate authority that signs the fabric's certificates")
	}
	cas, err := LoadCertificates(caFile)
	if err != nil {
		return Config{}, err
	}
	return Config{Identity: id, Authority: NewAuthority(cas...)}, nil
}
