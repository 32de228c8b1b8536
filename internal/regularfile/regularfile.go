// Package regularfile opens files that must be regular files, from
// folders others may write (an image's root filesystem, an image-layout
// folder someone handed over). Such a name may be a FIFO, whose open
// blocks for ever, or a device node, whose open acts on the device (a
// watchdog arms) and whose content never ends. Open looks before it opens
// and opens without blocking, then checks that the file it opened is the
// one it looked at.
package regularfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// FS is where a name is opened: an *os.Root, or OS for paths as they are.
type FS interface {
	Stat(name string) (fs.FileInfo, error)
	OpenFile(name string, flag int, perm fs.FileMode) (*os.File, error)
}

// OS opens paths as they are (a symbolic link to a regular file is fine).
var OS FS = osFS{}

type osFS struct{}

func (osFS) Stat(name string) (fs.FileInfo, error) { return os.Stat(name) }
func (osFS) OpenFile(name string, flag int, perm fs.FileMode) (*os.File, error) {
	return os.OpenFile(name, flag, perm)
}

// ErrNotRegular is the refusal of a name that is not a regular file, or
// stopped being one between the look and the open.
var ErrNotRegular = errors.New("not a regular file")

// Open opens name in fsys for reading if it is a regular file, and
// returns it with its FileInfo.
func Open(fsys FS, name string) (*os.File, fs.FileInfo, error) {
	pre, err := fsys.Stat(name)
	if err != nil {
		return nil, nil, err
	}
	if !pre.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%w (%v)", ErrNotRegular, pre.Mode().Type())
	}
	f, err := fsys.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !st.Mode().IsRegular() || !os.SameFile(pre, st) {
		f.Close()
		return nil, nil, fmt.Errorf("%w, or replaced while it was opened", ErrNotRegular)
	}
	return f, st, nil
}
