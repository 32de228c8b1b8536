//go:build !unix

package service

import "time"

// cpuTime is not measured here (no getrusage): the benchmarks report 0.
func cpuTime() time.Duration { return 0 }
