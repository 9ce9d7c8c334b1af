package setup

import (
	"regexp"
	"testing"
)

// TestPermissionTable checks the patterns against every resource each role
// touches (docs/protocol.md) and a few it must not.
func TestPermissionTable(t *testing.T) {
	agent, err := AgentPermissions()
	if err != nil {
		t.Fatal(err)
	}
	fred, err := AgentPermissions("fred", "a.b*c")
	if err != nil {
		t.Fatal(err)
	}
	scoped, err := AgentScope{Identities: []string{"fred"}, Services: []string{"/bank/transfer", "/simple/", "/a.b/c|d"}}.Permissions()
	if err != nil {
		t.Fatal(err)
	}
	mapper := MapperPermissions()
	grouped, err := AgentScope{Identities: []string{"fred"}, Events: EventScope{Groups: []string{"enc", "a.b"}}}.Permissions()
	if err != nil {
		t.Fatal(err)
	}
	mapperGrouped, err := MapperScope{Events: EventScope{Groups: []string{"enc"}}}.Permissions()
	if err != nil {
		t.Fatal(err)
	}
	noEvents, err := AgentScope{Events: EventScope{NoEvents: true}}.Permissions()
	if err != nil {
		t.Fatal(err)
	}
	mapperNoEvents, err := MapperScope{Events: EventScope{NoEvents: true}}.Permissions()
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		perm         Permissions
		name         string
		conf, wr, rd bool
	}
	for _, r := range []row{
		{agent, "warren.request", true, false, true},
		{agent, "warren.service", true, false, true},
		{agent, "warren.heartbeat", true, true, false},
		{agent, "warren.control", true, false, true},
		{agent, "warren.dlx", true, true, true},
		{agent, "warren.dead", true, true, false},
		{agent, "warren.agent.bob", true, true, true},
		{agent, "warren.service./simple/echo", true, true, true},
		{agent, "amq.gen-JzTY20BRgKO-HjmUJj0wLg", true, true, true},
		{agent, "amq.default", false, true, false},
		{agent, "amq.direct", false, false, false},
		{agent, "warren.agent.", false, false, false},
		{agent, "other", false, false, false},
		{fred, "warren.agent.fred", true, true, true},
		{fred, "warren.agent.a.b*c", true, true, true},
		{fred, "warren.agent.a.bbc", false, false, false},
		{fred, "warren.agent.bob", false, false, false},
		{fred, "warren.agent.fredx", false, false, false},
		{scoped, "warren.agent.fred", true, true, true},
		{scoped, "warren.agent.bob", false, false, false},
		{scoped, "warren.service./bank/transfer", true, true, true},
		{scoped, "warren.service./simple/echo", true, true, true},
		{scoped, "warren.service./simple/", false, false, false},
		{scoped, "warren.service./a.b/c|d", true, true, true},
		{scoped, "warren.service./aXb/c", false, false, false},
		{scoped, "warren.service./bank/transfer2", false, false, false},
		{scoped, "warren.service./bank/audit", false, false, false},
		{scoped, "warren.service./other/x", false, false, false},
		{scoped, "warren.service", true, false, true},
		{scoped, "warren.dlx", true, true, true},
		{scoped, "amq.gen-JzTY20BRgKO-HjmUJj0wLg", true, true, true},
		{scoped, "amq.default", false, true, false},
		{mapper, "warren.request", true, true, false},
		{mapper, "warren.service", true, true, false},
		{mapper, "warren.heartbeat", true, false, true},
		{mapper, "warren.control", true, true, false},
		{mapper, "warren.dead", true, true, false},
		{mapper, "warren.agent.fred", false, false, false},
		{mapper, "warren.service./simple/echo", false, false, false},
		{mapper, "amq.gen-JzTY20BRgKO-HjmUJj0wLg", true, true, true},
		{mapper, "amq.default", false, false, false},
		// Events: declare, publish to and bind from warren.events; declare,
		// bind and consume the subscriber queues; declare them with
		// warren.dlx as dead-letter exchange (write) and publish dead
		// letters there.
		{agent, "warren.events", true, true, true},
		{agent, "warren.events.one.enc", true, true, true},
		{agent, "warren.events.host.enc.h1", true, true, true},
		{agent, "warren.events.all.web-1", true, true, true},
		{agent, "warren.events.one.", false, false, false},
		{agent, "warren.events.other.x", false, false, false},
		{agent, "warren.eventsx", false, false, false},
		{fred, "warren.events.all.fred", true, true, true},
		{fred, "warren.events.all.bob", false, false, false},
		{fred, "warren.events.one.anything", true, true, true},
		{grouped, "warren.events.one.enc", true, true, true},
		{grouped, "warren.events.one.a.b", true, true, true},
		{grouped, "warren.events.one.aXb", false, false, false},
		{grouped, "warren.events.one.encx", false, false, false},
		{grouped, "warren.events.one.billing", false, false, false},
		{grouped, "warren.events.host.enc.h1", true, true, true},
		{grouped, "warren.events.host.enc.h1.example.com", true, true, true},
		{grouped, "warren.events.host.enc.", false, false, false},
		{grouped, "warren.events.host.enc.x.h1", true, true, true}, // group enc.x: documented
		{grouped, "warren.events.one.enc.x", false, false, false},
		{grouped, "warren.events.host.billing.h1", false, false, false},
		{grouped, "warren.events.all.fred", true, true, true},
		{grouped, "warren.events.all.bob", false, false, false},
		{grouped, "warren.events", true, true, true},
		{mapper, "warren.events", true, true, true},
		{mapper, "warren.dlx", true, true, true},
		{mapper, "warren.events.one.enc", true, true, true},
		{mapper, "warren.events.host.enc.h1", true, true, true},
		{mapper, "warren.events.all.fred", true, true, true},
		{mapperGrouped, "warren.events.one.enc", true, true, true},
		{mapperGrouped, "warren.events.one.billing", false, false, false},
		{mapperGrouped, "warren.events.host.billing.h1", false, false, false},
		{mapperGrouped, "warren.events.all.fred", true, true, true},
		{noEvents, "warren.events", false, false, false},
		{noEvents, "warren.events.one.enc", false, false, false},
		{noEvents, "warren.events.all.fred", false, false, false},
		{noEvents, "warren.dlx", true, true, true},
		{mapperNoEvents, "warren.events", false, false, false},
		{mapperNoEvents, "warren.events.one.enc", false, false, false},
		{mapperNoEvents, "warren.dlx", true, false, true},
	} {
		got := [3]bool{
			regexp.MustCompile(r.perm.Configure).MatchString(r.name),
			regexp.MustCompile(r.perm.Write).MatchString(r.name),
			regexp.MustCompile(r.perm.Read).MatchString(r.name),
		}
		if want := [3]bool{r.conf, r.wr, r.rd}; got != want {
			t.Errorf("%v on %q: configure/write/read %v, want %v", r.perm, r.name, got, want)
		}
	}
	for _, bad := range []string{"", "a b", "a/b", "a\tb", "a\x00"} {
		if _, err := AgentPermissions(bad); err == nil {
			t.Errorf("identity %q accepted", bad)
		}
	}
	for _, bad := range []EventScope{{Groups: []string{"a b"}}, {Groups: []string{""}}, {Groups: []string{"enc"}, NoEvents: true}} {
		if _, err := (MapperScope{Events: bad}).Permissions(); err == nil {
			t.Errorf("event scope %+v accepted", bad)
		}
		if _, err := (AgentScope{Events: bad}).Permissions(); err == nil {
			t.Errorf("event scope %+v accepted", bad)
		}
	}
	for _, bad := range []string{"", "/", "//", "bank", "/bank", "bank/", "/bank/a/b", "/bank//", "/ba nk/", "/bank/x\n"} {
		if _, err := (AgentScope{Services: []string{bad}}).Permissions(); err == nil {
			t.Errorf("service %q accepted", bad)
		}
	}
}

func TestCheckPassword(t *testing.T) {
	// RabbitMQ 3.10's hash of "guest" (GET /api/users/guest).
	const h = "Me2gZNGtkW8S61yFO6zbkQJBhL97E2hhnZkYbI0JxiQz7VDv"
	if m, k := checkPassword("rabbit_password_hashing_sha256", h, "guest"); !m || !k {
		t.Errorf("guest: match %v known %v", m, k)
	}
	if m, _ := checkPassword("rabbit_password_hashing_sha256", h, "guesT"); m {
		t.Error("wrong password matched")
	}
	if _, k := checkPassword("bcrypt", h, "guest"); k {
		t.Error("unknown algorithm claimed known")
	}
	if m, _ := checkPassword("rabbit_password_hashing_sha256", "", "x"); m {
		t.Error("empty hash matched")
	}
}

// TestTopologyMatchesWire keeps the exchanges setup declares in step with
// the protocol's.
func TestTopologyMatchesWire(t *testing.T) {
	want := map[string]string{
		"warren.request": "direct", "warren.service": "direct", "warren.heartbeat": "fanout",
		"warren.control": "fanout", "warren.dlx": "fanout",
	}
	if eventExchange.name != "warren.events" || eventExchange.kind != "topic" {
		t.Errorf("event exchange %+v, want the topic exchange warren.events", eventExchange)
	}
	if len(topologyExchanges) != len(want) {
		t.Fatalf("%d exchanges, want %d", len(topologyExchanges), len(want))
	}
	for _, ex := range topologyExchanges {
		if want[ex.name] != ex.kind {
			t.Errorf("exchange %s kind %s, want %s", ex.name, ex.kind, want[ex.name])
		}
	}
}
