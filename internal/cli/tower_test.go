package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTowerRefusesOpenAddressWithoutAuth: beyond loopback `warren tower`
// needs a token or basic auth, and says so before dialling anything.
func TestTowerRefusesOpenAddressWithoutAuth(t *testing.T) {
	t.Setenv("WARREN_TOWER_TOKEN", "")
	t.Setenv("WARREN_TOWER_PASSWORD", "")
	t.Setenv("WARREN_TOWER_USER", "")
	for _, args := range [][]string{
		{"tower", "--addr", ":4000"},
		{"tower", "--addr", "0.0.0.0:4000"},
		{"tower", "--user", "ops"},
	} {
		code, _, errOut := run(t, t.Context(), args...)
		if code != 2 || !strings.Contains(errOut, "warren: ") {
			t.Errorf("%v: exit %d, %q", args, code, errOut)
		}
	}
	empty := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := run(t, t.Context(), "tower", "--addr", ":4000", "--token-file", empty)
	if code != 2 || !strings.Contains(errOut, "--token-file: the file is empty") {
		t.Errorf("empty token file: exit %d, %q", code, errOut)
	}
}
