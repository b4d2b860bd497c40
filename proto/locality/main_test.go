package locality

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the test binary if a test leaked a goroutine.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
