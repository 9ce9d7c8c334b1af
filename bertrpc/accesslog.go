package bertrpc

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	// Appended by hand: fmt costs a third of the line's time.
	b := make([]byte, 0, 96+len(action)+len(e.err))
	if e.err != "" {
		b = append(b, "ERR ["...)
	} else {
		b = append(b, "ACC ["...)
	}
	b = appendAccessTime(b, e.accept)
	b = append(b, "] "...)
	b = appendSeconds(b, e.process.Sub(e.accept))
	b = append(b, ' ')
	b = appendSeconds(b, e.done.Sub(e.process))
	b = append(b, " - "...)
	b = strconv.AppendInt(b, int64(e.hq), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(e.lq), 10)
	b = append(b, ' ')
	b = appendField3(b, e.kind)
	b = append(b, ' ')
	b = append(b, e.prio.String()...)
	b = append(b, " - "...)
	if e.err != "" {
		// The error can quote a client's atoms: one entry, one line.
		b = append(b, lineSafe.Replace(e.err)...)
		b = append(b, " : "...)
	}
	b = append(b, action...)
	b = append(b, '\n')
	return string(b)
}

// accessSecond is the local date and time, to the second, of the lines
// of one second: formatting it, with the time zone lookup, was a third of
// a line's time.
type accessSecond struct {
	unix   int64
	prefix []byte // accessTimeLayout up to the seconds, and the dot
}

var lastAccessSecond atomic.Pointer[accessSecond]

// appendAccessTime appends t in accessTimeLayout.
func appendAccessTime(b []byte, t time.Time) []byte {
	sec := t.Unix()
	c := lastAccessSecond.Load()
	if c == nil || c.unix != sec {
		c = &accessSecond{unix: sec, prefix: t.Local().AppendFormat(nil, accessTimeLayout[:len("2006-01-02T15:04:05.")])}
		lastAccessSecond.Store(c)
	}
	b = append(b, c.prefix...)
	return appendDigits6(b, int64(t.Nanosecond()/1000))
}

// appendSeconds appends d in seconds with six decimals, as %.6f does.
func appendSeconds(b []byte, d time.Duration) []byte {
	if d < 0 {
		return strconv.AppendFloat(b, d.Seconds(), 'f', 6, 64)
	}
	us := int64((d + 500) / time.Microsecond)
	b = strconv.AppendInt(b, us/1e6, 10)
	b = append(b, '.')
	return appendDigits6(b, us%1e6)
}

// appendDigits6 appends n, below 10^6, as six digits.
func appendDigits6(b []byte, n int64) []byte {
	var d [6]byte
	for i := 5; i >= 0; i-- {
		d[i] = byte('0' + n%10)
		n /= 10
	}
	return append(b, d[:]...)
}

// appendField3 appends s as fmt's %3.3s does: cut to 3 bytes, padded on
// the left to 3.
func appendField3(b []byte, s string) []byte {
	if len(s) > 3 {
		s = s[:3]
	}
	for range 3 - len(s) {
		b = append(b, ' ')
	}
	return append(b, s...)
}

// accessLog appends lines to a file and reopens it when it has been moved
// or deleted (checked at most once per checkEvery), so logrotate works
// without signals, as in Ernie.
//
// Lines are buffered and written at most accessFlushEvery after they were
// logged (or when the buffer fills, the file is rotated, or the log is
// closed): a write per line cost a system call per request. Ernie's logger
// is asynchronous too (a gen_server cast).
type accessLog struct {
	path       string
	checkEvery time.Duration

	mu        sync.Mutex
	f         *os.File
	bw        *bufio.Writer
	fi        os.FileInfo
	lastCheck time.Time
	lastErr   error
	onErr     func(error)

	stop chan struct{}
	done chan struct{}
}

// accessFlushEvery bounds how long a line stays in the buffer.
const accessFlushEvery = 100 * time.Millisecond

// openAccessLog opens the log; onErr is told of a failed periodic flush
// (once per distinct failure).
func openAccessLog(path string, checkEvery time.Duration, onErr func(error)) (*accessLog, error) {
	l := &accessLog{path: path, checkEvery: checkEvery, onErr: onErr,
		bw: bufio.NewWriterSize(nil, 64<<10), stop: make(chan struct{}), done: make(chan struct{})}
	if err := l.open(); err != nil {
		return nil, err
	}
	go l.flusher()
	return l, nil
}

func (l *accessLog) flusher() {
	defer close(l.done)
	t := time.NewTicker(accessFlushEvery)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.mu.Lock()
			err := l.flushLocked()
			l.mu.Unlock()
			if err != nil && l.onErr != nil {
				l.onErr(err)
			}
		}
	}
}

// flushLocked writes the buffered lines; it reports a failure once.
func (l *accessLog) flushLocked() error {
	if l.f == nil || l.bw.Buffered() == 0 {
		return nil
	}
	if err := l.bw.Flush(); err != nil {
		// A failed write leaves the buffer stuck on its error: start
		// over (the lines in it are lost, as they would have been).
		l.bw.Reset(l.f)
		return l.report(fmt.Errorf("bertrpc: write access log: %w", err))
	}
	l.lastErr = nil
	return nil
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
		// The lines so far go to the file they were logged to
		// (logrotate's copy).
		_ = l.flushLocked()
		l.f.Close()
	}
	l.f, l.fi, l.lastCheck = f, fi, time.Now()
	l.bw.Reset(f)
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
	if l.bw.Available() < len(line) {
		if err := l.flushLocked(); err != nil {
			return err
		}
	}
	_, _ = l.bw.WriteString(line) // to the file when it is bigger than the buffer
	return nil
}

func (l *accessLog) report(err error) error {
	if l.lastErr != nil && l.lastErr.Error() == err.Error() {
		return nil
	}
	l.lastErr = err
	return err
}

// close writes what is buffered and closes the file.
func (l *accessLog) close() error {
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	ferr := l.flushLocked()
	err := l.f.Close()
	l.f = nil
	if ferr != nil {
		return ferr
	}
	return err
}

// lineSafe escapes line breaks, so that no client can start a line of its
// own in the access log.
var lineSafe = strings.NewReplacer("\n", `\n`, "\r", `\r`)
