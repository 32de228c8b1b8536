package wasi

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestPreopenNodev: a device node in a preopen (one a pod's sibling
// container made in a shared volume) is not opened, for reading or
// writing, directly or through a symlink; its stat still works.
func TestPreopenNodev(t *testing.T) {
	o, _, data := dirOpts(t, false)
	// The null device's numbers: harmless should the open happen.
	if err := syscall.Mknod(filepath.Join(data, "disk"), syscall.S_IFCHR|0o666, 1<<8|3); err != nil {
		t.Skipf("mknod: %v (needs CAP_MKNOD)", err)
	}
	must(t, os.Symlink("disk", filepath.Join(data, "link")))
	g := newGuest(t, o)
	for _, tc := range []struct {
		path   string
		rights uint64
		follow bool
	}{
		{"disk", rightFdRead, false},
		{"disk", rightFdRead | rightFdWrite, true},
		{"link", rightFdRead, true},
		{"sub/../disk", rightFdWrite, true},
	} {
		if e, _ := g.openAt(3, tc.path, 0, tc.rights, tc.follow); e != errAcces {
			t.Errorf("path_open(%q, rights %#x): errno %d, want EACCES", tc.path, tc.rights, e)
		}
	}
	pp, pl := g.str("disk")
	st := g.alloc(64)
	if e := g.call("path_filestat_get", 3, 0, pp, pl, uint64(st)); e != errSuccess || g.mem[st+16] != filetypeCharacterDevice {
		t.Errorf("path_filestat_get: errno %d, filetype %d", e, g.mem[st+16])
	}
}
