package events_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine outlives them: a
// consumer or handler a subscription failed to stop.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
