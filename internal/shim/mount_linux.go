package shim

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/containerd/containerd/api/types"
	"golang.org/x/sys/unix"
)

type netDialer struct{}

func (netDialer) dial(path string) (net.Conn, error) {
	return net.DialTimeout("unix", path, 5*time.Second)
}

// mountFlags are the mount options that are flags, not data.
var mountFlags = map[string]struct {
	clear bool
	flag  uintptr
}{
	"ro": {false, unix.MS_RDONLY}, "rw": {true, unix.MS_RDONLY},
	"bind": {false, unix.MS_BIND}, "rbind": {false, unix.MS_BIND | unix.MS_REC},
	"nosuid": {false, unix.MS_NOSUID}, "nodev": {false, unix.MS_NODEV}, "noexec": {false, unix.MS_NOEXEC},
}

// mountAll mounts the snapshot's mounts (overlay, or a bind of a native
// snapshot) on target, in order.
func mountAll(ms []*types.Mount, target string) error {
	if err := os.MkdirAll(target, 0o711); err != nil {
		return err
	}
	for _, m := range ms {
		var flags uintptr
		var data []string
		for _, o := range m.Options {
			if f, ok := mountFlags[o]; ok {
				if f.clear {
					flags &^= f.flag
				} else {
					flags |= f.flag
				}
				continue
			}
			data = append(data, o)
		}
		typ := m.Type
		if flags&unix.MS_BIND != 0 {
			typ = ""
		}
		if err := unix.Mount(m.Source, target, typ, flags, strings.Join(data, ",")); err != nil {
			unmountAll(target)
			return fmt.Errorf("mount %s (%s) on %s: %w", m.Source, m.Type, target, err)
		}
	}
	return nil
}

// unmountAll unmounts everything mounted on target.
func unmountAll(target string) {
	for range 8 {
		if err := unix.Unmount(target, unix.MNT_DETACH); err != nil {
			return
		}
	}
}
