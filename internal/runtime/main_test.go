package runtime

import (
	"os"
	"path/filepath"
	"testing"
)

// testCache is a wazero compilation cache shared by the package's tests
// (and kept between runs, beside the fixture cache), so that each fixture
// is compiled once per machine rather than once per test.
var testCache string

func TestMain(m *testing.M) {
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	testCache = filepath.Join(base, "castellan-test-wazero")
	if err := os.MkdirAll(testCache, 0o755); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}
