package cli

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/warrenrpc/warren/agent"
	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// hostile holds what a terminal acts on: CSI sequences (clear screen, move
// the cursor), OSC (set the title), a bell, a backspace, a carriage return,
// DEL, the 8-bit CSI (C1), a right-to-left override and invalid UTF-8.
const hostile = "\x1b[2J\x1b[1;1H\x1b]0;pwned\x07\b\rok\x7f\u009b31m\u202eevil\xff\xfe"

// clean fails t when out holds a byte or character a terminal could act on
// (newlines apart).
func clean(t *testing.T, what, out string) {
	t.Helper()
	for i, r := range out {
		if r == utf8.RuneError && !strings.HasPrefix(out[i:], "\ufffd") {
			t.Errorf("%s: invalid UTF-8 at byte %d: %q", what, i, out)
			return
		}
		if r != '\n' && (unicode.IsControl(r) || bidi(r)) {
			t.Errorf("%s: control character %U at byte %d: %q", what, r, i, out)
			return
		}
	}
}

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"":                    "",
		"fred /simple/echo":   "fred /simple/echo",
		`back\slash é ☃ 日本`:   `back\slash é ☃ 日本`,
		"a\x1b[2Jb":           `a\x1b[2Jb`,
		"tab\tnew\nline\r":    `tab\x09new\x0aline\x0d`,
		"del\x7f c1\u009b":    `del\x7f c1\u009b`,
		"bad\xff\xfeutf8":     `bad\xff\xfeutf8`,
		"rlo\u202eiso\u2066x": `rlo\u202eiso\u2066x`,
	} {
		if got := escape(in); got != want {
			t.Errorf("escape(%q) = %q, want %q", in, got, want)
		}
		clean(t, "escape", escape(in))
	}
	// The JSON log handler's records.
	var logs strings.Builder
	log := slog.New(slog.NewJSONHandler(jsonLines{&logs}, nil))
	log.Warn("heartbeat refused", "identity", hostile)
	clean(t, "JSON log", logs.String())
	var rec map[string]string
	if err := json.Unmarshal([]byte(logs.String()), &rec); err != nil || !strings.HasPrefix(rec["identity"], "\x1b[2J") {
		t.Errorf("JSON log record: %v %q", err, logs.String())
	}
	if got := escapeLines("a\nb\x1bc"); got != `a`+"\n"+`b\x1bc` {
		t.Errorf("escapeLines: %q", got)
	}
	// JSON: what encoding/json leaves raw is escaped, and the text still
	// parses to the same string (invalid bytes to U+FFFD, as JSON readers do).
	b, _ := json.Marshal(map[string]any{"k": hostile, "raw": json.RawMessage("\"\x7f\xff\u009b\"")})
	got := escapeJSON(b)
	clean(t, "escapeJSON", string(got))
	var back map[string]string
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatalf("escapeJSON broke JSON: %v\n%s", err, got)
	}
	if want := strings.TrimSuffix(hostile, "\xff\xfe") + "\ufffd\ufffd"; back["k"] != want || back["raw"] != "\x7f\ufffd\u009b" {
		t.Errorf("round trip: %q, want %q", back["k"], want)
	}
}

// TestHostileRemoteDataEscaped puts a dead letter whose every field is
// hostile in warren.dead and runs the commands that show it; then an agent
// whose identity, tags, error message and result are hostile: nothing a
// terminal acts on reaches stdout or stderr.
func TestHostileRemoteDataEscaped(t *testing.T) {
	tr, url := rabbit(t)
	actor := fabrictest.Actor()
	// The id is typed on the command line too: valid UTF-8 there.
	id := actor + "-\x1b[2J\u009b\u202e"
	msg := transport.Message{Type: wire.TypePush, MessageID: id, AppID: hostile, Body: []byte(hostile), Headers: map[string]any{
		// The reason picks it out of warren.dead, which other tests share.
		wire.HeaderPath: "/" + hostile, wire.HeaderReason: actor, wire.HeaderError: hostile + "\nline two" + hostile,
		wire.HeaderAgent: hostile, "warren-original-exchange": hostile, "warren-original-routing-key": hostile,
	}}
	if err := tr.Publish(t.Context(), wire.DeadLetterExchange, "", msg, transport.PublishOptions{Confirm: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { run(t, context.Background(), "dlq", "purge", id, "--hold", "65534", "--broker", url) })
	for _, args := range [][]string{
		{"dlq", "list", "--reason", actor}, {"dlq", "list", "--reason", actor, "--json"}, {"dlq", "show", id}, {"dlq", "show", id, "--json"},
		// An unknown id quoted in an error; a replay whose destination
		// (an exchange named by the letter) does not exist.
		{"dlq", "replay", actor + "-gone\x1b[2J\u009b"}, {"dlq", "replay", id},
	} {
		// warren.dead on a shared broker may hold more than the default --hold.
		code, out, errOut := run(t, t.Context(), append(args, "--hold", "65534", "--broker", url)...)
		t.Logf("%q: exit %d\n%s%s", args[:2], code, out, errOut)
		clean(t, strings.Join(args[:2], " ")+" stdout", out)
		clean(t, strings.Join(args[:2], " ")+" stderr", errOut)
		if args[1] == "list" && (code != 0 || !strings.Contains(out, actor)) {
			t.Errorf("%q: exit %d, letter not listed", args[:2], code)
		}
		if args[1] == "show" && (code != 0 || !strings.Contains(out, actor)) {
			t.Errorf("%q: exit %d, letter not shown", args[:2], code)
		}
		if args[1] == "replay" && code != 1 {
			t.Errorf("%q: exit %d, want 1", args[:2], code)
		}
	}

	// An agent that answers with a hostile result and fails with a hostile
	// message, and heartbeats whose every field is hostile (the mapper
	// takes any identity), sent while agents runs.
	ident := actor + "-a"
	a, err := agent.New(tr, agent.Config{Identity: ident, PingInterval: time.Second}, agent.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	path := "/" + actor + "/bad"
	if err := a.Handle(path, agent.HandlerFunc(func(_ context.Context, r *agent.Request) (any, error) {
		if string(r.Payload) == "1" {
			return nil, errors.New(hostile)
		}
		return hostile, nil
	})); err != nil {
		t.Fatal(err)
	}
	fabrictest.RunAgent(t, a)
	// Mappers refuse identities, paths and tags with control characters;
	// a status is any JSON value.
	hb, _ := json.Marshal(wire.Heartbeat{Identity: actor + "-hb", Services: []string{"/" + actor + "/x"},
		Status: hostile, PingInterval: 1000, Started: time.Now()})
	beat := transport.Message{Type: wire.TypePing, Body: hb, ContentType: wire.ContentJSON}
	t.Cleanup(func() {
		bye := beat
		bye.Type = wire.TypeUnregister
		_ = tr.Publish(context.Background(), wire.HeartbeatExchange, "", bye, transport.PublishOptions{})
	})
	for _, args := range [][]string{
		{"agents"}, {"agents", "--json"}, {"request", path}, {"request", path, "1"}, {"request", path, "--selector", "all"},
	} {
		ctx, cancel := context.WithCancel(t.Context())
		beating := make(chan struct{})
		go func() {
			defer close(beating)
			for ctx.Err() == nil {
				_ = tr.Publish(ctx, wire.HeartbeatExchange, "", beat, transport.PublishOptions{})
				select {
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
		code, out, errOut := run(t, t.Context(), append(args, "--broker", url)...)
		cancel()
		<-beating
		t.Logf("%q: exit %d\n%s%s", args, code, out, errOut)
		clean(t, strings.Join(args, " ")+" stdout", out)
		clean(t, strings.Join(args, " ")+" stderr", errOut)
		if args[0] == "agents" && (!strings.Contains(out, ident) || !strings.Contains(out, actor+"-hb") || !strings.Contains(out, `\u001b[2J`)) {
			t.Errorf("%q: the agents are not listed", args)
		}
		if args[0] == "request" && !strings.Contains(out+errOut, `\x1b`) && !strings.Contains(out+errOut, `\u001b`) {
			t.Errorf("%q: no escaped result or error", args)
		}
	}
}
