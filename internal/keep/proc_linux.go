//go:build linux

package keep

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ApplyLimits sets the keep process's own rlimits. The keep process runs
// it first thing, before it reads anything from outside; from then on the
// kernel enforces them (RLIMIT_DATA: allocations fail; RLIMIT_CPU: SIGKILL
// at the limit; RLIMIT_NOFILE: open fails).
//
// Memory is RLIMIT_DATA (private writable memory, which holds the Go heap
// and so the workload's linear memory), not RLIMIT_AS: the Go runtime
// reserves about 1.5 GiB of address space it never touches, so an
// address-space limit measures reservations, not use.
func ApplyLimits(l Limits) error {
	set := func(name string, res int, v int64) error {
		if v <= 0 {
			return nil
		}
		lim := &unix.Rlimit{Cur: uint64(v), Max: uint64(v)}
		if err := unix.Setrlimit(res, lim); err != nil {
			return fmt.Errorf("setrlimit %s %d: %w", name, v, err)
		}
		return nil
	}
	if err := set("RLIMIT_DATA", unix.RLIMIT_DATA, l.MemoryBytes); err != nil {
		return err
	}
	if err := set("RLIMIT_CPU", unix.RLIMIT_CPU, l.CPUSeconds); err != nil {
		return err
	}
	return set("RLIMIT_NOFILE", unix.RLIMIT_NOFILE, l.OpenFiles)
}

// StartTicks reads a process's start time (clock ticks after boot) from
// /proc/PID/stat: with the pid it identifies the process across pid reuse.
func StartTicks(pid int) (uint64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	// The command name is in parentheses and may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// Fields after the name start at field 3 (state); starttime is field 22.
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// alive reports whether pid is the process that started at ticks, and
// not a zombie.
func Alive(pid int, ticks uint64) bool {
	if pid <= 0 {
		return false
	}
	t, err := StartTicks(pid)
	if err != nil || t != ticks {
		return false
	}
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// KillGroup sends SIGKILL to the keep's process group (the keep process
// is its leader), checked against its start time first.
func KillGroup(pid int, ticks uint64) error {
	if !Alive(pid, ticks) {
		return nil
	}
	if err := unix.Kill(-pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}

// ProcAttr makes a started process lead a process group of its own, so
// that a keep and all it started are stopped together.
func ProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// cgroupStatus says whether keeps can get a cgroup v2 of their own: the
// unified hierarchy must be mounted at /sys/fs/cgroup and the agent's
// cgroup writable. It returns the folder to create keep cgroups in, or ""
// and the reason.
func cgroupStatus() (string, string) {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
		return "", "cgroups v2: not in use here (no unified hierarchy at /sys/fs/cgroup); limits are rlimits and the wall-time timer only"
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", "cgroups v2: " + err.Error()
	}
	var rel string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if strings.HasPrefix(line, "0::") {
			rel = strings.TrimPrefix(line, "0::")
		}
	}
	dir := filepath.Join("/sys/fs/cgroup", rel, "castellan-keeps")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "cgroups v2: the agent's cgroup is not writable (" + err.Error() + "); limits are rlimits and the wall-time timer only"
	}
	// Enable the controllers keeps need in the new subtree.
	os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+memory +pids +cpu"), 0)
	return dir, "cgroups v2: each keep gets " + dir + "/<id> with memory.max, cpu.max (cpu_quota_us) and pids.max"
}

// makeCgroup creates the keep's cgroup and returns an open descriptor of
// it for clone3 CLONE_INTO_CGROUP (SysProcAttr.UseCgroupFD).
func makeCgroup(parent, id string, l Limits) (*os.File, error) {
	dir := filepath.Join(parent, id)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	if l.MemoryBytes > 0 {
		if err := os.WriteFile(filepath.Join(dir, "memory.max"), []byte(strconv.FormatInt(l.MemoryBytes, 10)), 0); err != nil {
			os.Remove(dir)
			return nil, fmt.Errorf("memory.max: %w", err)
		}
	}
	// The CPU cap is best effort: a value the kernel refuses leaves the
	// keep uncapped, never without its memory.max.
	if period := l.CPUPeriodMicros; l.CPUQuotaMicros >= 1000 {
		if period < 1000 || period > 1000000 {
			period = 100000
		}
		os.WriteFile(filepath.Join(dir, "cpu.max"), fmt.Appendf(nil, "%d %d", l.CPUQuotaMicros, period), 0)
	}
	os.WriteFile(filepath.Join(dir, "pids.max"), []byte("256"), 0)
	return os.Open(dir)
}

// intoCgroup makes the keep process start inside the cgroup open as f.
func intoCgroup(attr *syscall.SysProcAttr, f *os.File) {
	attr.UseCgroupFD = true
	attr.CgroupFD = int(f.Fd())
}

func removeCgroup(parent, id string) {
	if parent != "" {
		os.Remove(filepath.Join(parent, id))
	}
}

// SignalName names a signal the way the API reports it.
func SignalName(s syscall.Signal) string {
	n := unix.SignalName(s)
	if n == "" {
		return "signal " + strconv.Itoa(int(s))
	}
	return n
}

// IsCPULimitSignal reports whether s is the signal the kernel sends at
// RLIMIT_CPU's soft limit.
func IsCPULimitSignal(s syscall.Signal) bool { return s == syscall.SIGXCPU }
