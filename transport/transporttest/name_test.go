package transporttest

import (
	"regexp"
	"strings"
	"testing"
)

func TestName(t *testing.T) {
	t.Run("odd/chars é*#", func(t *testing.T) {
		a, b := Name(t, "q"), Name(t, "q")
		if a == b {
			t.Errorf("Name returned %q twice", a)
		}
		if !regexp.MustCompile(`^wt\.TestName_odd_chars_+\.q\.[0-9a-f]{8}$`).MatchString(a) {
			t.Errorf("Name = %q", a)
		}
		if strings.ContainsAny(a, "/ é*#") {
			t.Errorf("Name %q keeps characters a broker may refuse", a)
		}
	})
	t.Run(strings.Repeat("long", 100), func(t *testing.T) {
		if n := Name(t, "q"); len(n) > 200 {
			t.Errorf("Name is %d bytes long, want at most 200", len(n))
		}
	})
}
