//go:build unix

// Package cputime reads the CPU time a process has used, for benchmarks
// that report CPU per operation: on a shared machine, wall time per
// operation says more about the neighbours than about the code.
package cputime

import (
	"syscall"
	"time"
)

// Self is this process's user and system CPU time so far.
func Self() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
