//go:build race

package host

// raceEnabled is true under go test -race. ThreadSanitizer reserves its
// shadow memory at start, which a small RLIMIT_DATA refuses: keeps (this
// test binary) started with a low memory limit cannot start at all, so the
// tests of memory limits are left out of race runs.
const raceEnabled = true
