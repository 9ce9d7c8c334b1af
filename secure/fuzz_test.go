package secure

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

// envelopeSeeds are inputs for the fuzzers that run in every go test, and
// the sealed request (from mapper1 to fred) among them.
func envelopeSeeds(t testing.TB) ([][]byte, transport.Message) {
	seeds := [][]byte{
		nil,
		[]byte(`{}`),
		[]byte(`[]`),
		[]byte(`null`),
		[]byte(`{"v":2}`),
		[]byte(`{"v":2,"alg":"ES256","signer":"fred","ts":1,"body":"","sig":"AA=="}`),
		[]byte(`{"v":2,"alg":"EdDSA","signer":"fred","ts":1,"to":"bob","rfp":"` + strings.Repeat("0", 64) + `","enc":"` + Suite + `","ex":"warren.request","rk":"bob","body":"AAAA","sig":"AA=="}`),
		[]byte(`{"v":2,"alg":"ES256","signer":"a b","ts":1,"body":"","sig":"AA=="}`),
		[]byte(`{"v":2,"x":[[[[[[[[[[1]]]]]]]]]]}`),
		[]byte(`{"v":2,"x":"\"{{{{{{{{{{"}`),
		[]byte(`{"v":2,"body":"not base64!"}`),
		[]byte(`]{"v":2}`),
		[]byte("\xff\xfe{"),
	}
	p := testPKI(t)
	b := mem.NewBroker()
	defer b.Close()
	tr, err := Wrap(b.Connect(), p.caConfig("mapper1"))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var req transport.Message
	for i, m := range []transport.Message{request("fred", "/a/b"), {Type: wire.TypePing, Body: []byte(`{"identity":"mapper1"}`)}} {
		sealed, err := tr.seal(t.Context(), "", "qfred", m)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, sealed.Body)
		if i == 0 {
			req = sealed
		}
	}
	return seeds, req
}

// FuzzDecodeEnvelope: the envelope decoder never panics on untrusted
// bytes, enforces its limits, and what it accepts re-encodes to an
// envelope that decodes alike.
func FuzzDecodeEnvelope(f *testing.F) {
	seeds, _ := envelopeSeeds(f)
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := decodeEnvelope(data, 4096, 3)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrTooDeep) {
				t.Fatalf("error %v wraps none of the decoder's errors", err)
			}
			return
		}
		if len(data) > 4096 {
			t.Fatal("accepted an envelope over the size limit")
		}
		again, err := encodeEnvelope(e)
		if err != nil {
			t.Fatal(err)
		}
		e2, err := decodeEnvelope(again, 1<<20, 3)
		if err != nil {
			t.Fatalf("re-encoded envelope does not decode: %v\n%s", err, again)
		}
		b1, _ := json.Marshal(e)
		b2, _ := json.Marshal(e2)
		if !bytes.Equal(b1, b2) {
			t.Fatalf("round trip changed the envelope:\n%s\n%s", b1, b2)
		}
	})
}

// FuzzVerify: the whole receiving path (envelope, certificate, signature,
// decryption, replay window) never panics and never hands on a message
// that it was not given signed by a trusted identity.
func FuzzVerify(f *testing.F) {
	seeds, tmpl := envelopeSeeds(f)
	for _, s := range seeds {
		f.Add(s, "fred", false)
	}
	p := testPKI(f)
	b := mem.NewBroker()
	f.Cleanup(func() { b.Close() })
	tr, err := Wrap(b.Connect(), p.caConfig("fred"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { tr.Close() })
	life := newConsumerLife() // one consumer takes every input
	f.Fuzz(func(t *testing.T, body []byte, to string, redelivered bool) {
		// The properties of the sealed seed request; only the body and the
		// recipient vary.
		m := tmpl
		m.Headers = maps.Clone(tmpl.Headers)
		m.Headers[wire.HeaderTo] = to
		m.Body = body
		d := deliveryAt(m, "", "qfred")
		d.Redelivered = redelivered
		msg, _, rej := tr.verify(t.Context(), "qfred", d, false, life)
		if rej == nil {
			// Only the genuine envelope can pass.
			if !bytes.Equal(body, seeds[len(seeds)-2]) || to != "fred" || string(msg.Body) != `{"secret":"launch codes"}` {
				t.Fatalf("accepted %q as %+v", body, msg)
			}
			return
		}
		if !slices.Contains(Reasons, rej.reason) || rej.err == nil {
			t.Fatalf("bad rejection %+v", rej)
		}
	})
}
