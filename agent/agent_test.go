package agent_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// TestBadInput publishes malformed and unservable messages straight to an
// agent's queue: each gets an error reply (when there is a reply queue) or a
// dead letter with its reason, and the agent keeps serving.
func TestBadInput(t *testing.T) {
	fabrictest.Each(t, func(t *testing.T, connect fabrictest.Connect) {
		actor := fabrictest.Actor()
		id := actor + "-a"
		tr := connect(t)
		a, err := agent.New(tr, agent.Config{Identity: id, PingInterval: time.Second, MaxMessageSize: 1024, MaxDepth: 8}, agent.WithLogger(testenv.Logger(t)))
		if err != nil {
			t.Fatal(err)
		}
		var ran atomic.Int64
		must(t, a.Handle("/"+actor+"/add", agent.Func(func(_ context.Context, in struct{ A, B int }) (int, error) {
			ran.Add(1)
			return in.A + in.B, nil
		})))
		must(t, a.Handle("/"+actor+"/boom", agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) {
			panic("boom")
		})))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		<-a.Ready()

		// A client of our own: a reply queue and a tap on the dead letters.
		c := connect(t)
		replyQ, err := c.DeclareQueue(t.Context(), transport.Queue{Exclusive: true})
		must(t, err)
		replies, err := c.Consume(t.Context(), replyQ, transport.ConsumeOptions{AutoAck: true})
		must(t, err)
		tapQ, err := c.DeclareQueue(t.Context(), transport.Queue{Exclusive: true})
		must(t, err)
		must(t, c.Bind(t.Context(), transport.Binding{Exchange: wire.DeadLetterExchange, Queue: tapQ}))
		dead, err := c.Consume(t.Context(), tapQ, transport.ConsumeOptions{AutoAck: true})
		must(t, err)

		send := func(msgID string, msg transport.Message) {
			t.Helper()
			msg.MessageID, msg.CorrelationID = msgID, msgID
			must(t, c.Publish(t.Context(), wire.RequestExchange, id, msg, transport.PublishOptions{Mandatory: true}))
		}
		path := func(p string) map[string]any { return map[string]any{wire.HeaderPath: p} }
		expectReply := func(msgID, code string) {
			t.Helper()
			select {
			case d := <-replies:
				if d.CorrelationID != msgID || wire.String(d.Headers, wire.HeaderStatus) != wire.StatusError || wire.String(d.Headers, wire.HeaderCode) != code {
					t.Fatalf("reply to %s: correlation %s headers %v, want code %s", msgID, d.CorrelationID, d.Headers, code)
				}
				if wire.String(d.Headers, wire.HeaderError) == "" {
					t.Fatalf("reply to %s has no message", msgID)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("no reply to %s", msgID)
			}
		}
		// expectReplySays: an error reply whose message names what is wrong.
		expectReplySays := func(msgID, code, says string) {
			t.Helper()
			select {
			case d := <-replies:
				msg := wire.String(d.Headers, wire.HeaderError)
				if d.CorrelationID != msgID || wire.String(d.Headers, wire.HeaderCode) != code || !strings.Contains(msg, says) {
					t.Fatalf("reply to %s: correlation %s headers %v, want code %s and a message with %q", msgID, d.CorrelationID, d.Headers, code, says)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("no reply to %s", msgID)
			}
		}
		expectDead := func(msgID, reason string) {
			t.Helper()
			for {
				select {
				case d := <-dead:
					if d.MessageID != msgID {
						continue // another test's dead letter
					}
					if wire.String(d.Headers, wire.HeaderReason) != reason || wire.String(d.Headers, wire.HeaderAgent) != id {
						t.Fatalf("dead letter %s: headers %v, want reason %s", msgID, d.Headers, reason)
					}
					return
				case <-time.After(5 * time.Second):
					t.Fatalf("no dead letter for %s", msgID)
				}
			}
		}

		send("r1", transport.Message{Type: "warren.bogus", ReplyTo: replyQ, Headers: path("/" + actor + "/add"), Body: []byte(`{}`)})
		expectReply("r1", wire.CodeBadRequest)
		send("r2", transport.Message{Type: wire.TypeRequest, ReplyTo: replyQ, Body: []byte(`{}`)})
		expectReply("r2", wire.CodeBadRequest)
		send("r3", transport.Message{Type: wire.TypeRequest, ReplyTo: replyQ, Headers: path("/" + actor + "/nope"), Body: []byte(`1`)})
		expectReply("r3", wire.CodeNoSuchService)
		send("r4", transport.Message{Type: wire.TypeRequest, ReplyTo: replyQ, Headers: path("/" + actor + "/add"), Body: []byte(`{"A":`)})
		expectReply("r4", wire.CodeBadRequest)
		send("r5", transport.Message{Type: wire.TypeRequest, ReplyTo: replyQ, Headers: path("/" + actor + "/add"), Body: []byte(`"text"`)})
		expectReply("r5", wire.CodeBadRequest)
		send("r6", transport.Message{Type: wire.TypeRequest, ReplyTo: replyQ, Headers: path("/" + actor + "/boom"), Body: []byte(`1`)})
		expectReply("r6", wire.CodePanic)
		send("r7", transport.Message{Type: wire.TypeRequest, ReplyTo: replyQ, ContentType: "application/xml", Headers: path("/" + actor + "/add"), Body: []byte(`<a/>`)})
		expectReply("r7", wire.CodeBadRequest)

		big := `"` + strings.Repeat("x", 2000) + `"`
		send("r8", transport.Message{Type: wire.TypeRequest, ReplyTo: replyQ, Headers: path("/" + actor + "/add"), Body: []byte(big)})
		expectReply("r8", wire.CodeBadRequest)
		deep := strings.Repeat("[", 9) + strings.Repeat("]", 9)
		send("r9", transport.Message{Type: wire.TypeRequest, ReplyTo: replyQ, Headers: path("/" + actor + "/add"), Body: []byte(deep)})
		expectReply("r9", wire.CodeBadRequest)

		// Header types: a deadline that is not a positive integer is
		// refused, not ignored (the request would run without the
		// deadline its sender meant); a path of the wrong type is named.
		add := func(h map[string]any) map[string]any { h[wire.HeaderPath] = "/" + actor + "/add"; return h }
		send("r10", transport.Message{Type: wire.TypeRequest, ReplyTo: replyQ, Headers: add(map[string]any{wire.HeaderDeadline: "1900000000000"}), Body: []byte(`{"A":1}`)})
		expectReplySays("r10", wire.CodeBadRequest, "warren-deadline: a string")
		send("r11", transport.Message{Type: wire.TypeRequest, ReplyTo: replyQ, Headers: add(map[string]any{wire.HeaderDeadline: int64(-5)}), Body: []byte(`{"A":1}`)})
		expectReplySays("r11", wire.CodeBadRequest, "warren-deadline: -5")
		send("r12", transport.Message{Type: wire.TypeRequest, ReplyTo: replyQ, Headers: add(map[string]any{wire.HeaderDeadline: int64(0)}), Body: []byte(`{"A":1}`)})
		expectReplySays("r12", wire.CodeBadRequest, "warren-deadline: 0")
		send("r13", transport.Message{Type: wire.TypeRequest, ReplyTo: replyQ, Headers: map[string]any{wire.HeaderPath: true}, Body: []byte(`{"A":1}`)})
		expectReplySays("r13", wire.CodeBadRequest, "warren-path: a boolean, want a string")
		send("p5", transport.Message{Type: wire.TypePush, Headers: add(map[string]any{wire.HeaderDeadline: "soon"}), Body: []byte(`{"A":1}`)})
		expectDead("p5", wire.CodeBadRequest)

		send("p1", transport.Message{Type: wire.TypePush, Headers: path("/" + actor + "/add"), Body: []byte(`{"A":`)})
		expectDead("p1", wire.CodeBadRequest)
		send("p2", transport.Message{Type: wire.TypePush, Headers: path("/" + actor + "/nope"), Body: []byte(`1`)})
		expectDead("p2", wire.CodeNoSuchService)
		past := map[string]any{wire.HeaderPath: "/" + actor + "/add", wire.HeaderDeadline: time.Now().Add(-time.Second).UnixMilli()}
		send("p3", transport.Message{Type: wire.TypePush, Headers: past, Body: []byte(`{"A":1,"B":2}`)})
		expectDead("p3", wire.CodeExpired)
		send("p4", transport.Message{Type: wire.TypePush, Headers: path("/" + actor + "/boom"), Body: []byte(`1`)})
		expectDead("p4", wire.CodePanic)
		if n := ran.Load(); n != 0 {
			t.Fatalf("handler ran %d times for bad input", n)
		}

		// Still serving.
		send("ok", transport.Message{Type: wire.TypeRequest, ReplyTo: replyQ, Headers: path("/" + actor + "/add"), Body: []byte(`{"A":2,"B":3}`)})
		select {
		case d := <-replies:
			// A success carries no headers at all, and the agent in app_id.
			if d.CorrelationID != "ok" || string(d.Body) != "5" || len(d.Headers) != 0 || d.AppID != id {
				t.Fatalf("good request after bad ones: %s %v", d.Body, d.Headers)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no reply to a good request after bad ones")
		}
	})
}

func TestConfigAndRegistration(t *testing.T) {
	tr := fabrictestMem(t)
	for _, id := range []string{"has space", "ctl\x1b[2J", "del\x7f", "bad\xffutf8"} {
		if _, err := agent.New(tr, agent.Config{Identity: id}); !errors.Is(err, wire.ErrInvalidIdentity) {
			t.Errorf("identity %q: err = %v", id, err)
		}
	}
	for _, ping := range []time.Duration{time.Nanosecond, 9 * time.Millisecond, 2 * time.Hour} {
		if _, err := agent.New(tr, agent.Config{PingInterval: ping}); err == nil {
			t.Errorf("ping interval %v accepted (mappers refuse its heartbeats)", ping)
		}
	}
	a, err := agent.New(tr, agent.Config{})
	must(t, err)
	if len(a.Identity()) != 32 {
		t.Errorf("generated identity %q", a.Identity())
	}
	if err := a.Handle("nope", agent.HandlerFunc(nil)); !errors.Is(err, wire.ErrInvalidPath) {
		t.Errorf("bad path: %v", err)
	}
	must(t, a.Handle("/x/y", agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) { return 1, nil })))
	if err := a.Handle("/x/y", agent.HandlerFunc(func(context.Context, *agent.Request) (any, error) { return 1, nil })); err == nil {
		t.Error("duplicate path accepted")
	}
	if err := a.Expose("calc", struct{}{}); err == nil {
		t.Error("exposing a type without methods accepted")
	}
	must(t, a.Expose("calc", calc{}))
	want := fmt.Sprint([]string{"/calc/add", "/calc/get_load", "/calc/http_get", "/calc/ping", "/x/y"})
	if got := fmt.Sprint(a.Services()); got != want {
		t.Errorf("services %s, want %s", got, want)
	}
}

type calc struct{}

func (calc) Add(_ context.Context, in [2]int) (int, error)         { return in[0] + in[1], nil }
func (calc) GetLoad(context.Context) (float64, error)              { return 0, nil }
func (calc) HTTPGet(_ context.Context, url string) (string, error) { return url, nil }
func (calc) Ping(context.Context, *agent.Request) error            { return nil }
func (calc) NotAHandler(int) int                                   { return 0 }

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
