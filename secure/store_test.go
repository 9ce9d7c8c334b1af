package secure

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

func TestIdentityOf(t *testing.T) {
	c := &x509.Certificate{}
	c.Subject.CommonName = "fred"
	if id, err := IdentityOf(c); err != nil || id != "fred" {
		t.Fatalf("CN: %q %v", id, err)
	}
	c.URIs = []*url.URL{{Scheme: "https", Host: "x"}, {Scheme: "warren", Opaque: "bob"}}
	if id, err := IdentityOf(c); err != nil || id != "bob" {
		t.Fatalf("URI SAN: %q %v", id, err)
	}
	for _, bad := range []string{"", "a b", "a/b", "a\x00"} {
		c := &x509.Certificate{}
		c.Subject.CommonName = bad
		if _, err := IdentityOf(c); err == nil {
			t.Errorf("identity %q accepted", bad)
		}
	}
}

// TestKeysNeverPrinted: fmt (every verb, an Identity or a pointer to one,
// alone or inside another value), slog and JSON show no key material.
func TestKeysNeverPrinted(t *testing.T) {
	p := testPKI(t)
	for _, name := range []string{"fred", "ed"} {
		id := p.ids[name]
		der, err := x509.MarshalPKCS8PrivateKey(id.key.signer())
		if err != nil {
			t.Fatal(err)
		}
		secrets := []string{fmt.Sprintf("%x", der), string(der[len(der)-32:])}
		if k, ok := id.key.signer().(*ecdsa.PrivateKey); ok {
			secrets = append(secrets, k.D.String()[:20], k.D.Text(16)[:20])
		}
		if k, ok := id.key.signer().(ed25519.PrivateKey); ok {
			seed := k.Seed()
			secrets = append(secrets, fmt.Sprintf("%v", seed[:8])[1:20], fmt.Sprintf("%x", seed[:8]), fmt.Sprintf("%d", seed[:8])[1:20])
		}
		var buf bytes.Buffer
		log := slog.New(slog.NewJSONHandler(&buf, nil))
		log.Info("x", "id", id, "value", *id, "key", id.Key(), "cfg", fmt.Sprintf("%+v %#v %v", id, id, id.Key()))
		j, _ := json.Marshal(struct{ K PrivateKey }{id.Key()})
		buf.Write(j)
		type holder struct {
			id  Identity // unexported: fmt cannot call its methods
			ptr *Identity
			key PrivateKey
		}
		h := holder{*id, id, id.Key()}
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%d", "%x", "%X", "%q"} {
			fmt.Fprintf(&buf, verb+" "+verb+" "+verb+" "+verb+" "+verb+"\n", id, *id, id.Key(), h, []Identity{*id})
		}
		out := buf.String()
		for _, secret := range secrets {
			if strings.Contains(out, secret) {
				t.Fatalf("%s: key material printed: %s", name, out)
			}
		}
		if !strings.Contains(out, "[redacted]") || !strings.Contains(out, name) {
			t.Fatalf("unexpected output %s", out)
		}
	}
}

func TestLoadIdentity(t *testing.T) {
	p := testPKI(t)
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "fred.crt"), filepath.Join(dir, "fred.key")
	if err := WriteIdentity(p.ids["fred"], crt, key); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v %v", st.Mode(), err)
	}
	id, err := LoadIdentity(crt, key)
	if err != nil || id.Name() != "fred" || !id.CanDecrypt() {
		t.Fatalf("%v %v", id, err)
	}
	// Mismatched key.
	other := filepath.Join(dir, "bob.key")
	if err := WriteIdentity(p.ids["bob"], filepath.Join(dir, "bob.crt"), other); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIdentity(crt, other); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("mismatched key: %v", err)
	}
	if _, err := LoadIdentity(crt, filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing key file")
	}
	// The key itself where its path belongs: refused without quoting it.
	pemKey, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range [][2]string{{crt, string(pemKey)}, {string(pemKey), key}} {
		_, err := LoadIdentity(c[0], c[1])
		if err == nil || strings.Contains(err.Error(), strings.Split(string(pemKey), "\n")[1]) {
			t.Fatalf("key given as a path: %v", err)
		}
		if _, err := ConfigFromFiles(crt, key, c[1]); err == nil || strings.Contains(err.Error(), strings.Split(string(pemKey), "\n")[1]) {
			t.Fatalf("key given as the CA path: %v", err)
		}
	}
	if _, err := LoadIdentity(key, key); err == nil {
		t.Fatal("key as certificate")
	}
	// Ed25519.
	if err := WriteIdentity(p.ids["ed"], crt, key); err != nil {
		t.Fatal(err)
	}
	if id, err := LoadIdentity(crt, key); err != nil || id.CanDecrypt() {
		t.Fatalf("ed25519: %v %v", id, err)
	}
	// Errors never quote the key.
	keyPEM, _ := os.ReadFile(key)
	broken := bytes.Replace(keyPEM, []byte("PRIVATE KEY-----\n"), []byte("PRIVATE KEY-----\nAAAA"), 1)
	os.WriteFile(key, broken, 0o600)
	_, err = LoadIdentity(crt, key)
	if err == nil || strings.Contains(err.Error(), string(keyPEM[40:60])) {
		t.Fatalf("broken key: %v", err)
	}
}

func TestLoadIdentityFromEnv(t *testing.T) {
	p := testPKI(t)
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "c"), filepath.Join(dir, "k")
	if err := WriteIdentity(p.ids["bob"], crt, key); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WT_CERT_FILE", crt)
	t.Setenv("WT_KEY_FILE", key)
	if id, err := LoadIdentityFromEnv("WT"); err != nil || id.Name() != "bob" {
		t.Fatalf("%v %v", id, err)
	}
	kp, _ := os.ReadFile(key)
	t.Setenv("WT_KEY", string(kp))
	if _, err := LoadIdentityFromEnv("WT"); err == nil {
		t.Fatal("both WT_KEY and WT_KEY_FILE accepted")
	}
	t.Setenv("WT_KEY_FILE", "")
	if id, err := LoadIdentityFromEnv("WT"); err != nil || id.Name() != "bob" {
		t.Fatalf("inline key: %v %v", id, err)
	}
	if _, err := LoadIdentityFromEnv("NOPE"); err == nil || !strings.Contains(err.Error(), "NOPE_CERT") {
		t.Fatalf("unset: %v", err)
	}
}

func TestStores(t *testing.T) {
	p := testPKI(t)
	dir := t.TempDir()
	for _, n := range []string{"fred", "bob"} {
		if err := os.WriteFile(filepath.Join(dir, n+".pem"), CertificatePEM(p.ids[n].Certificate()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "README"), []byte("not a cert"), 0o644)
	s, err := LoadStore(dir)
	if err != nil || s.Len() != 2 {
		t.Fatalf("%v %v", s, err)
	}
	c, err := s.Certificate(t.Context(), "bob")
	if err != nil || c != nil && Fingerprint(c) != Fingerprint(p.ids["bob"].Certificate()) {
		t.Fatalf("%v", err)
	}
	if _, err := s.Certificate(t.Context(), "eve"); !errors.Is(err, ErrUnknownIdentity) {
		t.Fatalf("unknown: %v", err)
	}
	if _, err := NewStaticStore(p.ids["fred"].Certificate(), p.ids["fred"].Certificate()); err == nil {
		t.Fatal("duplicate identity")
	}
	if _, err := NewMapStore(map[string]*x509.Certificate{"bob": p.ids["fred"].Certificate()}); err == nil {
		t.Fatal("map store under the wrong name")
	}
}

// countingStore counts lookups.
type countingStore struct {
	Store
	n atomic.Int64
}

func (c *countingStore) Certificate(ctx context.Context, id string) (*x509.Certificate, error) {
	c.n.Add(1)
	return c.Store.Certificate(ctx, id)
}

func TestCache(t *testing.T) {
	p := testPKI(t)
	back := &countingStore{Store: p.store()}
	c := NewCache(back, 2, time.Minute)
	now := time.Now()
	c.now = func() time.Time { return now }
	for range 3 {
		if _, err := c.Certificate(t.Context(), "fred"); err != nil {
			t.Fatal(err)
		}
	}
	if back.n.Load() != 1 {
		t.Fatalf("lookups %d, want 1", back.n.Load())
	}
	c.Certificate(t.Context(), "bob")
	c.Certificate(t.Context(), "eve") // evicts fred, the least recently used
	if c.Len() != 2 {
		t.Fatalf("len %d", c.Len())
	}
	c.Certificate(t.Context(), "fred")
	if back.n.Load() != 4 {
		t.Fatalf("lookups %d, want 4", back.n.Load())
	}
	now = now.Add(2 * time.Minute) // every entry expired
	c.Certificate(t.Context(), "fred")
	if back.n.Load() != 5 {
		t.Fatalf("lookups %d after expiry, want 5", back.n.Load())
	}
	if _, err := c.Certificate(t.Context(), "nobody"); !errors.Is(err, ErrUnknownIdentity) {
		t.Fatal(err)
	}
}

func TestDenyList(t *testing.T) {
	p := testPKI(t)
	fred := p.ids["fred"].Certificate()
	for _, e := range []string{
		Fingerprint(fred),
		strings.ToUpper(Fingerprint(fred)),
		"serial:" + fred.SerialNumber.Text(16),
		"serial:00" + strings.ToUpper(fred.SerialNumber.Text(16)),
	} {
		d, err := ParseDenyList("# comment", "", e)
		if err != nil || !d.Denied(fred) || d.Denied(p.ids["bob"].Certificate()) {
			t.Errorf("entry %q: %v", e, err)
		}
	}
	for _, bad := range []string{"abc", "serial:xyz", strings.Repeat("a", 63)} {
		if _, err := ParseDenyList(bad); err == nil {
			t.Errorf("entry %q accepted", bad)
		}
	}
}

// admitted1 is admit by one consumer that never ends.
func admitted1(w *replayWindow, key string, ts int64, redelivered, autoAck bool, oldest int64) admission {
	v, _, _ := w.admit(key, ts, redelivered, autoAck, oldest, oneConsumer)
	return v
}

var oneConsumer = newConsumerLife()

func TestReplayWindow(t *testing.T) {
	w := newReplayWindow(3)
	first, second := newConsumerLife(), newConsumerLife()
	admit := func(c *consumerLife, key string, ts int64, redelivered bool) admission {
		v, _, _ := w.admit(key, ts, redelivered, false, 0, c)
		return v
	}
	if admit(first, "a", 10, false) != admitted || admit(first, "a", 10, false) != admitReplayed {
		t.Fatal("duplicate admitted")
	}
	// In hand, flagged redelivered, on the consumer that holds it: a copy
	// an attacker requeued, not the broker's redelivery.
	if admit(first, "a", 10, true) != admitReplayed {
		t.Fatal("redelivered copy admitted on the consumer holding the message")
	}
	// On another consumer while the holder lives: wait, for the holder's
	// end or the message's settlement.
	v, ended, settled := w.admit("a", 10, true, false, 0, second)
	if v != admitWait || ended != first.dead || settled == nil {
		t.Fatalf("redelivery while the holder lives: %v", v)
	}
	// The holder ended (its channel closed): the broker's redelivery,
	// admitted once, held by the new consumer from now on.
	close(first.dead)
	if admit(second, "a", 10, true) != admitted {
		t.Fatal("redelivery of an unsettled message refused")
	}
	if admit(second, "a", 10, true) != admitReplayed {
		t.Fatal("second redelivered copy admitted")
	}
	// The first consumer's late settlement (its handler ran on) is not
	// the message's: it stays in hand.
	w.settled("a", true, first)
	if admit(second, "a", 10, true) != admitReplayed {
		t.Fatal("a settlement by the consumer that no longer held it made the message forgotten")
	}
	w.settled("a", false, second)
	select {
	case <-settled:
	default:
		t.Fatal("settlement not signalled")
	}
	if admit(newConsumerLife(), "a", 10, true) != admitReplayed {
		t.Fatal("redelivery flag let a settled message through")
	}
	// Requeued: forgotten, so its redelivery is admitted, even by the
	// consumer that requeued it.
	admit(second, "b", 11, false)
	w.settled("b", true, second)
	if admit(second, "b", 11, true) != admitted {
		t.Fatal("requeued message refused")
	}
	// Full: the oldest go, and everything as old is refused.
	admitted1(w, "c", 12, false, true, 0)
	admitted1(w, "d", 13, false, true, 0)
	if w.len() != 3 {
		t.Fatalf("len %d", w.len())
	}
	if admitted1(w, "a", 10, false, false, 0) != admitBelowFloor {
		t.Fatal("evicted message admitted")
	}
	if admitted1(w, "e", 9, false, false, 0) != admitBelowFloor {
		t.Fatal("message older than the floor admitted")
	}
	// Aged out of the window.
	admitted1(w, "f", 100, false, true, 50)
	if w.len() != 1 {
		t.Fatalf("len %d after purge", w.len())
	}
}

// TestReplayWindowLateMessage: when the cache is full it forgets the
// message signed longest ago, not the one that arrived first, so a late
// arrival does not raise the floor over messages it could still tell
// apart.
func TestReplayWindowLateMessage(t *testing.T) {
	w := newReplayWindow(3)
	for _, e := range []struct {
		key string
		ts  int64
	}{{"x", 100}, {"late", 50}, {"y", 101}, {"z", 102}} {
		if admitted1(w, e.key, e.ts, false, true, 0) != admitted {
			t.Fatalf("%s refused", e.key)
		}
	}
	// "late" was forgotten: the floor is 50, not 100.
	if got := admitted1(w, "w", 99, false, true, 0); got != admitted {
		t.Fatalf("message signed after every forgotten one refused: %v", got)
	}
	// w, signed longest ago of the four, was forgotten at once: the floor
	// is 99. Every replay is refused, by the floor or as seen before.
	for _, e := range []struct {
		key  string
		ts   int64
		want admission
	}{{"late", 50, admitBelowFloor}, {"w", 99, admitBelowFloor}, {"x", 100, admitReplayed}, {"y", 101, admitReplayed}, {"z", 102, admitReplayed}} {
		if got := admitted1(w, e.key, e.ts, false, true, 0); got != e.want {
			t.Errorf("replay of %s: %v, want %v", e.key, got, e.want)
		}
	}
	if floor, n := w.stats(); floor != 99 || n != 2 {
		t.Fatalf("floor %d, %d refused below it", floor, n)
	}
}

func TestJSONDepth(t *testing.T) {
	for in, want := range map[string]int{`{}`: 1, `{"a":[{}]}`: 3, `{"a":"[[[["}`: 1, `{"a":"\"[[["}`: 1, `"x"`: 0} {
		if got, err := jsonDepth([]byte(in), 10); err != nil || got != want {
			t.Errorf("%s: %d %v, want %d", in, got, err, want)
		}
	}
	if _, err := jsonDepth([]byte(`[[[`), 2); !errors.Is(err, ErrTooDeep) {
		t.Fatal(err)
	}
	// A stray closing bracket would let what follows nest deeper unseen.
	for _, in := range []string{`]`, `}{}`, `]]][[[[1]]]]`, `{"a":1}}[[[[1]]]]`} {
		if _, err := jsonDepth([]byte(in), 2); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", in, err)
		}
	}
}

// TestOpenSSLCertificates: certificates made with openssl as
// docs/security.md shows (testdata/openssl-setup.sh) load and talk.
func TestOpenSSLCertificates(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not on PATH")
	}
	dir := t.TempDir()
	out, err := exec.Command("sh", "testdata/openssl-setup.sh", dir, "mapper1", "fred", "bob-ed").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl-setup.sh: %v\n%s", err, out)
	}
	cfg := func(name string) Config {
		c, err := ConfigFromFiles(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), filepath.Join(dir, "ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	f := newFixture(t)
	mc := cfg("mapper1")
	mc.Store, _ = LoadStore(filepath.Join(dir, "fred.crt"))
	tx := f.wrap(mc)
	rx := f.wrap(cfg("fred"))
	edc := cfg("bob-ed")
	edc.SignOnly = true // Ed25519: sign only
	ed := f.wrap(edc)
	q := f.queue("q")
	in := f.consume(rx, q, false)
	if err := tx.Publish(ctx(t), "", q, request("fred", "/a/b"), transport.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	if d := receive(t, in); string(d.Body) != `{"secret":"launch codes"}` {
		t.Fatalf("%q", d.Body)
	}
	// The Ed25519 identity signs a broadcast that fred verifies.
	if err := ed.Publish(ctx(t), "", q, transport.Message{Type: wire.TypeAnnounce, Body: []byte(`{}`)}, transport.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	if d := receive(t, in); d.AppID != "bob-ed" {
		t.Fatalf("%v", d.Headers)
	}
	// openssl's own serial and fingerprint output works in a deny list.
	serial, _ := exec.Command("openssl", "x509", "-in", filepath.Join(dir, "fred.crt"), "-noout", "-serial").Output()
	fp, _ := exec.Command("openssl", "x509", "-in", filepath.Join(dir, "fred.crt"), "-noout", "-fingerprint", "-sha256").Output()
	fred, _ := LoadCertificates(filepath.Join(dir, "fred.crt"))
	for _, e := range []string{string(serial), string(fp)} {
		d, err := ParseDenyList(e)
		if err != nil || !d.Denied(fred[0]) {
			t.Errorf("deny list entry %q: %v", e, err)
		}
	}
}

func TestLoadDenyList(t *testing.T) {
	p := testPKI(t)
	path := filepath.Join(t.TempDir(), "deny")
	os.WriteFile(path, []byte("# revoked\n\nserial:"+p.ids["bob"].Certificate().SerialNumber.Text(16)+"\r\n"), 0o644)
	d, err := LoadDenyList(path)
	if err != nil || !d.Denied(p.ids["bob"].Certificate()) || d.Denied(p.ids["fred"].Certificate()) {
		t.Fatalf("%v", err)
	}
	os.WriteFile(path, []byte("nonsense\n"), 0o644)
	if _, err := LoadDenyList(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("bad file: %v", err)
	}
}
