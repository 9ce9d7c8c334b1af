package secure

import (
	"container/list"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrUnknownIdentity is returned by a Store that holds no certificate for an
// identity, and by Publish when a recipient's certificate cannot be found.
var ErrUnknownIdentity = errors.New("secure: unknown identity")

// Store maps identities to certificates: the certificates that signatures
// are checked with and messages are encrypted to. A certificate from the
// Store is trusted for its identity (pinned) unless an Authority is
// configured, in which case it must also chain to it. Implementations must
// be safe for concurrent use and return an error wrapping
// ErrUnknownIdentity for an identity they do not know.
type Store interface {
	Certificate(ctx context.Context, identity string) (*x509.Certificate, error)
}

// StaticStore is a Store that holds a fixed set of certificates in memory.
type StaticStore struct {
	certs map[string]*x509.Certificate
}

// NewStaticStore returns a store of certs, each under the identity it names
// (see IdentityOf). Two certificates naming one identity are an error.
func NewStaticStore(certs ...*x509.Certificate) (*StaticStore, error) {
	s := &StaticStore{certs: make(map[string]*x509.Certificate, len(certs))}
	for _, c := range certs {
		id, err := IdentityOf(c)
		if err != nil {
			return nil, err
		}
		if _, dup := s.certs[id]; dup {
			return nil, fmt.Errorf("secure: two certificates for identity %q", id)
		}
		s.certs[id] = c
	}
	return s, nil
}

// NewMapStore returns a store of certificates keyed by identity as given;
// each must name its key (see IdentityOf).
func NewMapStore(m map[string]*x509.Certificate) (*StaticStore, error) {
	s := &StaticStore{certs: make(map[string]*x509.Certificate, len(m))}
	for id, c := range m {
		name, err := IdentityOf(c)
		if err != nil {
			return nil, err
		}
		if name != id {
			return nil, fmt.Errorf("secure: certificate under %q names %q", id, name)
		}
		s.certs[id] = c
	}
	return s, nil
}

// LoadStore returns a store of the PEM certificates in files and
// directories (*.pem, *.crt, *.cert).
func LoadStore(paths ...string) (*StaticStore, error) {
	certs, err := LoadCertificates(paths...)
	if err != nil {
		return nil, err
	}
	return NewStaticStore(certs...)
}

// Certificate implements Store.
func (s *StaticStore) Certificate(ctx context.Context, identity string) (*x509.Certificate, error) {
	if c, ok := s.certs[identity]; ok {
		return c, nil
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownIdentity, identity)
}

// Len returns how many identities the store holds.
func (s *StaticStore) Len() int { return len(s.certs) }

// Cache is a Store that remembers the answers of another store: at most
// size certificates, each for at most ttl, least recently used evicted
// first. Failed lookups are not cached. Concurrent lookups of one identity
// may each ask the backing store.
type Cache struct {
	store Store
	lru   *lru[*x509.Certificate]
	now   func() time.Time
}

// NewCache puts a cache of size entries (default 1024 when <= 0) kept for
// ttl (default 10 minutes when <= 0) in front of store.
func NewCache(store Store, size int, ttl time.Duration) *Cache {
	if size <= 0 {
		size = 1024
	}
	if ttl <= 0 {
		ttl = 10 * time.Minute
	}
	return &Cache{store: store, lru: newLRU[*x509.Certificate](size, ttl), now: time.Now}
}

// Certificate implements Store.
func (c *Cache) Certificate(ctx context.Context, identity string) (*x509.Certificate, error) {
	now := c.now()
	if cert, ok := c.lru.get(identity, now); ok {
		return cert, nil
	}
	cert, err := c.store.Certificate(ctx, identity)
	if err != nil {
		return nil, err
	}
	c.lru.put(identity, cert, now)
	return cert, nil
}

// Len returns the number of cached entries, fresh or stale.
func (c *Cache) Len() int { return c.lru.len() }

// lru is a bounded map whose entries expire after ttl.
type lru[V any] struct {
	mu    sync.Mutex
	size  int
	ttl   time.Duration
	order *list.List // front = most recently used
	items map[string]*list.Element
}

type lruEntry[V any] struct {
	key     string
	val     V
	expires time.Time
}

func newLRU[V any](size int, ttl time.Duration) *lru[V] {
	return &lru[V]{size: size, ttl: ttl, order: list.New(), items: map[string]*list.Element{}}
}

func (l *lru[V]) get(key string, now time.Time) (V, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var zero V
	e, ok := l.items[key]
	if !ok {
		return zero, false
	}
	ent := e.Value.(*lruEntry[V])
	if !now.Before(ent.expires) {
		l.order.Remove(e)
		delete(l.items, key)
		return zero, false
	}
	l.order.MoveToFront(e)
	return ent.val, true
}

func (l *lru[V]) put(key string, v V, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.items[key]; ok {
		ent := e.Value.(*lruEntry[V])
		ent.val, ent.expires = v, now.Add(l.ttl)
		l.order.MoveToFront(e)
		return
	}
	l.items[key] = l.order.PushFront(&lruEntry[V]{key: key, val: v, expires: now.Add(l.ttl)})
	for l.order.Len() > l.size {
		old := l.order.Back()
		l.order.Remove(old)
		delete(l.items, old.Value.(*lruEntry[V]).key)
	}
}

func (l *lru[V]) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.order.Len()
}
