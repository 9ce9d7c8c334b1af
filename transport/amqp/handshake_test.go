package amqp

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// fakeBroker speaks the first steps of the AMQP handshake on loopback and
// then falls silent: after connection.start-ok ("start-ok") or after
// connection.open ("open"). reached is closed once the client's frame of
// that step has arrived, so a test ends the dial's context exactly there.
func fakeBroker(t *testing.T, hangAfter string) (url string, reached chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reached = make(chan struct{})
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		hang := func() {
			close(reached)
			_, _ = io.Copy(io.Discard, c) // until the client goes
		}
		header := make([]byte, 8)
		if _, err := io.ReadFull(c, header); err != nil {
			return
		}
		// connection.start: version 0-9, no properties, PLAIN, en_US.
		start := method(10, 10)
		start = append(start, 0, 9)
		start = binary.BigEndian.AppendUint32(start, 0)
		start = longstr(start, "PLAIN")
		start = longstr(start, "en_US")
		writeFrame(c, start)
		if readFrame(c) != nil { // start-ok
			return
		}
		if hangAfter == "start-ok" {
			hang()
			return
		}
		// connection.tune: channel-max 0, frame-max 131072, heartbeat 0.
		tune := method(10, 30)
		tune = binary.BigEndian.AppendUint16(tune, 0)
		tune = binary.BigEndian.AppendUint32(tune, 131072)
		tune = binary.BigEndian.AppendUint16(tune, 0)
		writeFrame(c, tune)
		if readFrame(c) != nil { // tune-ok
			return
		}
		if readFrame(c) != nil { // open
			return
		}
		hang()
	}()
	return "amqp://guest:guest@" + ln.Addr().String() + "/", reached
}

func method(class, id uint16) []byte {
	b := binary.BigEndian.AppendUint16(nil, class)
	return binary.BigEndian.AppendUint16(b, id)
}

func longstr(b []byte, s string) []byte {
	return append(binary.BigEndian.AppendUint32(b, uint32(len(s))), s...)
}

func writeFrame(w io.Writer, payload []byte) {
	f := []byte{1, 0, 0}
	f = binary.BigEndian.AppendUint32(f, uint32(len(payload)))
	f = append(append(f, payload...), 0xCE)
	_, _ = w.Write(f)
}

func readFrame(r io.Reader) error {
	h := make([]byte, 7)
	if _, err := io.ReadFull(r, h); err != nil {
		return err
	}
	_, err := io.ReadFull(r, make([]byte, binary.BigEndian.Uint32(h[3:])+1))
	return err
}

// TestDialCutShortIsNotACredentialsError: a dial whose context ends during
// the AMQP handshake (a --timeout, a SIGINT) reports that, not what amqp091
// guesses from its socket closing under it: "username or password not
// allowed" after start-ok, "no access to this vhost" after open.
func TestDialCutShortIsNotACredentialsError(t *testing.T) {
	for _, step := range []string{"start-ok", "open"} {
		for _, how := range []string{"cancel", "deadline"} {
			t.Run(step+"/"+how, func(t *testing.T) {
				url, reached := fakeBroker(t, step)
				var (
					ctx    context.Context
					cancel context.CancelFunc
					want   error
				)
				if how == "cancel" {
					ctx, cancel = context.WithCancel(t.Context())
					want = context.Canceled
					go func() {
						<-reached
						cancel()
					}()
				} else {
					// The deadline passes while the broker is silent.
					ctx, cancel = context.WithTimeout(t.Context(), 300*time.Millisecond)
					want = context.DeadlineExceeded
				}
				defer cancel()
				tr, err := Dial(ctx, url, Config{})
				if err == nil {
					tr.Close()
					t.Fatal("Dial succeeded")
				}
				select {
				case <-reached:
				default:
					t.Fatalf("Dial returned before the handshake reached %s: %v", step, err)
				}
				msg := err.Error()
				if strings.Contains(msg, "password") || strings.Contains(msg, "vhost") {
					t.Errorf("err = %q: blames the credentials", msg)
				}
				if !errors.Is(err, want) {
					t.Errorf("err = %v, want one wrapping %v", err, want)
				}
				if !strings.Contains(msg, "gave up during the AMQP handshake") {
					t.Errorf("err = %q, want it to say where the dial was cut short", msg)
				}
				var de *DialError
				if !errors.As(err, &de) || strings.Contains(msg, "guest:guest") {
					t.Errorf("err = %q, want a *DialError without the password", msg)
				}
			})
		}
	}
}

// lateTimer is a context whose deadline has passed but whose timer has not
// run yet (Err is nil), as a loaded machine shows: the socket's deadline
// fires first.
type lateTimer struct {
	context.Context
	deadline time.Time
}

func (c lateTimer) Deadline() (time.Time, bool) { return c.deadline, true }

// TestDialDeadlineBeforeItsTimer: a dial that failed because its deadline
// passed says so even when ctx's timer has not run yet.
func TestDialDeadlineBeforeItsTimer(t *testing.T) {
	url, _ := fakeBroker(t, "open")
	ctx := lateTimer{Context: t.Context(), deadline: time.Now().Add(-time.Millisecond)}
	tr, err := Dial(ctx, url, Config{})
	if err == nil {
		tr.Close()
		t.Fatal("Dial succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "gave up during the TCP connection") {
		t.Errorf("err = %v, want a deadline during the TCP connection", err)
	}
}
