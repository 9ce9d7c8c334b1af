package transporttest

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/warrenrpc/warren/transport"
)

func exclusiveQueueDeletedOnClose(e *env) {
	a, b := e.open(), e.open()
	q := e.queue(a, transport.Queue{Exclusive: true})
	if err := e.exists(b, q); err != nil {
		e.t.Fatalf("exclusive queue seen from another connection: %v", err)
	}
	if err := a.Close(); err != nil {
		e.t.Fatalf("close: %v", err)
	}
	e.gone(b, q)
}

func exclusiveQueueOtherConnection(e *env) {
	a, b := e.open(), e.open()
	q := e.queue(a, transport.Queue{Exclusive: true})
	_, err := b.DeclareQueue(e.ctx(), transport.Queue{Name: q, Exclusive: true})
	e.wantErr("declare another connection's exclusive queue", err, transport.ErrPrecondition)
	_, err = b.Consume(e.ctx(), q, transport.ConsumeOptions{})
	e.wantErr("consume another connection's exclusive queue", err, transport.ErrPrecondition)
	x := e.exchange(b, transport.Fanout)
	err = b.Bind(e.ctx(), transport.Binding{Exchange: x, Queue: q})
	e.wantErr("bind another connection's exclusive queue", err, transport.ErrPrecondition)
	err = b.DeleteQueue(e.ctx(), q)
	e.wantErr("delete another connection's exclusive queue", err, transport.ErrPrecondition)
	// Its owner declares it again as it is, but not as a shared queue.
	if _, err := a.DeclareQueue(e.ctx(), transport.Queue{Name: q, Exclusive: true}); err != nil {
		e.t.Fatalf("owner redeclares its exclusive queue: %v", err)
	}
	_, err = a.DeclareQueue(e.ctx(), transport.Queue{Name: q})
	e.wantErr("owner declares its exclusive queue as shared", err, transport.ErrPrecondition)
	// Anyone may publish to it.
	e.publish(b, transport.DefaultExchange, q, "from b")
	e.equalStrings("exclusive queue", e.contents(a, q), []string{"from b"})
}

func autoDeleteQueueGoesWithLastConsumer(e *env) {
	tr := e.open()
	q := e.queue(tr, transport.Queue{AutoDelete: true})
	// Not deleted before it had a consumer.
	if err := e.exists(tr, q); err != nil {
		e.t.Fatalf("auto-delete queue without consumers yet: %v", err)
	}
	c1 := e.consume(tr, q, transport.ConsumeOptions{AutoAck: true})
	c2 := e.consume(e.open(), q, transport.ConsumeOptions{AutoAck: true})
	e.closedAfter(c1)
	if err := e.exists(tr, q); err != nil {
		e.t.Fatalf("auto-delete queue with one consumer left: %v", err)
	}
	e.closedAfter(c2)
	e.gone(tr, q)
}

func autoDeleteExchangeGoesWithLastBinding(e *env) {
	tr := e.open()
	x := e.exchange(tr, transport.Fanout)
	q1 := e.queue(tr, transport.Queue{})
	q2 := e.queue(tr, transport.Queue{})
	e.bind(tr, x, q1, "")
	e.bind(tr, x, q2, "")
	if err := tr.Unbind(e.ctx(), transport.Binding{Exchange: x, Queue: q1}); err != nil {
		e.t.Fatalf("unbind: %v", err)
	}
	e.publish(tr, x, "", "still there")
	// Deleting the queue removes the last binding.
	if err := tr.DeleteQueue(e.ctx(), q2); err != nil {
		e.t.Fatalf("delete queue: %v", err)
	}
	e.eventually("auto-delete exchange deleted", func() error {
		err := tr.Publish(e.ctx(), x, "", transport.Message{Body: []byte("gone")}, transport.PublishOptions{Confirm: true})
		if errors.Is(err, transport.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("publish to exchange: %v, want ErrNotFound", err)
	})
}

func queueExpiresWhenUnused(e *env) {
	tr := e.open()
	q := e.queue(tr, transport.Queue{Expires: 300 * time.Millisecond})
	used := e.queue(tr, transport.Queue{Expires: 300 * time.Millisecond})
	c := e.consume(tr, used, transport.ConsumeOptions{AutoAck: true})
	start := time.Now()
	e.gone(tr, q)
	if time.Since(start) < 250*time.Millisecond {
		// exists declares nothing, so it is no use; only the expiry counts.
		e.t.Errorf("queue expired after %v, want about 300ms", time.Since(start))
	}
	// A queue with a consumer is in use and stays.
	if err := e.exists(tr, used); err != nil {
		e.t.Fatalf("queue with a consumer expired: %v", err)
	}
	e.closedAfter(c)
	e.gone(tr, used)
}

func declareIdempotent(e *env) {
	tr := e.open()
	ex := transport.Exchange{Name: e.name("x"), Kind: transport.Topic, AutoDelete: true}
	for range 2 {
		if err := tr.DeclareExchange(e.ctx(), ex); err != nil {
			e.t.Fatalf("declare exchange: %v", err)
		}
	}
	dlx := e.exchange(tr, transport.Fanout)
	q := transport.Queue{
		Name: e.name("q"), Durable: true, MessageTTL: time.Minute, Expires: time.Hour,
		MaxLength: 100, DeadLetterExchange: dlx, DeadLetterRoutingKey: "dead",
	}
	e.queue(tr, q)
	if name, err := tr.DeclareQueue(e.ctx(), q); err != nil || name != q.Name {
		e.t.Fatalf("declare queue again: %q, %v", name, err)
	}
	// A classic queue is the same whether its Type is "" or Classic.
	q.Type = transport.Classic
	if _, err := e.open().DeclareQueue(e.ctx(), q); err != nil {
		e.t.Fatalf("declare queue again with Type classic on another connection: %v", err)
	}
	for range 2 {
		e.bind(tr, ex.Name, q.Name, "a.*")
	}
	e.publish(tr, ex.Name, "a.b", "once")
	e.equalStrings("queue bound twice with one key", e.contents(tr, q.Name), []string{"once"})
	if err := tr.Unbind(e.ctx(), transport.Binding{Exchange: ex.Name, Queue: q.Name, Key: "never.bound"}); err != nil {
		e.t.Errorf("unbind a missing binding: %v", err)
	}
	if err := tr.Unbind(e.ctx(), transport.Binding{Exchange: ex.Name, Queue: e.name("missing"), Key: "k"}); err != nil {
		e.t.Errorf("unbind a missing queue: %v", err)
	}
	if err := tr.DeleteQueue(e.ctx(), e.name("missing")); err != nil {
		e.t.Errorf("delete a missing queue: %v", err)
	}
}

func declareConflictIsPrecondition(e *env) {
	tr := e.open()
	ex := transport.Exchange{Name: e.name("x"), Kind: transport.Direct, AutoDelete: true}
	if err := tr.DeclareExchange(e.ctx(), ex); err != nil {
		e.t.Fatalf("declare exchange: %v", err)
	}
	for _, bad := range []transport.Exchange{
		{Name: ex.Name, Kind: transport.Fanout, AutoDelete: true},
		{Name: ex.Name, Kind: transport.Direct},
		{Name: ex.Name, Kind: transport.Direct, AutoDelete: true, Durable: true},
	} {
		e.wantErr(fmt.Sprintf("redeclare exchange as %+v", bad), tr.DeclareExchange(e.ctx(), bad), transport.ErrPrecondition)
	}
	// Bind it so that it goes when the scenario's queues do.
	q := transport.Queue{Name: e.name("q"), MessageTTL: time.Second, MaxLength: 10}
	e.queue(tr, q)
	e.bind(tr, ex.Name, q.Name, "k")
	for _, bad := range []transport.Queue{
		{Name: q.Name, MessageTTL: 2 * time.Second, MaxLength: 10},
		{Name: q.Name, MaxLength: 10},
		{Name: q.Name, MessageTTL: time.Second, MaxLength: 10, Durable: true},
		{Name: q.Name, MessageTTL: time.Second, MaxLength: 10, AutoDelete: true},
		{Name: q.Name, MessageTTL: time.Second, MaxLength: 10, DeadLetterExchange: ex.Name},
		{Name: q.Name, MessageTTL: time.Second, MaxLength: 10, Type: transport.Quorum, Durable: true},
	} {
		_, err := tr.DeclareQueue(e.ctx(), bad)
		e.wantErr(fmt.Sprintf("redeclare queue as %+v", bad), err, transport.ErrPrecondition)
	}
	// Quorum queues cannot be exclusive or auto-delete; classic ones have no
	// delivery limit.
	for _, bad := range []transport.Queue{
		{Name: e.name("qq"), Type: transport.Quorum, Durable: true, Exclusive: true},
		{Name: e.name("qq"), Type: transport.Quorum, Durable: true, AutoDelete: true},
		{Name: e.name("cq"), DeliveryLimit: 3},
	} {
		_, err := tr.DeclareQueue(e.ctx(), bad)
		if err == nil {
			e.track(bad.Name)
		}
		e.wantErr(fmt.Sprintf("declare invalid queue %+v", bad), err, transport.ErrPrecondition)
	}
	// The transport still works.
	if _, err := tr.DeclareQueue(e.ctx(), q); err != nil {
		e.t.Fatalf("declare the queue as it is after refusals: %v", err)
	}
	e.publish(tr, ex.Name, "k", "ok")
	e.equalStrings("queue", e.contents(tr, q.Name), []string{"ok"})
}

func reservedNamesRefused(e *env) {
	tr := e.open()
	err := tr.DeclareExchange(e.ctx(), transport.Exchange{Name: transport.DefaultExchange, Kind: transport.Direct})
	e.wantErr("declare the default exchange", err, transport.ErrPrecondition)
	err = tr.DeclareExchange(e.ctx(), transport.Exchange{Name: "amq." + e.name("x"), Kind: transport.Direct})
	e.wantErr("declare an exchange named amq.*", err, transport.ErrPrecondition)
	name := "amq." + e.name("q")
	_, err = tr.DeclareQueue(e.ctx(), transport.Queue{Name: name})
	if err == nil {
		e.track(name)
	}
	e.wantErr("declare a queue named amq.*", err, transport.ErrPrecondition)
	// The predeclared exchanges exist and can be declared as they are.
	if err := tr.DeclareExchange(e.ctx(), transport.Exchange{Name: "amq.topic", Kind: transport.Topic, Durable: true}); err != nil {
		e.t.Fatalf("declare amq.topic as it is: %v", err)
	}
	q := e.queue(tr, transport.Queue{})
	key := e.name("k")
	e.bind(tr, "amq.topic", q, key)
	e.t.Cleanup(func() { tr.Unbind(e.ctx(), transport.Binding{Exchange: "amq.topic", Queue: q, Key: key}) })
	e.publish(tr, "amq.topic", key, "via amq.topic")
	e.equalStrings("queue", e.contents(tr, q), []string{"via amq.topic"})
}

func consumeMissingQueueNotFound(e *env) {
	tr := e.open()
	missing := e.name("missing")
	_, err := tr.Consume(e.ctx(), missing, transport.ConsumeOptions{})
	e.wantErr("consume a missing queue", err, transport.ErrNotFound)
	q := e.queue(tr, transport.Queue{})
	err = tr.Bind(e.ctx(), transport.Binding{Exchange: missing, Queue: q, Key: "k"})
	e.wantErr("bind to a missing exchange", err, transport.ErrNotFound)
	x := e.exchange(tr, transport.Direct)
	err = tr.Bind(e.ctx(), transport.Binding{Exchange: x, Queue: missing, Key: "k"})
	e.wantErr("bind a missing queue", err, transport.ErrNotFound)
	// The transport still works.
	e.bind(tr, x, q, "k")
	e.publish(tr, x, "k", "ok")
	c := e.consume(tr, q, transport.ConsumeOptions{})
	e.ack(e.recvBody(c, "ok"))
}

func deleteQueueDropsMessages(e *env) {
	tr := e.open()
	q := transport.Queue{Name: e.name("q")}
	e.queue(tr, q)
	e.publish(tr, transport.DefaultExchange, q.Name, "old")
	if err := tr.DeleteQueue(e.ctx(), q.Name); err != nil {
		e.t.Fatalf("delete queue: %v", err)
	}
	e.queue(tr, q)
	e.equalStrings("queue declared again", e.contents(tr, q.Name), nil)
}

func concurrentClose(e *env) {
	tr := e.newT(e.t)
	q := e.queue(tr, transport.Queue{})
	c := e.consume(tr, q, transport.ConsumeOptions{})
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for range 10 {
		wg.Go(func() { errs <- tr.Close() })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			e.t.Errorf("concurrent Close: %v", err)
		}
	}
	e.closed(c)
	if err := tr.Close(); err != nil {
		e.t.Errorf("Close after Close: %v", err)
	}
}

func operationsAfterCloseErrClosed(e *env) {
	tr := e.newT(e.t)
	q := e.queue(tr, transport.Queue{})
	if err := tr.Close(); err != nil {
		e.t.Fatalf("close: %v", err)
	}
	ctx := e.ctx()
	b := transport.Binding{Exchange: "amq.direct", Queue: q, Key: "k"}
	_, consumeErr := tr.Consume(ctx, q, transport.ConsumeOptions{})
	_, declareErr := tr.DeclareQueue(ctx, transport.Queue{Name: q})
	for op, err := range map[string]error{
		"DeclareExchange": tr.DeclareExchange(ctx, transport.Exchange{Name: e.name("x"), Kind: transport.Direct, AutoDelete: true}),
		"DeclareQueue":    declareErr,
		"DeleteQueue":     tr.DeleteQueue(ctx, q),
		"Bind":            tr.Bind(ctx, b),
		"Unbind":          tr.Unbind(ctx, b),
		"Publish":         tr.Publish(ctx, transport.DefaultExchange, q, transport.Message{}, transport.PublishOptions{}),
		"Publish confirm": tr.Publish(ctx, transport.DefaultExchange, q, transport.Message{}, transport.PublishOptions{Confirm: true}),
		"Consume":         consumeErr,
	} {
		e.wantErr(op+" after Close", err, transport.ErrClosed)
	}
	if err := tr.Close(); err != nil {
		e.t.Errorf("Close after Close: %v", err)
	}
}

func persistenceAcrossRestart(e *env) {
	if e.h.Restart == nil {
		e.t.Skip("Harness.Restart is nil")
	}
	tr := e.open()
	x := transport.Exchange{Name: e.name("x"), Kind: transport.Direct, Durable: true, AutoDelete: true}
	if err := tr.DeclareExchange(e.ctx(), x); err != nil {
		e.t.Fatalf("declare exchange: %v", err)
	}
	durable := e.queue(tr, transport.Queue{Durable: true})
	quorum := e.queue(tr, transport.Queue{Type: transport.Quorum, Durable: true})
	transient := e.queue(tr, transport.Queue{})
	e.bind(tr, x.Name, durable, "k")
	e.publishMsg(tr, x.Name, "k", transport.Message{Body: []byte("persistent"), Persistent: true})
	e.publishMsg(tr, x.Name, "k", transport.Message{Body: []byte("transient")})
	e.publishMsg(tr, transport.DefaultExchange, quorum, transport.Message{Body: []byte("persistent"), Persistent: true})

	e.h.Restart(e.t)

	tr2 := e.open()
	e.equalStrings("durable queue after restart", e.contents(tr2, durable), []string{"persistent"})
	e.equalStrings("quorum queue after restart", e.contents(tr2, quorum), []string{"persistent"})
	if err := e.exists(tr2, transient); err == nil {
		e.t.Errorf("transient queue %q survived the restart", transient)
	}
	// The durable binding survived with its durable exchange.
	e.publish(tr2, x.Name, "k", "after")
	e.equalStrings("durable binding after restart", e.contents(tr2, durable), []string{"after"})
}

// inspectQueue: InspectQueue counts ready messages and consumers, drops the
// consumers of a connection that closed at once (classic and quorum
// queues), and reports a missing queue as ErrNotFound and another
// connection's exclusive queue as ErrPrecondition, leaving the transport
// usable.
func inspectQueue(e *env) {
	tr := e.open()
	_, err := tr.InspectQueue(e.ctx(), e.name("missing"))
	e.wantErr("inspect a missing queue", err, transport.ErrNotFound)
	for _, typ := range []transport.QueueType{transport.Classic, transport.Quorum} {
		q := e.queue(tr, transport.Queue{Type: typ, Durable: typ == transport.Quorum})
		want := func(what string, msgs, consumers int) {
			e.t.Helper()
			e.eventually(fmt.Sprintf("%s queue %s", typ, what), func() error {
				info, err := tr.InspectQueue(e.ctx(), q)
				if err != nil {
					return err
				}
				if info.Messages != msgs || info.Consumers != consumers {
					return fmt.Errorf("got %+v, want %d messages and %d consumers", info, msgs, consumers)
				}
				return nil
			})
		}
		want("declared", 0, 0)
		e.publish(tr, transport.DefaultExchange, q, "one")
		e.publish(tr, transport.DefaultExchange, q, "two")
		want("with two messages", 2, 0)
		other := e.newT(e.t)
		c := e.consume(other, q, transport.ConsumeOptions{Prefetch: 1})
		e.recvBody(c, "one")
		want("with one message delivered to a consumer", 1, 1)
		if err := other.Close(); err != nil {
			e.t.Fatalf("close the consumer's transport: %v", err)
		}
		want("after its consumer's connection closed", 2, 0)
	}
	other := e.open()
	x := e.queue(other, transport.Queue{Exclusive: true})
	_, err = tr.InspectQueue(e.ctx(), x)
	e.wantErr("inspect another connection's exclusive queue", err, transport.ErrPrecondition)
	if _, err := other.InspectQueue(e.ctx(), x); err != nil {
		e.t.Errorf("inspect its own exclusive queue: %v", err)
	}
	if err := e.exists(tr, x); err != nil {
		e.t.Errorf("transport after refused inspections: %v", err)
	}
}
