package tower_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/tower"
)

// row returns the Services page's row of path, or "".
func row(html, path string) string {
	i := strings.Index(html, `<tr data-path="`+path+`">`)
	if i < 0 {
		return ""
	}
	j := strings.Index(html[i:], "</tr>")
	if j < 0 {
		return ""
	}
	return html[i : i+j]
}

func rowHas(path string, subs ...string) func(string) bool {
	return func(html string) bool { return has(subs...)(row(html, path)) }
}

var fabricRate = regexp.MustCompile(`<td class="fabric rate">([0-9.]+)</td>`)

// TestFabricFigures: requests sent by a mapper that is not the Tower show
// on the Services page, from discovery STATS summed over the agents.
func TestFabricFigures(t *testing.T) {
	f := newFixture(t, tower.Config{Stats: 200 * time.Millisecond})
	f.agent(t, "fred", 0.5)
	f.agent(t, "bob", 0.5)

	tr := f.b.Connect()
	t.Cleanup(func() { tr.Close() })
	m, err := mapper.New(tr, mapper.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-m.Ready()
	// Both agents serve the paths before the load starts, so that it is
	// spread over them.
	for len(m.Agents()) < 2 {
		select {
		case <-ctx.Done():
			t.Fatal("agents not registered")
		case <-time.After(10 * time.Millisecond):
		}
	}
	for i := range 6 {
		if _, err := m.Request(ctx, "/simple/echo", i); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if _, err := m.Request(ctx, "/simple/fail", nil); err == nil {
			t.Fatal("/simple/fail succeeded")
		}
	}

	ev := f.events(t)
	html := ev.wait(t, "services", func(s string) bool {
		return rowHas("/simple/echo", `<td class="fabric total">6</td>`, `<td class="fabric errors">0</td>`)(s) &&
			rowHas("/simple/fail", `<td class="fabric total">2</td>`, `<td class="fabric errors">2</td>`)(s)
	})
	if r := row(html, "/simple/echo"); !strings.Contains(r, "none sent through the Tower") {
		t.Fatalf("the Tower's own figures count requests it did not send: %s", r)
	}

	// A steady load: the rate shows, above zero.
	loadDone := make(chan struct{})
	lctx, lcancel := context.WithCancel(ctx)
	go func() {
		defer close(loadDone)
		for i := 0; i < 10000 && lctx.Err() == nil; i++ {
			_, _ = m.Request(lctx, "/simple/echo", i)
			select {
			case <-lctx.Done():
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	defer func() { lcancel(); <-loadDone }()
	ev.wait(t, "services", func(s string) bool {
		r := row(s, "/simple/echo")
		mm := fabricRate.FindStringSubmatch(r)
		return mm != nil && mm[1] != "0.00" && !strings.Contains(r, `<td class="fabric total">6</td>`)
	})
}
