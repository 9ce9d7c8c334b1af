package testenv

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// RandReader reads n pseudo-random bytes, the same for the same seed,
// without holding them: test data of any size for streams.
type RandReader struct {
	rng *rand.ChaCha8
	n   int64
}

// NewRand returns a RandReader of n bytes from seed.
func NewRand(seed byte, n int64) *RandReader {
	var s [32]byte
	s[0] = seed
	return &RandReader{rand.NewChaCha8(s), n}
}

func (r *RandReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.n)]
	r.rng.Read(p)
	r.n -= int64(len(p))
	return len(p), nil
}

// SHA256 returns the SHA-256 of what r reads, in hex.
func SHA256(r io.Reader) string {
	h := sha256.New()
	_, _ = io.Copy(h, r)
	return hex.EncodeToString(h.Sum(nil))
}

// HeapPeak samples the heap in use every 20 ms until the returned stop,
// which returns the heap in use at the start (after a GC) and the peak
// seen: what a stream's memory grew by.
func HeapPeak() (stop func() (base, peak uint64)) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var top atomic.Uint64
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > top.Load() {
				top.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func() (uint64, uint64) {
		close(done)
		<-sampled
		return base, top.Load()
	}
}

// StreamMiB is how many MiB a stream memory test sends:
// WARREN_STREAM_MIB, default 64.
func StreamMiB(t testing.TB) int64 {
	v := os.Getenv("WARREN_STREAM_MIB")
	if v == "" {
		return 64
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		t.Fatalf("WARREN_STREAM_MIB=%q: want a number of MiB", v)
	}
	return n
}
