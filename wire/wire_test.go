package wire

import (
	"errors"
	"strings"
	"testing"
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
	for _, p := range []string{"", "/", "a/b", "/a", "/a/b/c", "//b", "/a/", "/a b/c"} {
		if err := CheckPath(p); !errors.Is(err, ErrInvalidPath) {
			t.Errorf("CheckPath(%q) = %v", p, err)
		}
	}
}
