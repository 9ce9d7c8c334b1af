package cli

import (
	"bytes"
	"io"
	"net/url"
	"os"
	"strings"

	"github.com/warrenrpc/warren/internal/tlsflags"
)

// Secrets never appear in what the command prints. The flags that take
// files check them without quoting the value (tlsflags.CheckFile), and
// broker URLs are printed redacted; but kong's parse errors quote flag
// values ("expected string value but got ..."), so as a last line of
// defence Main's diagnostics go through a writer that blanks out every
// secret given to the command.

// secretFlags take the path of a file holding a secret: their value is a
// secret when it names no file.
var secretFlags = []string{"--secure-key", "--tls-key", "--admin-password-file"}

// secretFileEnv are the environment variables of those flags.
var secretFileEnv = []string{"WARREN_SECURE_KEY_FILE", "WARREN_TLS_KEY_FILE", "WARREN_ADMIN_PASSWORD_FILE"}

// secretEnv hold secrets themselves.
var secretEnv = []string{"WARREN_ADMIN_PASSWORD", "WARREN_AGENT_PASSWORD", "WARREN_MAPPER_PASSWORD"}

// minSecret is the shortest value blanked out: shorter ones would blank out
// ordinary words (and are no secrets worth the name).
const minSecret = 6

// secretValues returns the secrets among args and the environment: the
// values of secretFlags and secretFileEnv that name no file, of
// secretEnv, anything that looks like a PEM block or several lines given
// to a WARREN_ variable or a flag, and the passwords of broker URLs.
func secretValues(args []string, environ []string) []string {
	var out []string
	add := func(v string) {
		v = strings.TrimSpace(v)
		if len(v) >= minSecret {
			out = append(out, v)
		}
	}
	addFile := func(v string) {
		if st, err := os.Stat(v); err == nil && !st.IsDir() {
			return // a path, not a secret
		}
		add(v)
	}
	addURL := func(v string) {
		if u, err := url.Parse(v); err == nil && u.User != nil {
			if pw, ok := u.User.Password(); ok {
				add(pw)
			}
		}
	}
	for i, a := range args {
		if tlsflags.LooksLikeSecret(a) {
			add(a)
		}
		for _, f := range secretFlags {
			switch {
			case a == f && i+1 < len(args):
				addFile(args[i+1])
			case strings.HasPrefix(a, f+"="):
				addFile(strings.TrimPrefix(a, f+"="))
			}
		}
		switch {
		case (a == "--broker" || a == "-b") && i+1 < len(args):
			addURL(args[i+1])
		case strings.HasPrefix(a, "--broker="):
			addURL(strings.TrimPrefix(a, "--broker="))
		}
	}
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		switch {
		case !strings.HasPrefix(k, "WARREN_"):
		case contains(secretEnv, k):
			add(v)
		case contains(secretFileEnv, k):
			addFile(v)
		case k == "WARREN_BROKER":
			addURL(v)
		case tlsflags.LooksLikeSecret(v):
			add(v)
		}
	}
	// A multi-line secret may be printed a line at a time, or quoted
	// with its line ends escaped: blank out each line that is not PEM
	// armour.
	for _, s := range out {
		if !strings.ContainsAny(s, "\r\n") {
			continue
		}
		for _, l := range strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' }) {
			if !strings.HasPrefix(strings.TrimSpace(l), "-----") {
				add(l)
			}
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// scrubber writes to w with every secret replaced by "[redacted]". Each
// Write is scrubbed on its own: the command's diagnostics are written a
// line (or a whole message) at a time.
type scrubber struct {
	w       io.Writer
	secrets [][]byte
}

func newScrubber(w io.Writer, secrets []string) io.Writer {
	if len(secrets) == 0 {
		return w
	}
	s := &scrubber{w: w}
	for _, x := range secrets {
		s.secrets = append(s.secrets, []byte(x))
	}
	return s
}

var redactedMark = []byte("[redacted]")

func (s *scrubber) Write(p []byte) (int, error) {
	q := p
	for _, x := range s.secrets {
		if bytes.Contains(q, x) {
			q = bytes.ReplaceAll(q, x, redactedMark)
		}
	}
	if _, err := s.w.Write(q); err != nil {
		return 0, err
	}
	return len(p), nil
}

// secretParseError returns kong's parse error msg, or when it quotes a
// secret (a PEM key given to a flag is taken for a flag: "expected string
// value but got ..."), a message that says what to do without it.
func secretParseError(msg string, secrets []string) string {
	for _, x := range secrets {
		if strings.Contains(msg, x) {
			flag, _, _ := strings.Cut(msg, ":")
			if !strings.HasPrefix(flag, "-") || strings.ContainsAny(flag, " \n") {
				flag = "a flag"
			}
			return flag + ": its value looks like a key or password (not shown): flags that take a file take its path"
		}
	}
	return msg
}
