//go:build unix

package sim

import (
	"fmt"
	"os"
	"syscall"
)

// fileIdentity adds what Unix knows of a file's identity beyond its size
// and modification time: device, inode and change time (which a copy over
// the old file cannot keep).
func fileIdentity(fi os.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	return fmt.Sprintf("%d:%d:%d", st.Dev, st.Ino, ctimeNanos(st))
}
