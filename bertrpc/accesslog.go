package bertrpc

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// accessEntry is what one access log line reports about one request.
type accessEntry struct {
	accept  time.Time // connection accepted (or, on a kept-open connection, the request's first packet read)
	process time.Time // processing started
	done    time.Time // reply sent
	hq, lq  int       // queue lengths at accept time
	kind    string    // nat, ext, fab or unk
	prio    priority
	action  string // the request in Erlang syntax
	err     string // non-empty for an ERR line
}

// accessTimeLayout is the accept time of a line: local time, ISO 8601 with
// a T, microseconds, no zone (as Ernie writes it).
const accessTimeLayout = "2006-01-02T15:04:05.000000"

// maxActionLen is where Ernie cuts the logged request (then adds "...").
const maxActionLen = 150

// format renders the entry in Ernie's access log format:
//
//	ACC [2010-02-20T11:42:25.259750] 0.000053 0.000237 - 0 0 nat high - {call,nat,add,[1,2]}
//	ERR [2010-02-20T11:42:25.259750] 0.000053 0.000237 - 0 0 ext high - Message : {call,ext,add,[1,2]}
//
// The date and the time are joined by a T, as the final revision of Ernie's
// elib/ernie_access_logger.erl writes them ("~4B-~2.10.0B-~2.10.0BT~2.10.0B:...",
// Ernie's commit "make log time a legit ISO8601 single entity by adding T").
// The microseconds are zero-padded on the left: Ernie's "~-6.10.0B" pads
// on the right (53 µs printed as 530000), which no parser can undo.
func (e *accessEntry) format() string {
	action := e.action
	if len(action) > maxActionLen {
		action = strings.ReplaceAll(action, "\n", "")
		if len(action) > maxActionLen {
			action = action[:maxActionLen] + "..."
		}
	}
	var b strings.Builder
	b.Grow(96 + len(action) + len(e.err))
	if e.err != "" {
		b.WriteString("ERR [")
	} else {
		b.WriteString("ACC [")
	}
	b.WriteString(e.accept.Local().Format(accessTimeLayout))
	fmt.Fprintf(&b, "] %.6f %.6f - %d %d %3.3s %s - ",
		e.process.Sub(e.accept).Seconds(), e.done.Sub(e.process).Seconds(),
		e.hq, e.lq, e.kind, e.prio)
	if e.err != "" {
		// The error can quote a client's atoms: one entry, one line.
		b.WriteString(lineSafe.Replace(e.err))
		b.WriteString(" : ")
	}
	b.WriteString(action)
	b.WriteByte('\n')
	return b.String()
}

// accessLog appends lines to a file and reopens it when it has been moved
// or deleted (checked at most once per checkEvery), so logrotate works
// without signals, as in Ernie.
type accessLog struct {
	path       string
	checkEvery time.Duration

	mu        sync.Mutex
	f         *os.File
	fi        os.FileInfo
	lastCheck time.Time
	lastErr   error
}

func openAccessLog(path string, checkEvery time.Duration) (*accessLog, error) {
	l := &accessLog{path: path, checkEvery: checkEvery}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *accessLog) open() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("bertrpc: open access log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("bertrpc: open access log: %w", err)
	}
	if l.f != nil {
		l.f.Close()
	}
	l.f, l.fi, l.lastCheck = f, fi, time.Now()
	return nil
}

// write appends one line. It returns an error only the first time a given
// failure happens, so the caller logs it once.
func (l *accessLog) write(line string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.f == nil || now.Sub(l.lastCheck) >= l.checkEvery {
		l.lastCheck = now
		fi, err := os.Stat(l.path)
		if l.f == nil || err != nil || !os.SameFile(fi, l.fi) {
			if err := l.open(); err != nil {
				return l.report(err)
			}
		}
	}
	if _, err := l.f.WriteString(line); err != nil {
		return l.report(fmt.Errorf("bertrpc: write access log: %w", err))
	}
	l.lastErr = nil
	return nil
}

func (l *accessLog) report(err error) error {
	if l.lastErr != nil && l.lastErr.Error() == err.Error() {
		return nil
	}
	l.lastErr = err
	return err
}

func (l *accessLog) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// lineSafe escapes line breaks, so that no client can start a line of its
// own in the access log.
var lineSafe = strings.NewReplacer("\n", `\n`, "\r", `\r`)
