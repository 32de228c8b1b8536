//go:build linux

package wasi

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func sysStat(fi fs.FileInfo) statT {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return statT{nlink: 1}
	}
	return statT{
		dev:   uint64(st.Dev),
		ino:   uint64(st.Ino),
		nlink: uint64(st.Nlink),
		atim:  st.Atim.Nano(),
		ctim:  st.Ctim.Nano(),
	}
}

// lchtimes sets the times of the symlink rel itself: utimensat with
// AT_SYMLINK_NOFOLLOW on its name, relative to its parent directory as
// opened through root (so the parent cannot be outside the preopen, and
// the last component is never followed). A zero time is left as is.
func lchtimes(root *os.Root, rel string, atim, mtim time.Time) error {
	parent, err := root.Open(filepath.Dir(filepath.Clean(rel)))
	if err != nil {
		return err
	}
	defer parent.Close()
	ts := []unix.Timespec{timespec(atim), timespec(mtim)}
	return unix.UtimesNanoAt(int(parent.Fd()), filepath.Base(filepath.Clean(rel)), ts, unix.AT_SYMLINK_NOFOLLOW)
}

func timespec(t time.Time) unix.Timespec {
	if t.IsZero() {
		return unix.Timespec{Nsec: unix.UTIME_OMIT}
	}
	return unix.NsecToTimespec(t.UnixNano())
}
