package vmguest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/castellan-dev/castellan/internal/host"
	"github.com/castellan-dev/castellan/internal/keep/vmproto"
	"github.com/castellan-dev/castellan/internal/keepimage"
)

// linuxMachine is the real guest kernel.
type linuxMachine struct{}

var _ machine = linuxMachine{}

// portWait bounds the wait for the virtio port to appear (it is probed
// before /init runs; the wait covers slow emulated boots).
const portWait = time.Minute

func (linuxMachine) Setup(logf func(string, ...any)) error {
	for _, m := range []struct{ src, dir, fs string }{
		{"devtmpfs", "/dev", "devtmpfs"},
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"tmpfs", "/tmp", "tmpfs"},
	} {
		if err := unix.Mount(m.src, m.dir, m.fs, unix.MS_NOSUID, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fs, m.dir, err)
		}
	}
	// Console on 0, 1 and 2, in case the kernel found no /dev/console.
	if fd, err := unix.Open("/dev/console", unix.O_RDWR, 0); err == nil {
		for i := 0; i < 3; i++ {
			unix.Dup3(fd, i, 0)
		}
		if fd > 2 {
			unix.Close(fd)
		}
	}
	// The sim backends' CA and measurement cache, and wazero's temp files.
	os.Setenv("HOME", "/tmp")
	os.Setenv("TMPDIR", "/tmp")
	os.Setenv("CASTELLAN_CONFIG_DIR", "/tmp/castellan")
	if err := loadModules(logf); err != nil {
		return err
	}
	// configfs-tsm reports live under /sys/kernel/config/tsm/report.
	if _, err := os.Stat("/sys/kernel/config"); err == nil {
		if err := unix.Mount("configfs", "/sys/kernel/config", "configfs", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			logf("keep guest: no configfs (%v): configfs-tsm reports unavailable", err)
		}
	}
	return nil
}

// loadModules loads the image's modules in order. A TEE guest driver
// refuses to load on a machine without its TEE (ENODEV): that is noted,
// not fatal; the keep's backend then says what is missing.
func loadModules(logf func(string, ...any)) error {
	list, err := os.ReadFile("/" + keepimage.ModulesList)
	if err != nil {
		return fmt.Errorf("module list: %w", err)
	}
	for _, name := range strings.Fields(string(list)) {
		f, err := os.Open(filepath.Join("/", keepimage.ModulesDir, name))
		if err != nil {
			return fmt.Errorf("module %s: %w", name, err)
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		switch {
		case err == nil, errors.Is(err, unix.EEXIST):
		case errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
			logf("keep guest: module %s: not for this machine (%v)", name, err)
		default:
			return fmt.Errorf("loading module %s: %w", name, err)
		}
	}
	return nil
}

func (linuxMachine) OpenPort(name string) (io.ReadWriteCloser, error) {
	deadline := time.Now().Add(portWait)
	for {
		path, err := findPort("/sys/class/virtio-ports", "/dev", name)
		if err == nil {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err == nil {
				return f, nil
			}
			// devtmpfs makes the node a moment after sysfs shows the
			// port: wait for it as for the port.
			if !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
				return nil, fmt.Errorf("opening %s: %w", path, err)
			}
		}
		if err != nil && time.Now().After(deadline) {
			return nil, fmt.Errorf("%w after %v", err, portWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// MountVolume mounts a virtio-fs device at /volumes/TAG: no devices, no
// set-uid programs, read-only if asked.
func (linuxMachine) MountVolume(tag string, readOnly bool) (string, error) {
	dir := path.Join(vmproto.VolumeMountDir, tag)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if readOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(tag, dir, "virtiofs", flags, ""); err != nil {
		return "", fmt.Errorf("mount virtiofs %s on %s: %w", tag, dir, err)
	}
	return dir, nil
}

func (linuxMachine) Uptime() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return time.Duration(ts.Nano())
}

func (linuxMachine) CPUTime() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (linuxMachine) PowerOff() {
	unix.Sync()
	for {
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		time.Sleep(time.Second)
	}
}

// setrlimits applies the memory and file limits as a process keep does.
func setrlimits(l host.Limits) error {
	return host.ApplyLimits(host.Limits{MemoryBytes: l.MemoryBytes, OpenFiles: l.OpenFiles})
}
