//go:build unix && !linux && !darwin && !freebsd && !netbsd && !openbsd && !dragonfly

package sim

import "syscall"

func ctimeNanos(*syscall.Stat_t) int64 { return 0 }
