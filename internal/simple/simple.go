// Package simple holds the example actor that `warren agent` and
// `warren demo` serve as /simple/echo, /simple/load, /simple/sleep,
// /simple/digest and the rest.
package simple

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/warrenrpc/warren/agent"
)

// Simple is the example actor.
type Simple struct {
	// Identity is returned by Whoami.
	Identity string
}

// Digest is the size and SHA-256 of the data of a streamed request
// (warren request /simple/digest --stream FILE), or of the payload.
type Digest struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Digest reads a streamed request's data to its end (or the payload of
// another request) and returns its size and SHA-256.
func (Simple) Digest(_ context.Context, req *agent.Request) (Digest, error) {
	var r io.Reader = bytes.NewReader(req.Payload)
	if req.Stream != nil {
		r = req.Stream
	}
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return Digest{}, err
	}
	return Digest{n, hex.EncodeToString(h.Sum(nil))}, nil
}

// Echo returns its payload unchanged.
func (Simple) Echo(_ context.Context, in json.RawMessage) (json.RawMessage, error) {
	return in, nil
}

// Load returns the agent host's 1-minute load average.
func (Simple) Load(context.Context) (float64, error) {
	return agent.LoadAverage()
}

// Sleep waits for the given number of seconds (a JSON number, at most 600)
// or until the request's deadline, and returns how long it slept. A
// caller that asked for progress gets the fraction done every tenth.
func (Simple) Sleep(ctx context.Context, seconds float64) (string, error) {
	if seconds < 0 || seconds > 600 {
		return "", &agent.Error{Code: "bad_request", Message: fmt.Sprintf("sleep %v: want 0 to 600 seconds", seconds)}
	}
	d := time.Duration(seconds * float64(time.Second))
	t := time.NewTimer(d)
	defer t.Stop()
	// A caller that asked (warren request --progress) sees how far it got.
	tick := time.NewTicker(max(d/10, time.Millisecond))
	defer tick.Stop()
	for step := 1; ; step++ {
		select {
		case <-t.C:
			return "slept " + d.String(), nil
		case <-tick.C:
			if step < 10 {
				_ = agent.Progress(ctx, "", float64(step)/10)
			}
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// Whoami returns the identity of the agent that served the request.
func (s Simple) Whoami(context.Context) (string, error) { return s.Identity, nil }

// Fail always fails with the message given, to show remote errors.
func (Simple) Fail(_ context.Context, msg string) (any, error) {
	return nil, fmt.Errorf("%s", msg)
}
