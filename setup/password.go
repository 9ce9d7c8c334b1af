package setup

import (
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"strings"
)

// newPassword returns 32 random URL-safe characters (192 bits).
func newPassword() (string, error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("setup: generating a password: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// knownPassword returns u's password: u.Password, or the content of
// u.PasswordFile when it exists. fromFile tells which.
func knownPassword(u User) (pw string, fromFile bool, err error) {
	if u.Password != "" {
		return u.Password, false, nil
	}
	if u.PasswordFile == "" {
		return "", false, nil
	}
	pw, err = ReadPasswordFile(u.PasswordFile)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	return pw, err == nil, err
}

// ReadPasswordFile reads a password from a file: its first line, without
// the line end. It refuses a file that others than its owner may read, and
// an empty password.
func ReadPasswordFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("setup: password file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("setup: password file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("setup: password file %s has mode %v: it must not be readable by group or others (chmod 600)", path, fi.Mode().Perm())
	}
	b := make([]byte, 4097)
	n, _ := f.Read(b)
	if n > 4096 {
		return "", fmt.Errorf("setup: password file %s: longer than 4096 bytes", path)
	}
	line, _, _ := strings.Cut(string(b[:n]), "\n")
	line = strings.TrimSuffix(line, "\r")
	if line == "" {
		return "", fmt.Errorf("setup: password file %s: empty", path)
	}
	return line, nil
}

// writePasswordFile creates path with mode 0600; it never overwrites.
func writePasswordFile(path, pw string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("setup: password file: %w", err)
	}
	if _, err := f.WriteString(pw + "\n"); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("setup: password file: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("setup: password file: %w", err)
	}
	return nil
}

// checkPassword tells whether pw matches a RabbitMQ password hash:
// base64(salt[4] + H(salt + pw)). known is false for an algorithm it does
// not know (the caller then sets the password).
func checkPassword(algorithm, encoded, pw string) (match, known bool) {
	var h func() hash.Hash
	switch algorithm {
	case "rabbit_password_hashing_sha256", "":
		h = sha256.New
	case "rabbit_password_hashing_sha512":
		h = sha512.New
	case "rabbit_password_hashing_md5":
		h = md5.New
	default:
		return false, false
	}
	raw, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil || len(raw) < 5 {
		return false, true
	}
	salt, sum := raw[:4], raw[4:]
	d := h()
	d.Write(bytes.Clone(salt))
	d.Write([]byte(pw))
	return subtle.ConstantTimeCompare(d.Sum(nil), sum) == 1, true
}
