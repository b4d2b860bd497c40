package devtest

import (
	"fmt"
	"os"
	"testing"
)

// MainCheck is Main with a check that runs after the tests passed and the
// shared servers stopped, such as a goroutine leak check
// (func() error { return goleak.Find(...) }); the binary fails when it
// fails.
func MainCheck(m *testing.M, check func() error) {
	code := m.Run()
	if err := stopShared(); err != nil {
		fmt.Fprintf(os.Stderr, "devtest: stopping shared servers: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	if code == 0 && check != nil {
		if err := check(); err != nil {
			fmt.Fprintf(os.Stderr, "devtest: check after the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
