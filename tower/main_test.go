package tower_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine outlives them: an
// event stream, a mapper or a sampler the Tower failed to stop.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
