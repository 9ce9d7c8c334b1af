package events

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/warrenrpc/warren/transport"
	"github.com/warrenrpc/warren/wire"
)

// Config configures a Bus.
type Config struct {
	// Identity names the publisher in the app_id of its events, and the
	// instance in the queue of a durable All subscription. "" generates a
	// random one (then durable All subscriptions are refused: their
	// queue would be new on each start).
	Identity string `yaml:"identity"`
	// Host names this host for PerHost subscriptions; "" is os.Hostname.
	Host string `yaml:"host"`
	// MaxMessageSize bounds the body of a published or received event;
	// 0 means wire.DefaultMaxMessageSize.
	MaxMessageSize int `yaml:"max_message_size"`
	// MaxDepth bounds the nesting of a received event's JSON; 0 means
	// wire.DefaultMaxDepth.
	MaxDepth int `yaml:"max_depth"`
	// DrainTimeout bounds how long Close waits for handlers in hand
	// before cancelling their contexts; 0 means 30s.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// Streams tunes streamed events (PublishStream): their chunk size,
	// and where and how long subscribers assemble them.
	Streams StreamConfig `yaml:"streams"`
}

// Option tunes a Bus.
type Option func(*Bus)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(b *Bus) { b.log = l } }

// Bus publishes events and subscribes handlers to them on one transport.
// It is safe for concurrent use; it does not own the transport.
type Bus struct {
	tr  transport.Transport
	cfg Config
	log *slog.Logger
	// generated: the identity was made up, not configured.
	generated bool

	mu       sync.Mutex
	declared bool // the exchange is known to exist
}

// New returns a Bus on tr. It does not touch the broker until the first
// Publish or Subscribe.
func New(tr transport.Transport, cfg Config, opts ...Option) (*Bus, error) {
	if tr == nil {
		return nil, errors.New("events: nil transport")
	}
	if cfg.MaxMessageSize < 0 || cfg.MaxDepth < 0 || cfg.DrainTimeout < 0 {
		return nil, errors.New("events: max_message_size, max_depth and drain_timeout must not be negative")
	}
	generated := cfg.Identity == ""
	if generated {
		cfg.Identity = "events-" + newID()[:12]
	} else if err := wire.CheckIdentity(cfg.Identity); err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	if cfg.Host == "" {
		h, err := os.Hostname()
		if err != nil || wire.CheckIdentity(h) != nil {
			h = "localhost"
		}
		cfg.Host = h
	} else if err := wire.CheckIdentity(cfg.Host); err != nil {
		return nil, fmt.Errorf("events: host: %w", err)
	}
	if cfg.MaxMessageSize == 0 {
		cfg.MaxMessageSize = wire.DefaultMaxMessageSize
	}
	if cfg.MaxDepth == 0 {
		cfg.MaxDepth = wire.DefaultMaxDepth
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 30 * time.Second
	}
	if cfg.Streams.ChunkSize < 0 || cfg.Streams.MaxSize < 0 || cfg.Streams.IdleTimeout < 0 {
		return nil, errors.New("events: streams: chunk_size, max_size and idle_timeout must not be negative")
	}
	cfg.Streams = cfg.Streams.withDefaults()
	if cfg.Streams.ChunkSize > cfg.MaxMessageSize {
		return nil, fmt.Errorf("events: streams: chunk_size %d is over the message size limit %d", cfg.Streams.ChunkSize, cfg.MaxMessageSize)
	}
	b := &Bus{tr: tr, cfg: cfg, log: slog.Default(), generated: generated}
	for _, o := range opts {
		o(b)
	}
	b.log = b.log.With("bus", cfg.Identity)
	return b, nil
}

// Identity returns the Bus's identity.
func (b *Bus) Identity() string { return b.cfg.Identity }

// declare declares the event exchange once.
func (b *Bus) declare(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.declared {
		return nil
	}
	if err := declareTopology(ctx, b.tr); err != nil {
		return err
	}
	b.declared = true
	return nil
}

// declareTopology declares the event exchange and the dead-letter
// exchange and queue.
func declareTopology(ctx context.Context, tr transport.Transport) error {
	if err := tr.DeclareExchange(ctx, transport.Exchange{Name: wire.EventExchange, Kind: transport.Topic, Durable: true}); err != nil {
		return fmt.Errorf("events: declare exchange %s: %w", wire.EventExchange, err)
	}
	if err := wire.DeclareDeadLetters(ctx, tr); err != nil {
		return fmt.Errorf("events: %w", err)
	}
	return nil
}

// ErrNoSubscriber is returned by a Mandatory Publish that no subscription
// took, wrapped as "events: publish KEY: ...". It wraps
// transport.ErrUnroutable.
var ErrNoSubscriber = fmt.Errorf("no subscriber took the event: %w", transport.ErrUnroutable)

// PublishOption tunes one Publish.
type PublishOption func(*publish)

type publish struct {
	persistent bool
	mandatory  bool
	ttl        time.Duration
	chunk      int // PublishStream's chunk size; 0: the Bus's
}

// Persistent publishes the event persistent (delivery mode 2), so that
// it survives a broker restart in a durable subscription's queue.
func Persistent() PublishOption { return func(p *publish) { p.persistent = true } }

// Mandatory makes an event that no subscription takes an error
// (ErrNoSubscriber) instead of being dropped.
func Mandatory() PublishOption { return func(p *publish) { p.mandatory = true } }

// TTL gives the event a time to live: a subscriber does not start it
// later (it is dead-lettered, reason deadline_exceeded), and a queue
// dead-letters it (reason expired) when nobody took it in time. Without
// it an event lives until taken. The context of Publish bounds only the
// publishing, never the event.
func TTL(d time.Duration) PublishOption { return func(p *publish) { p.ttl = d } }

// Publish sends payload (marshalled as JSON; a json.RawMessage or []byte
// is sent as is and must be JSON) as an event with key, and returns once
// the broker confirmed it. key is dot-separated words without wildcards
// (wire.CheckEventKey). An event no subscription takes is dropped, and
// Publish returns nil, unless Mandatory.
func (b *Bus) Publish(ctx context.Context, key string, payload any, opts ...PublishOption) error {
	p, body, err := b.prepare(ctx, key, payload, opts)
	if err != nil {
		return err
	}
	msg := wire.NewEvent(key, b.cfg.Identity, newID(), body, p.ttl)
	msg.Persistent = p.persistent
	err = b.tr.Publish(ctx, wire.EventExchange, key, msg, transport.PublishOptions{Confirm: true, Mandatory: p.mandatory})
	if errors.Is(err, transport.ErrUnroutable) {
		return fmt.Errorf("events: publish %s: %w", key, ErrNoSubscriber)
	}
	if err != nil {
		return fmt.Errorf("events: publish %s: %w", key, err)
	}
	return nil
}

// prepare checks a publish of payload with key and opts, encodes the
// payload and declares the exchange.
func (b *Bus) prepare(ctx context.Context, key string, payload any, opts []PublishOption) (publish, []byte, error) {
	var p publish
	for _, o := range opts {
		o(&p)
	}
	if err := wire.CheckEventKey(key); err != nil {
		return p, nil, err
	}
	if p.ttl < 0 {
		return p, nil, fmt.Errorf("events: negative TTL %v", p.ttl)
	}
	if p.chunk < 0 || p.chunk > b.cfg.MaxMessageSize {
		return p, nil, fmt.Errorf("events: chunk size %d: want 1 to %d", p.chunk, b.cfg.MaxMessageSize)
	}
	body, err := encode(payload)
	if err != nil {
		return p, nil, fmt.Errorf("events: publish %s: %w", key, err)
	}
	if len(body) > b.cfg.MaxMessageSize {
		return p, nil, fmt.Errorf("events: publish %s: body of %d bytes is over the limit of %d", key, len(body), b.cfg.MaxMessageSize)
	}
	if err := b.declare(ctx); err != nil {
		return p, nil, err
	}
	return p, body, nil
}

// encode marshals a payload; raw JSON is checked, not re-encoded.
func encode(payload any) ([]byte, error) {
	var raw []byte
	switch p := payload.(type) {
	case json.RawMessage:
		raw = p
	case []byte:
		raw = p
	case nil:
		return []byte("null"), nil
	default:
		return json.Marshal(payload)
	}
	if !json.Valid(raw) {
		return nil, errors.New("payload is not valid JSON")
	}
	return raw, nil
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
