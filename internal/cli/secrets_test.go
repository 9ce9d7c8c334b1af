package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/warrenrpc/warren/secure"
)

// TestSecretsNeverPrinted feeds every flag and environment variable that
// holds a secret, or a file of one, a secret-looking value: a PEM private
// key where a path belongs (flag and variable), a password where a
// password file belongs, a password itself. The command fails, and the
// secret appears nowhere in what it prints.
func TestSecretsNeverPrinted(t *testing.T) {
	ca, err := secure.NewCA("warren test CA", 0)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	id, err := ca.Issue("fred", secure.CertOptions{})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "fred.crt"), filepath.Join(dir, "fred.key")
	if err := secure.WriteIdentity(id, certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := ca.WriteFiles(caFile, filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	pemKey, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	key := string(pemKey)
	const password = "Sw0rdf1sh-Hunter2-PASSWORD"
	// What must not show: each line of the key's base64 body, the
	// password.
	var secrets []string
	for _, l := range strings.Split(key, "\n") {
		if l != "" && !strings.HasPrefix(l, "-----") {
			secrets = append(secrets, l)
		}
	}
	secrets = append(secrets, password)

	const plain, tls = "amqp://127.0.0.1:1/", "amqps://127.0.0.1:1/"
	secureOK := map[string]string{"cert": certFile, "key": keyFile, "ca": caFile}
	secureArgs := func(override, value string) []string {
		args := []string{"agents", "--broker", plain}
		for _, f := range []string{"cert", "key", "ca"} {
			v := secureOK[f]
			if f == override {
				v = value
			}
			args = append(args, "--secure-"+f, v)
		}
		return args
	}
	secureEnv := map[string]string{"cert": "WARREN_SECURE_CERT", "key": "WARREN_SECURE_KEY_FILE", "ca": "WARREN_SECURE_CA", "deny": "WARREN_SECURE_DENY"}
	type tc struct {
		name string
		args []string
		env  map[string]string
	}
	var cases []tc
	for _, secret := range []string{key, password} {
		kind := "pem"
		if secret == password {
			kind = "password"
		}
		for _, f := range []string{"cert", "key", "ca"} {
			// The variable, with the other two as flags.
			args := []string{"agents", "--broker", plain}
			for _, o := range []string{"cert", "key", "ca"} {
				if o != f {
					args = append(args, "--secure-"+o, secureOK[o])
				}
			}
			cases = append(cases,
				tc{"--secure-" + f + " " + kind, secureArgs(f, secret), nil},
				tc{secureEnv[f] + " " + kind, args, map[string]string{secureEnv[f]: secret}})
		}
		cases = append(cases,
			tc{"--secure-key=" + kind, []string{"agents", "--broker", plain, "--secure-cert", certFile, "--secure-key=" + secret, "--secure-ca", caFile}, nil},
			tc{"--tls-key=" + kind, []string{"agents", "--broker", tls, "--tls-cert", certFile, "--tls-key=" + secret}, nil},
			tc{"--admin-password-file=" + kind, []string{"setup", "--vhost", "/t", "--admin-url", "http://127.0.0.1:1", "--admin-password-file=" + secret}, nil},
			tc{"--secure-deny " + kind, append(secureArgs("", ""), "--secure-deny", secret), nil},
			tc{"WARREN_SECURE_DENY " + kind, secureArgs("", ""), map[string]string{"WARREN_SECURE_DENY": secret}},
			tc{"--tls-key " + kind, []string{"agents", "--broker", tls, "--tls-cert", certFile, "--tls-key", secret}, nil},
			tc{"WARREN_TLS_KEY_FILE " + kind, []string{"agents", "--broker", tls, "--tls-cert", certFile}, map[string]string{"WARREN_TLS_KEY_FILE": secret}},
			tc{"--tls-cert " + kind, []string{"agents", "--broker", tls, "--tls-cert", secret, "--tls-key", keyFile}, nil},
			tc{"WARREN_TLS_CERT " + kind, []string{"agents", "--broker", tls, "--tls-key", keyFile}, map[string]string{"WARREN_TLS_CERT": secret}},
			tc{"--tls-ca " + kind, []string{"agents", "--broker", tls, "--tls-ca", secret}, nil},
			tc{"WARREN_TLS_CA " + kind, []string{"agents", "--broker", tls}, map[string]string{"WARREN_TLS_CA": secret}},
			tc{"--admin-password-file " + kind, []string{"setup", "--vhost", "/t", "--admin-url", "http://127.0.0.1:1", "--admin-password-file", secret, "--dry-run"}, nil},
			tc{"WARREN_ADMIN_PASSWORD_FILE " + kind, []string{"setup", "--vhost", "/t", "--admin-url", "http://127.0.0.1:1", "--dry-run"}, map[string]string{"WARREN_ADMIN_PASSWORD_FILE": secret}},
		)
	}
	// Secrets given as values.
	cases = append(cases,
		tc{"WARREN_ADMIN_PASSWORD", []string{"setup", "--vhost", "/t", "--admin-url", "http://127.0.0.1:1", "--secrets-dir", dir}, map[string]string{"WARREN_ADMIN_PASSWORD": password}},
		tc{"WARREN_AGENT_PASSWORD, WARREN_MAPPER_PASSWORD", []string{"setup", "--vhost", "/t", "--admin-url", "http://127.0.0.1:1", "--secrets-dir", dir},
			map[string]string{"WARREN_ADMIN_PASSWORD": "x", "WARREN_AGENT_PASSWORD": password, "WARREN_MAPPER_PASSWORD": password}},
		tc{"--admin-url with a password", []string{"setup", "--vhost", "/t", "--admin-url", "http://admin:" + password + "@127.0.0.1:1"}, map[string]string{"WARREN_ADMIN_PASSWORD": "x"}},
		tc{"--broker with a password", []string{"agents", "--broker", "amqp://guest:" + password + "@127.0.0.1:1/"}, nil},
		tc{"WARREN_BROKER with a password", []string{"agents"}, map[string]string{"WARREN_BROKER": "amqp://guest:" + password + "@127.0.0.1:1/"}},
		tc{"--broker not a URL", []string{"agents", "--broker", "amqp://guest:" + password + "@127.0.0.1:1:2/%zz"}, nil},
	)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, v := range []string{"WARREN_BROKER", "WARREN_ADMIN_PASSWORD", "WARREN_ADMIN_PASSWORD_FILE", "WARREN_AGENT_PASSWORD", "WARREN_MAPPER_PASSWORD",
				"WARREN_SECURE_CERT", "WARREN_SECURE_KEY_FILE", "WARREN_SECURE_CA", "WARREN_SECURE_DENY", "WARREN_TLS_CA", "WARREN_TLS_CERT", "WARREN_TLS_KEY_FILE"} {
				t.Setenv(v, c.env[v]) // restored at the end
				if _, ok := c.env[v]; !ok {
					os.Unsetenv(v)
				}
			}
			code, out, errOut := run(t, t.Context(), append(c.args, "--log-level", "debug")...)
			if code == 0 {
				t.Fatalf("exit 0\n%s\n%s", out, errOut)
			}
			for _, s := range secrets {
				if strings.Contains(out+errOut, s) {
					t.Fatalf("exit %d, the secret is printed:\nstdout: %s\nstderr: %s", code, out, errOut)
				}
			}
			t.Logf("exit %d: %s", code, strings.TrimSpace(errOut))
		})
	}
}
