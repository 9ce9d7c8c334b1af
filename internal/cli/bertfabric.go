package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/transport"
)

// mapperFabric is the bridge from BERT-RPC fabric modules to Warren
// services: {call, simple, echo, [X]} becomes a request for /simple/echo,
// dispatched by a mapper with the module's selector.
type mapperFabric struct {
	m *mapper.Mapper

	mu   sync.Mutex
	sels map[string]mapper.Selector // parsed once per name, so round_robin keeps its turn
}

// Call implements bertrpc.Fabric. Handler errors are *wire.RemoteError,
// which carries RemoteCode. With selector all the result is a JSON object
// keyed by agent identity, each value the result or {"error": {...}}.
func (f *mapperFabric) Call(ctx context.Context, path string, payload []byte, selector string) ([]byte, error) {
	sel, err := f.selector(selector)
	if err != nil {
		return nil, err
	}
	if selector == "all" {
		rs, err := f.m.FanOut(ctx, path, json.RawMessage(payload), mapper.Select(sel))
		if err != nil {
			return nil, err
		}
		out := map[string]any{}
		for id, r := range rs {
			out[id] = replyJSON(r)
		}
		return json.Marshal(out)
	}
	r, err := f.m.Request(ctx, path, json.RawMessage(payload), mapper.Select(sel))
	if err != nil {
		return nil, err
	}
	return r.Body, nil
}

func (f *mapperFabric) selector(name string) (mapper.Selector, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.sels[name]; ok {
		return s, nil
	}
	s, err := mapper.ParseSelector(name)
	if err != nil {
		return nil, err
	}
	f.sels[name] = s
	return s, nil
}

// startFabric runs a mapper on tr until ctx ends; stop waits for it.
func startFabric(ctx context.Context, g *Globals, tr transport.Transport) (*mapperFabric, func(), error) {
	m, err := mapper.New(tr, mapper.Config{Identity: ""}, mapper.WithLogger(g.Logger()))
	if err != nil {
		return nil, nil, err
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(mctx) }()
	select {
	case <-m.Ready():
	case err := <-done:
		cancel()
		return nil, nil, fmt.Errorf("fabric mapper: %w", err)
	}
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			g.Logger().Warn("fabric mapper stopped", "err", err)
		}
	}
	return &mapperFabric{m: m, sels: map[string]mapper.Selector{}}, stop, nil
}
