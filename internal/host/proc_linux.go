//go:build linux

package host

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/castellan-dev/castellan/internal/keep"
	"golang.org/x/sys/unix"
)

// waitExit blocks until the process behind pid (checked against ticks)
// ends, without being its parent: pidfd_open and poll.
func waitExit(pid int, ticks uint64, done <-chan struct{}) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(fd)
	// Check again after opening: the pidfd now pins this exact process.
	if !keep.Alive(pid, ticks) {
		return nil
	}
	for {
		select {
		case <-done:
			return errAgentClosing
		default:
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 1000)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return err
		}
		if n > 0 {
			return nil
		}
	}
}

// checkStateDir refuses a state folder that another local user could
// write to: one owned by another user, or writable by group or others.
// Whoever can write there can add a token hash to the database, plant the
// agent's TLS key, or put symbolic links where keep folders go.
func checkStateDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("state folder %s: %w", dir, err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("state folder %s: cannot read its owner", dir)
	}
	if !st.IsDir() {
		return fmt.Errorf("state folder %s: not a folder", dir)
	}
	if int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("state folder %s: belongs to uid %d, not to the agent's user (uid %d)", dir, sys.Uid, os.Geteuid())
	}
	if st.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("state folder %s: writable by group or others (mode %v; chmod go-w it)", dir, st.Mode().Perm())
	}
	return nil
}

// lockState takes an exclusive lock on the state folder, so that two
// agents never manage the same keeps. The kernel drops it when the agent
// dies.
func lockState(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "agent.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("state folder %s: another host agent is using it", dir)
		}
		return nil, fmt.Errorf("state folder %s: lock: %w", dir, err)
	}
	return f, nil
}
