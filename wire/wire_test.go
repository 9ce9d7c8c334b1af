package wire

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCheckDepth(t *testing.T) {
	tests := []struct {
		in   string
		max  int
		deep bool
	}{
		{`1`, 0, false},
		{`[1,[2]]`, 2, false},
		{`[1,[2]]`, 1, true},
		{`{"a":{"b":{"c":1}}}`, 3, false},
		{`{"a":{"b":{"c":1}}}`, 2, true},
		{`"[[[[[[["`, 1, false},
		{`["\"[[[[", [1]]`, 2, false},
		{strings.Repeat("[", 100) + strings.Repeat("]", 100), 64, true},
	}
	for _, tc := range tests {
		err := CheckDepth([]byte(tc.in), tc.max)
		if deep := errors.Is(err, ErrTooDeep); deep != tc.deep {
			t.Errorf("CheckDepth(%s, %d) = %v, want deep %v", tc.in, tc.max, err, tc.deep)
		}
	}
	// A stray closing bracket would let what follows nest deeper unseen.
	for _, in := range []string{`]`, `}`, `]]][[[[1]]]]`, `{"a":1}}[[[[1]]]]`, `"x"]`} {
		if err := CheckDepth([]byte(in), 2); !errors.Is(err, ErrUnbalanced) {
			t.Errorf("CheckDepth(%s) = %v, want ErrUnbalanced", in, err)
		}
	}
}

func TestCheckPath(t *testing.T) {
	for _, p := range []string{"/a/b", "/simple/echo"} {
		if err := CheckPath(p); err != nil {
			t.Errorf("CheckPath(%q): %v", p, err)
		}
	}
	for _, p := range []string{"", "/", "a/b", "/a", "/a/b/c", "//b", "/a/", "/a b/c", "//", "///", "/a//b", "/a/b/",
		"/a/b\x00", "/a\x1b[31m/b", "/a/b\x7f", "/a/\u0085b", "/a/\xffb", "/\xc3/b"} {
		if err := CheckPath(p); !errors.Is(err, ErrInvalidPath) {
			t.Errorf("CheckPath(%q) = %v", p, err)
		}
	}
	if err := CheckPath("/é/ü"); err != nil {
		t.Errorf("CheckPath(non-ASCII UTF-8): %v", err)
	}
	// It is on the path of every request and reply.
	if n := testing.AllocsPerRun(100, func() { _ = CheckPath("/simple/echo") }); n != 0 {
		t.Errorf("CheckPath of a valid path: %v allocations, want 0", n)
	}
}

func TestCheckIdentity(t *testing.T) {
	for _, id := range []string{"fred", "mapper-0a1b", "agent.é", strings.Repeat("x", MaxIdentity)} {
		if err := CheckIdentity(id); err != nil {
			t.Errorf("CheckIdentity(%q): %v", id, err)
		}
	}
	for _, id := range []string{"", "a b", "a/b", "a\tb", "a\x00b", "a\x1b[2Jb", "a\x7fb", "a\u2028b", "a\xffb", strings.Repeat("x", MaxIdentity+1), strings.Repeat("x", 255)} {
		err := CheckIdentity(id)
		if !errors.Is(err, ErrInvalidIdentity) {
			t.Errorf("CheckIdentity(%q) = %v", id, err)
			continue
		}
		if strings.ContainsFunc(err.Error(), func(r rune) bool { return r < ' ' || r == 0x7f || r == utf8.RuneError }) {
			t.Errorf("CheckIdentity(%q) = %q: echoes raw bytes", id, err)
		}
	}
}
