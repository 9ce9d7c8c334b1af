package cli

import (
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Remote data (dead letters, heartbeats, replies, errors quoting them) is
// written by whoever may publish to the broker, so it can hold terminal
// escape sequences that would move the cursor, rewrite earlier lines, set
// the window title or worse. Everything the CLI prints that came from the
// broker goes through escape (text) or printJSON (JSON), and Main escapes
// every error it prints.

// escape makes s safe to print on a terminal: each control character (C0,
// DEL and C1, tab and newline included) is written as \xNN or \uNNNN, and
// each byte that is not valid UTF-8 as \xNN. Unicode format characters that
// reorder text (bidirectional overrides and isolates) are written as
// \uNNNN too. Anything else, backslashes included, is left as it is, so an
// ordinary string prints unchanged.
func escape(s string) string { return escapeKeep(s, "") }

// escapeLines is escape for text made of lines (an error joined from
// several): newlines are kept.
func escapeLines(s string) string { return escapeKeep(s, "\n") }

func escapeKeep(s, keep string) string {
	i := 0
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		if unsafeRune(r, n) && !strings.ContainsRune(keep, r) {
			break
		}
		i += n
	}
	if i == len(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	b.WriteString(s[:i])
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unsafeRune(r, n) && !strings.ContainsRune(keep, r):
			if r < 0x80 {
				fmt.Fprintf(&b, `\x%02x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// unsafeRune: a control character, a byte of invalid UTF-8, or a
// bidirectional formatting character.
func unsafeRune(r rune, size int) bool {
	return r == utf8.RuneError && size == 1 || unicode.IsControl(r) || bidi(r)
}

// bidi reports the Unicode bidirectional formatting characters (LRE, RLE,
// PDF, LRO, RLO, LRI, RLI, FSI, PDI, LRM, RLM, ALM), which reorder what a
// terminal shows.
func bidi(r rune) bool {
	return r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069 || r == 0x200e || r == 0x200f || r == 0x061c
}

// escapeJSON makes JSON text (as encoding/json writes it) safe to print:
// encoding/json escapes C0 controls in strings, but not DEL, C1 controls,
// bidirectional formatting characters or invalid UTF-8 (which a
// json.RawMessage may hold). Outside strings JSON text is ASCII, so these
// can only be inside strings, where they are written as \uNNNN (invalid
// bytes as \ufffd, which is what a JSON reader makes of them).
func escapeJSON(b []byte) []byte {
	i := 0
	for i < len(b) {
		r, n := utf8.DecodeRune(b[i:])
		if r != '\n' && unsafeRune(r, n) {
			break
		}
		i += n
	}
	if i == len(b) {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	out = append(out, b[:i]...)
	for i < len(b) {
		r, n := utf8.DecodeRune(b[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			out = append(out, `\ufffd`...)
		case r != '\n' && unsafeRune(r, n):
			out = fmt.Appendf(out, `\u%04x`, r)
		default:
			out = append(out, b[i:i+n]...)
		}
		i += n
	}
	return out
}

// jsonLines writes JSON text (a slog JSON handler's records, one per
// Write) through escapeJSON.
type jsonLines struct{ w io.Writer }

func (j jsonLines) Write(p []byte) (int, error) {
	if _, err := j.w.Write(escapeJSON(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}
