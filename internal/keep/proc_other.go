//go:build !linux

package keep

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"syscall"
)

// Keeps are managed through Linux interfaces (rlimits set by the keep on
// itself, /proc start times, process groups, cgroups v2). Elsewhere none
// starts.

var errUnsupported = errors.New("keeps run on Linux only, not " + runtime.GOOS)

func ApplyLimits(Limits) error                  { return errUnsupported }
func StartTicks(int) (uint64, error)            { return 0, errUnsupported }
func Alive(int, uint64) bool                    { return false }
func KillGroup(int, uint64) error               { return errUnsupported }
func ProcAttr() *syscall.SysProcAttr            { return &syscall.SysProcAttr{} }
func IsCPULimitSignal(syscall.Signal) bool      { return false }
func cgroupStatus() (string, string)            { return "", errUnsupported.Error() }
func removeCgroup(string, string)               {}
func SignalName(s syscall.Signal) string        { return s.String() }
func intoCgroup(*syscall.SysProcAttr, *os.File) {}

func makeCgroup(string, string, Limits) (*os.File, error) { return nil, errUnsupported }

type warmProc struct {
	cmd   *exec.Cmd
	ticks uint64
}

func (p *Process) startWarm() (*warmProc, error) { return nil, errUnsupported }
func (w *warmProc) assign(string, []string, *os.File, *os.File) error {
	return errUnsupported
}
func (w *warmProc) discard() {}

// AwaitKeep is the keep side of a keep process started ahead (Linux only).
func AwaitKeep() ([]string, error) { return nil, errUnsupported }
