package packages

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestStaleIngestRemoved: Open removes what a writer that died left in
// ingest/ an hour ago or more, and leaves a write in progress alone.
func TestStaleIngestRemoved(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	if _, err := Open(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	ingest := filepath.Join(dir, ingestDir)
	os.MkdirAll(ingest, 0o755)
	old, fresh := filepath.Join(ingest, "aaaa_1"), filepath.Join(ingest, "bbbb_2")
	for _, p := range []string{old, fresh} {
		if err := os.WriteFile(p, []byte("partial"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	long := time.Now().Add(-2 * time.Hour)
	os.Chtimes(old, long, long)
	if _, err := Open(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("stale ingest file still there: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a write in progress was removed: %v", err)
	}
}
