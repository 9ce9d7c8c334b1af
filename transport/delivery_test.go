package transport_test

import (
	"testing"

	"github.com/warrenrpc/warren/transport"
)

type settler struct {
	calls        int
	ack, requeue bool
}

func (s *settler) Settle(ack, requeue bool) error {
	s.calls++
	s.ack, s.requeue = ack, requeue
	return nil
}

// A delivery built with a Settler settles through it, as one built with a
// func does through the func; without either, Ack and Nack do nothing.
func TestNewSettledDelivery(t *testing.T) {
	var s settler
	d := transport.NewSettledDelivery(transport.Message{}, &s)
	if err := d.Ack(); err != nil || s.calls != 1 || !s.ack {
		t.Fatalf("Ack: err %v, settler %+v", err, s)
	}
	s = settler{}
	d = transport.NewSettledDelivery(transport.Message{}, &s)
	if err := d.Nack(true); err != nil || s.calls != 1 || s.ack || !s.requeue {
		t.Fatalf("Nack(true): err %v, settler %+v", err, s)
	}
	for _, d := range []*transport.Delivery{
		transport.NewSettledDelivery(transport.Message{}, nil),
		transport.NewDelivery(transport.Message{}, nil),
	} {
		if d.Ack() != nil || d.Nack(false) != nil {
			t.Fatal("a delivery without settlement returned an error")
		}
	}
}
