//go:build !linux

package vmguest

import (
	"errors"
	"io"
	"time"

	"github.com/castellan-dev/castellan/internal/host"
)

// linuxMachine exists on Linux only: a keep image's kernel is Linux.
type linuxMachine struct{}

var errNotLinux = errors.New("a keep guest runs on Linux only")

func (linuxMachine) Setup(func(string, ...any)) error            { return errNotLinux }
func (linuxMachine) OpenPort(string) (io.ReadWriteCloser, error) { return nil, errNotLinux }
func (linuxMachine) MountVolume(string, bool) (string, error)    { return "", errNotLinux }
func (linuxMachine) Uptime() time.Duration                       { return 0 }
func (linuxMachine) CPUTime() time.Duration                      { return 0 }
func (linuxMachine) PowerOff()                                   { select {} }

func setrlimits(host.Limits) error { return errNotLinux }
