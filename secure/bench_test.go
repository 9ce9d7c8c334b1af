package secure

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/mem"
	"github.com/warrenrpc/warren/wire"
)

// BenchmarkSealOpen measures the decorator's own work per message: sign and
// encrypt at the sender, verify and decrypt at the recipient, without a
// broker.
func BenchmarkSealOpen(b *testing.B) {
	p := testPKI(b)
	for _, mode := range []string{"encrypt", "sign-only"} {
		for _, size := range []int{100, 4 << 10, 64 << 10} {
			b.Run(fmt.Sprintf("%s/%dB", mode, size), func(b *testing.B) {
				br := mem.NewBroker()
				defer br.Close()
				txCfg := p.caConfig("mapper1")
				txCfg.SignOnly = mode == "sign-only"
				tx, err := Wrap(br.Connect(), txCfg)
				if err != nil {
					b.Fatal(err)
				}
				defer tx.Close()
				rx, err := Wrap(br.Connect(), p.caConfig("fred"))
				if err != nil {
					b.Fatal(err)
				}
				defer rx.Close()
				m := request("fred", "/a/b")
				m.Body = bytes.Repeat([]byte("x"), size)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					sealed, err := tx.seal(b.Context(), "", m)
					if err != nil {
						b.Fatal(err)
					}
					d := transport.NewDelivery(sealed, nil)
					if _, _, rej := rx.verify(b.Context(), d, true); rej != nil {
						b.Fatal(rej.err)
					}
				}
			})
		}
	}
}

// BenchmarkRoundTrip compares a publish, consume and ack through the
// embedded broker, plain and through the decorator.
func BenchmarkRoundTrip(b *testing.B) {
	p := testPKI(b)
	for _, mode := range []string{"plain", "secure"} {
		b.Run(mode, func(b *testing.B) {
			br := mem.NewBroker()
			defer br.Close()
			var tx, rx transport.Transport = br.Connect(), br.Connect()
			if mode == "secure" {
				var err error
				if tx, err = Wrap(tx, p.caConfig("mapper1")); err != nil {
					b.Fatal(err)
				}
				if rx, err = Wrap(rx, p.caConfig("fred")); err != nil {
					b.Fatal(err)
				}
			}
			defer tx.Close()
			defer rx.Close()
			if err := wire.Topology(b.Context(), rx); err != nil {
				b.Fatal(err)
			}
			q, err := rx.DeclareQueue(b.Context(), transport.Queue{Name: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			in, err := rx.Consume(b.Context(), q, transport.ConsumeOptions{Prefetch: 1})
			if err != nil {
				b.Fatal(err)
			}
			m := request("fred", "/a/b")
			b.ReportAllocs()
			for b.Loop() {
				if err := tx.Publish(b.Context(), "", q, m, transport.PublishOptions{}); err != nil {
					b.Fatal(err)
				}
				d := <-in
				if err := d.Ack(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
