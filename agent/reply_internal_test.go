package agent

import (
	"context"
	"testing"
	"time"
)

// A reply's context is not cancelled with the handlers' and gives up
// replyTimeout to a second more after the reply started; the replies of
// one second share it, and a new run gets its own.
func TestReplyContext(t *testing.T) {
	a := &Agent{}
	parent, cancel := context.WithCancel(context.Background())
	start := time.Now()
	ctx := a.replyContext(parent)
	cancel()
	if ctx.Err() != nil {
		t.Fatalf("reply context ended with its parent: %v", ctx.Err())
	}
	dl, ok := ctx.Deadline()
	if !ok || dl.Before(start.Add(replyTimeout)) || dl.After(time.Now().Add(replyTimeout+time.Second)) {
		t.Errorf("deadline %v after the reply started (ok %v), want %v to %v", dl.Sub(start), ok, replyTimeout, replyTimeout+time.Second)
	}
	if again := a.replyContext(parent); again != ctx && time.Since(start) < time.Second/2 {
		t.Error("a second reply within the second got a context of its own")
	}
	other := context.Background()
	if c := a.replyContext(other); c == ctx {
		t.Error("a new parent (a new run) got the old run's reply context")
	}
}
