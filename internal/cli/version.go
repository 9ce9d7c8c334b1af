package cli

import (
	"fmt"
	"runtime/debug"
)

type versionCmd struct{}

func (versionCmd) Run(g *Globals) error {
	_, err := fmt.Fprintln(g.Out(), versionLine())
	return err
}

// versionLine is what warren --version and warren version print: the
// module version, and the commit and its time when the binary was built
// from a git checkout (go build records them; go run and tests do not).
func versionLine() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "warren (devel)"
	}
	return "warren " + versionOf(bi)
}

func versionOf(bi *debug.BuildInfo) string {
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, at string
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return v + " (no commit recorded)"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "+modified"
	}
	return fmt.Sprintf("%s (commit %s, %s, %s)", v, rev, at, bi.GoVersion)
}
