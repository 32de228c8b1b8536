//go:build unix

package regularfile

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestOpen: a regular file (or a link to one) opens; a FIFO, whose open
// would block, a device and a folder are refused, in a plain folder and
// under an os.Root alike.
func TestOpen(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "file"), []byte("x"), 0o600)
	os.Symlink("file", filepath.Join(dir, "link"))
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "sub"), 0o700)
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, c := range []struct {
		fsys FS
		dir  string // names are under it
	}{{OS, dir}, {root, ""}} {
		name := func(n string) string { return filepath.Join(c.dir, n) }
		for _, ok := range []string{"file", "link"} {
			f, st, err := Open(c.fsys, name(ok))
			if err != nil || st.Size() != 1 {
				t.Fatalf("%s: %v", ok, err)
			}
			f.Close()
		}
		for _, bad := range []string{"fifo", "sub"} {
			if _, _, err := Open(c.fsys, name(bad)); !errors.Is(err, ErrNotRegular) {
				t.Errorf("%s: %v, want refused", bad, err)
			}
		}
	}
	if _, _, err := Open(OS, "/dev/zero"); !errors.Is(err, ErrNotRegular) {
		t.Errorf("/dev/zero: %v, want refused", err)
	}
}
