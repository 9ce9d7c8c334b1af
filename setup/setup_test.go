package setup_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/setup"
)

// adminClient returns a client of the management API of the test broker,
// from WARREN_ADMIN_URL (set by scripts/deps.d/rabbitmq-management), as
// WARREN_ADMIN_USER (default guest) with WARREN_ADMIN_PASSWORD (default
// guest). Skipped without it, failed under CI.
func adminClient(t *testing.T) *setup.Admin {
	t.Helper()
	testenv.AMQPURL(t)
	u := os.Getenv("WARREN_ADMIN_URL")
	if u == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("WARREN_ADMIN_URL unset under CI: scripts/deps.d/rabbitmq-management must run")
		}
		t.Skip("WARREN_ADMIN_URL unset: run scripts/deps.d/rabbitmq-management and export WARREN_ADMIN_URL=http://127.0.0.1:15672")
	}
	user, pw := os.Getenv("WARREN_ADMIN_USER"), os.Getenv("WARREN_ADMIN_PASSWORD")
	if user == "" {
		user, pw = "guest", "guest"
	}
	a, err := setup.NewAdmin(u, user, pw, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Fault tests of other packages restart the broker (and with it the
	// management API): wait for it rather than fail.
	testenv.WaitFor(t, 90*time.Second, func() error {
		_, err := a.Overview(t.Context())
		return err
	})
	return a
}

func unique(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// fixture is a provisioned vhost, removed with its users at the end.
type fixture struct {
	admin *setup.Admin
	vhost string
	dir   string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{admin: adminClient(t), vhost: unique("/warren-test-"), dir: t.TempDir()}
	t.Cleanup(func() { cleanup(t, func(ctx context.Context) error { return f.admin.DeleteVHost(ctx, f.vhost) }) })
	return f
}

// user names a user removed at the end of the test, whose password file is
// in the fixture's directory.
func (f *fixture) user(t *testing.T, role string) setup.User {
	name := unique("warren-test-" + role + "-")
	t.Cleanup(func() { cleanup(t, func(ctx context.Context) error { return f.admin.DeleteUser(ctx, name) }) })
	return setup.User{Name: name, PasswordFile: filepath.Join(f.dir, name+".password")}
}

// cleanup retries del for up to a minute: the broker may be restarting
// (t.Context is over by now, so testenv.WaitFor cannot be used).
func cleanup(t *testing.T, del func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		err := del(ctx)
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Errorf("cleanup: %v", err)
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (f *fixture) apply(t *testing.T, p setup.Plan) *setup.Result {
	t.Helper()
	p.VHost = f.vhost
	r, err := setup.Apply(ctxT(t, 30*time.Second), f.admin, p, false)
	if err != nil {
		t.Fatalf("Apply: %v\n%s", err, r)
	}
	t.Logf("setup:\n%s", r)
	return r
}

// url is the AMQP URL of the test broker for u on the fixture's vhost.
func (f *fixture) url(t *testing.T, u setup.User, vhost string) string {
	t.Helper()
	base, err := url.Parse(testenv.AMQPURL(t))
	if err != nil {
		t.Fatal(err)
	}
	pw, err := setup.ReadPasswordFile(u.PasswordFile)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("amqp://%s:%s@%s/%s", url.PathEscape(u.Name), url.PathEscape(pw), base.Host, url.PathEscape(vhost))
}

// adminURL is the test broker's URL (its admin user) on the fixture's
// vhost, which the admin may use because it created it.
func (f *fixture) adminURL(t *testing.T) string {
	t.Helper()
	base, err := url.Parse(testenv.AMQPURL(t))
	if err != nil {
		t.Fatal(err)
	}
	base.Path, base.RawPath = "", ""
	return base.String() + "/" + url.PathEscape(f.vhost)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestApplyIsIdempotent(t *testing.T) {
	f := newFixture(t)
	agentU, mapperU := f.user(t, "agent"), f.user(t, "mapper")
	plan := setup.Plan{VHost: f.vhost, Agent: agentU, Mapper: mapperU}

	dry, err := setup.Apply(ctxT(t, 30*time.Second), f.admin, plan, true)
	if err != nil {
		t.Fatal(err)
	}
	if !dry.Changed() || !strings.Contains(dry.String(), "would create") || !strings.Contains(dry.String(), "dry run: nothing changed") {
		t.Errorf("dry run said:\n%s", dry)
	}
	if _, err := os.Stat(agentU.PasswordFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dry run wrote a password file: %v", err)
	}
	again, err := setup.Apply(ctxT(t, 30*time.Second), f.admin, plan, true)
	if err != nil {
		t.Fatal(err)
	}
	if again.String() != dry.String() {
		t.Errorf("second dry run differs: the first changed something:\n%s\n---\n%s", dry, again)
	}

	first := f.apply(t, plan)
	if !first.Changed() {
		t.Fatalf("first run changed nothing:\n%s", first)
	}
	for _, want := range []string{
		"vhost " + f.vhost + ": created",
		"exchange warren.request: created (direct, durable)",
		"exchange warren.heartbeat: created (fanout, durable)",
		"queue warren.dead: created (quorum, durable)",
		"binding warren.dlx -> warren.dead: created",
		"user " + agentU.Name + ": created (password generated, written to " + agentU.PasswordFile + ")",
		"permissions of " + mapperU.Name + " on " + f.vhost + ": created",
	} {
		if !strings.Contains(first.String(), want) {
			t.Errorf("first run lacks %q:\n%s", want, first)
		}
	}
	// warren.dead is a quorum queue, as agents and mappers declare it:
	// their declaration is equivalent (a classic one refuses it).
	ch, err := dialRaw(t, f.adminURL(t)).Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("warren.dead", true, false, false, false, amqp091.Table{"x-queue-type": "quorum"}); err != nil {
		t.Errorf("warren.dead is not the quorum queue agents declare: %v", err)
	}
	for _, u := range []setup.User{agentU, mapperU} {
		fi, err := os.Stat(u.PasswordFile)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", u.PasswordFile, fi.Mode().Perm())
		}
	}

	second := f.apply(t, plan)
	if second.Changed() || !strings.HasSuffix(second.String(), "nothing to change\n") {
		t.Errorf("second run changed something:\n%s", second)
	}

	// A password given that differs from the broker's is set; then it is
	// unchanged again.
	plan.Mapper.Password = "another-password"
	third := f.apply(t, plan)
	if !strings.Contains(third.String(), "user "+mapperU.Name+": updated (password changed)") {
		t.Errorf("password change not reported:\n%s", third)
	}
	if f.apply(t, plan).Changed() {
		t.Error("the password was set again")
	}
}

func TestPlanErrors(t *testing.T) {
	a, err := setup.NewAdmin("http://127.0.0.1:1", "admin", "x", nil)
	if err != nil {
		t.Fatal(err)
	}
	ok := setup.User{Name: "a", PasswordFile: "/nonexistent/a"}
	for name, p := range map[string]setup.Plan{
		"no vhost":                  {Agent: ok, Mapper: setup.User{Name: "m"}},
		"same users":                {VHost: "/v", Agent: ok, Mapper: ok},
		"admin user":                {VHost: "/v", Agent: ok, Mapper: setup.User{Name: "admin"}},
		"bad identity":              {VHost: "/v", Agent: ok, Mapper: setup.User{Name: "m"}, AgentIdentities: []string{"a/b"}},
		"bad event group":           {VHost: "/v", Agent: ok, Mapper: setup.User{Name: "m"}, EventGroups: []string{"a b"}},
		"event group and no events": {VHost: "/v", Agent: ok, Mapper: setup.User{Name: "m"}, EventGroups: []string{"g"}, NoEvents: true},
		"wildcard event prefix":     {VHost: "/v", Agent: ok, Mapper: setup.User{Name: "m"}, EventPrefixes: []string{"file.*"}},
		"prefix and no events":      {VHost: "/v", Agent: ok, Mapper: setup.User{Name: "m"}, EventPrefixes: []string{"file"}, NoEvents: true},
	} {
		if _, err := setup.Apply(t.Context(), a, p, true); !errors.Is(err, setup.ErrInvalidPlan) {
			t.Errorf("%s: %v, want ErrInvalidPlan", name, err)
		}
	}
	for _, u := range []string{"ftp://x", "http://", "http://u:p@host:15672"} {
		if _, err := setup.NewAdmin(u, "admin", "x", nil); err == nil {
			t.Errorf("NewAdmin(%q): no error", u)
		}
	}
}

func TestReadPasswordFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if pw, err := setup.ReadPasswordFile(write("ok", "s3cret\r\nignored\n", 0o600)); err != nil || pw != "s3cret" {
		t.Errorf("got %q, %v", pw, err)
	}
	for name, p := range map[string]string{
		"group readable": write("open", "s3cret\n", 0o640),
		"empty":          write("empty", "\n", 0o600),
		"missing":        filepath.Join(dir, "missing"),
	} {
		if _, err := setup.ReadPasswordFile(p); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
