package devtest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// leakChildEnv makes TestLeakChild leak a goroutine; it is set only in the
// child binary TestMainFindsLeaks starts.
const leakChildEnv = "DEVTEST_LEAK_CHILD"

// TestLeakChild leaks a goroutine when run by TestMainFindsLeaks.
func TestLeakChild(t *testing.T) {
	if os.Getenv(leakChildEnv) == "" {
		t.Skip("run by TestMainFindsLeaks")
	}
	block := make(chan struct{})
	go func() { <-block }()
}

// TestMainFindsLeaks runs this test binary again with a test that leaks a
// goroutine: Main must turn its passing run into a failure naming the
// leak.
func TestMainFindsLeaks(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestLeakChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), leakChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("a test binary that leaked a goroutine exited 0:\n%s", out)
	}
	if !strings.Contains(string(out), "goroutines leaked by the tests") || !strings.Contains(string(out), "TestLeakChild") {
		t.Errorf("the failure does not name the leak:\n%s", out)
	}
}
