package secure

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/transport/amqp"
	"github.com/warrenrpc/warren/transport/mem"
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
					sealed, err := tx.seal(b.Context(), "", "q", m)
					if err != nil {
						b.Fatal(err)
					}
					d := deliveryAt(sealed, "", "q")
					if _, _, rej := rx.verify(b.Context(), "q", d, true, nil); rej != nil {
						b.Fatal(rej.err)
					}
				}
			})
		}
	}
}

// BenchmarkRoundTrip compares a publish, consume and ack, plain and
// through the decorator, on the embedded broker and on RabbitMQ (skipped
// without WARREN_AMQP_URL).
func BenchmarkRoundTrip(b *testing.B) {
	p := testPKI(b)
	brokers := []struct {
		name    string
		connect func(b *testing.B) (transport.Transport, transport.Transport)
	}{
		{"mem", func(b *testing.B) (transport.Transport, transport.Transport) {
			br := mem.NewBroker()
			b.Cleanup(func() { br.Close() })
			return br.Connect(), br.Connect()
		}},
		{"rabbitmq", func(b *testing.B) (transport.Transport, transport.Transport) {
			url := testenv.AMQPURL(b)
			dial := func() transport.Transport {
				tr, err := amqp.Dial(b.Context(), url, amqp.Config{})
				if err != nil {
					b.Fatal(err)
				}
				return tr
			}
			return dial(), dial()
		}},
	}
	for _, br := range brokers {
		for _, mode := range []string{"plain", "secure"} {
			b.Run(br.name+"/"+mode, func(b *testing.B) {
				tx, rx := br.connect(b)
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
				q, err := rx.DeclareQueue(b.Context(), transport.Queue{Exclusive: true, AutoDelete: true})
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
}
