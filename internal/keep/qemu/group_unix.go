//go:build unix

package qemu

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// killGroup sends SIGKILL to the process group pgid (QEMU's, which holds
// the volumes' daemons).
func killGroup(pgid int) { unix.Kill(-pgid, unix.SIGKILL) }

// inGroup puts a process started with it into the process group pgid.
func inGroup(pgid int) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pgid: pgid}
}
