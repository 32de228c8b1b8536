package host

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTLSKeyOthersCanRead: the agent refuses a TLS key group or others can
// read (or write), whether it would load it or write a new key over it
// (which would keep the old file's mode), instead of serving with it.
func TestTLSKeyOthersCanRead(t *testing.T) {
	for _, c := range []struct {
		name  string
		valid bool // the key and certificate load
		mode  os.FileMode
	}{
		{"valid key, world-readable", true, 0o644},
		{"valid key, group-readable", true, 0o640},
		{"unreadable garbage, world-readable", false, 0o644},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := loadOrCreateCert(dir); err != nil {
				t.Fatal(err)
			}
			kp := filepath.Join(dir, keyFile)
			if !c.valid {
				if err := os.WriteFile(kp, []byte("not a key"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Chmod(kp, c.mode); err != nil {
				t.Fatal(err)
			}
			_, err := loadOrCreateCert(dir)
			if err == nil || !strings.Contains(err.Error(), "readable or writable by group or others") {
				t.Fatalf("a key of mode %v: %v; want it refused", c.mode, err)
			}
		})
	}
	// A private key: loaded, the same identity.
	dir := t.TempDir()
	a, err := loadOrCreateCert(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := loadOrCreateCert(dir)
	if err != nil {
		t.Fatal(err)
	}
	if string(a.Certificate[0]) != string(b.Certificate[0]) {
		t.Fatal("a private key and certificate were not reused")
	}
}
