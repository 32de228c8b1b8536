//go:build unix

package host

import "syscall"

// kill sends sig to pid (a negative pid: its process group).
func kill(pid int, sig syscall.Signal) error { return syscall.Kill(pid, sig) }
