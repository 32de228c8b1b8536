package keep

import "testing"

func TestCrashWords(t *testing.T) {
	for _, tc := range []struct {
		line  string
		crash bool
	}{
		{"fatal error: out of memory", true},
		{"panic: runtime error: index out of range", true},
		{"keep: fatal error: out of memory", false},
		{"goroutine 1 [running]:", false},
	} {
		if got := IsCrashLine(tc.line); got != tc.crash {
			t.Errorf("IsCrashLine(%q) = %v", tc.line, got)
		}
	}
	if r, ok := MemoryLimitReason("fatal error: out of memory", 1<<20); !ok || r != "memory limit of 1048576 bytes reached (fatal error: out of memory)" {
		t.Errorf("under a limit: %q, %v", r, ok)
	}
	if _, ok := MemoryLimitReason("fatal error: out of memory", 0); ok {
		t.Error("no limit: reported as the limit")
	}
	if _, ok := MemoryLimitReason("panic: nil map", 1<<20); ok {
		t.Error("another crash: reported as the limit")
	}
}
