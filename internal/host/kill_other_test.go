//go:build !unix

package host

import (
	"errors"
	"syscall"
)

// kill is not available here: the host agent runs on Linux only.
func kill(int, syscall.Signal) error { return errors.New("kill: not supported on this system") }
