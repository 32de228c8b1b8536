//go:build !unix

package cputime

import "time"

// Self is 0 here: there is no getrusage, and benchmarks report 0.
func Self() time.Duration { return 0 }
