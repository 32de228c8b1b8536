package cli

import (
	"os"
	"testing"
)

// TestMain lets tests start this test binary as a real castellan process
// (CASTELLAN_CLI_TEST_MAIN=1): what needs its own process, such as two
// attestation service replicas, gets one.
func TestMain(m *testing.M) {
	if os.Getenv("CASTELLAN_CLI_TEST_MAIN") == "1" {
		os.Exit(Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}
