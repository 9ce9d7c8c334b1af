package amqp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// deliverTo runs amqp091-go itself against a fake broker on a pipe that
// opens a connection and a channel, takes a basic.consume and delivers one
// message whose content header frame is header (its channel set to 1). With
// filter, amqp091 reads through a frameConn. It returns the delivery, or
// the error that closed the connection.
func deliverTo(t *testing.T, header []byte, filter bool) (*amqp091.Delivery, error) {
	t.Helper()
	server, client := net.Pipe()
	served := make(chan struct{})
	go func() { fakeDeliver(server, header); close(served) }()
	defer func() {
		// The fake broker answers no connection.close: end the pipe,
		// which ends amqp091's goroutines and the fake broker.
		client.Close()
		server.Close()
		<-served
	}()
	var conn net.Conn = client
	if filter {
		conn = newFrameConn(client, nil)
	}
	c, err := amqp091.Open(conn, amqp091.Config{SASL: []amqp091.Authentication{&amqp091.PlainAuth{Username: "u", Password: "p"}}, Vhost: "/", Locale: "en_US"})
	if err != nil {
		t.Fatalf("handshake with the fake broker: %v", err)
	}
	closed := c.NotifyClose(make(chan *amqp091.Error, 1))
	ch, err := c.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	ds, err := ch.Consume("q", "tag", true, false, false, false, nil)
	if err != nil {
		t.Fatalf("consume: %v", err)
	}
	select {
	case d, ok := <-ds:
		if ok {
			return &d, nil
		}
		return nil, <-closed
	case e := <-closed:
		return nil, e
	case <-time.After(10 * time.Second):
		t.Fatal("neither a delivery nor a close")
	}
	return nil, nil
}

func fakeDeliver(c net.Conn, header []byte) {
	frame := func(ch uint16, typ byte, payload []byte) {
		f := []byte{typ}
		f = binary.BigEndian.AppendUint16(f, ch)
		f = binary.BigEndian.AppendUint32(f, uint32(len(payload)))
		f = append(append(f, payload...), frameEnd)
		_, _ = c.Write(f)
	}
	if _, err := io.ReadFull(c, make([]byte, 8)); err != nil {
		return
	}
	start := method(10, 10)
	start = append(start, 0, 9)
	start = binary.BigEndian.AppendUint32(start, 0)
	start = longstr(start, "PLAIN")
	start = longstr(start, "en_US")
	frame(0, 1, start)
	if readFrame(c) != nil { // start-ok
		return
	}
	tune := method(10, 30)
	tune = binary.BigEndian.AppendUint16(tune, 0)
	tune = binary.BigEndian.AppendUint32(tune, 131072)
	tune = binary.BigEndian.AppendUint16(tune, 0)
	frame(0, 1, tune)
	if readFrame(c) != nil || readFrame(c) != nil { // tune-ok, open
		return
	}
	frame(0, 1, append(method(10, 41), 0)) // open-ok
	if readFrame(c) != nil {               // channel.open
		return
	}
	frame(1, 1, binary.BigEndian.AppendUint32(method(20, 11), 0)) // channel.open-ok
	if readFrame(c) != nil {                                      // basic.consume
		return
	}
	frame(1, 1, append(append(method(60, 21), 3), "tag"...)) // consume-ok
	deliver := append(append(method(60, 60), 3), "tag"...)
	deliver = binary.BigEndian.AppendUint64(deliver, 1)
	deliver = append(deliver, 0, 0, 1, 'q') // not redelivered, exchange "", key "q"
	frame(1, 1, deliver)
	h := append([]byte(nil), header...)
	binary.BigEndian.PutUint16(h[1:3], 1)
	_, _ = c.Write(h)
	frame(1, 3, []byte("hello"))
	_, _ = io.Copy(io.Discard, c)
}

// TestFilterAgreesWithAmqp091 runs amqp091-go v1.16.0 itself on the
// content headers of TestSanitizeContentHeader's cases: it reads those
// the filter passes unchanged, refuses (closing the connection with 501)
// those the filter rewrites, and reads every rewrite.
func TestFilterAgreesWithAmqp091(t *testing.T) {
	frames := map[string][]byte{
		"clean":             headerFrame(flagHeaders|fAppID, table(entry("d", deep(32)), entry("a", longBytes('A', deep(31)))), shortstr("app")),
		"33 deep":           headerFrame(flagHeaders|fAppID, table(entry("keep", str("me")), entry("d", deep(33))), shortstr("app")),
		"33 deep in array":  headerFrame(flagHeaders, table(entry("a", longBytes('A', deep(32))))),
		"unknown type":      headerFrame(flagHeaders, table(entry("z", []byte{'Z', 1}))),
		"negative bytes":    headerFrame(flagHeaders, table(entry("x", []byte{'x', 0xff, 0xff, 0xff, 0xff}))),
		"truncated message": headerFrame(fContentType|fMessageID, shortstr("text/plain"), []byte{10, 'a'}),
	}
	var many [][]byte
	for i := range maxContainerElements + 1 {
		many = append(many, entry(fmt.Sprint(i), []byte{'V'}))
	}
	frames["8193 entries"] = headerFrame(flagHeaders, table(many...))
	frames["8192 entries"] = headerFrame(flagHeaders, table(many[:maxContainerElements]...))
	for name, f := range frames {
		t.Run(name, func(t *testing.T) {
			fixed, why := sanitizeContentHeader(f)
			d, err := deliverTo(t, f, false)
			var ae *amqp091.Error
			switch {
			case fixed == nil && err != nil:
				t.Fatalf("the filter passes it, amqp091 refuses it: %v", err)
			case fixed != nil && (err == nil || !errors.As(err, &ae) || ae.Code != amqp091.FrameError):
				t.Fatalf("the filter rewrites it (%s), amqp091 reads it: %v, %v", why, d, err)
			}
			d, err = deliverTo(t, f, true)
			if err != nil {
				t.Fatalf("through the filter: %v", err)
			}
			if string(d.Body) != "hello" {
				t.Errorf("body %q", d.Body)
			}
			if fixed != nil && d.Headers["warren-malformed"] != why {
				t.Errorf("headers %v, want the reason %q", d.Headers, why)
			}
		})
	}
}
