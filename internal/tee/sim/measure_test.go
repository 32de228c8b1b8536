package sim

import (
	"bytes"
	"crypto/sha512"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestMeasureFileCache(t *testing.T) {
	t.Setenv("CASTELLAN_CONFIG_DIR", t.TempDir())
	exe := filepath.Join(t.TempDir(), "castellan")
	if err := os.WriteFile(exe, []byte("build one"), 0o755); err != nil {
		t.Fatal(err)
	}
	want := sha512.Sum384([]byte("build one"))
	for i := 0; i < 2; i++ { // the second answer comes from the cache
		m, err := measureFile(exe)
		if err != nil || !bytes.Equal(m, want[:]) {
			t.Fatalf("run %d: measurement %x, %v; want %x", i, m, err, want)
		}
	}
	fi, _ := os.Stat(exe)
	cache := measurementCachePath(exe, fi)
	if _, err := os.Stat(cache); err != nil {
		t.Fatalf("no cache entry: %v", err)
	}

	// A new build at the same path, even of the same size, is measured anew.
	if err := os.WriteFile(exe, []byte("build two"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(exe, time.Now().Add(time.Hour), time.Now().Add(time.Hour))
	want2 := sha512.Sum384([]byte("build two"))
	if m, err := measureFile(exe); err != nil || !bytes.Equal(m, want2[:]) {
		t.Fatalf("after rebuild: %x, %v; want %x", m, err, want2)
	}

	// A damaged cache entry is ignored, not believed.
	fi, _ = os.Stat(exe)
	if err := os.WriteFile(measurementCachePath(exe, fi), []byte("not hex\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if m, err := measureFile(exe); err != nil || !bytes.Equal(m, want2[:]) {
		t.Fatalf("damaged cache: %x, %v", m, err)
	}
}
