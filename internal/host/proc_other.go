//go:build !linux

package host

import (
	"errors"
	"os"
	"runtime"
	"syscall"
)

// The host agent manages keep processes through Linux interfaces (rlimits
// set by the keep on itself, /proc start times, pidfd, process groups,
// cgroups v2). Elsewhere it does not start.

var errUnsupported = errors.New("the host agent runs on Linux only, not " + runtime.GOOS)

func applyLimits(Limits) error                    { return errUnsupported }
func startTicks(int) (uint64, error)              { return 0, errUnsupported }
func alive(int, uint64) bool                      { return false }
func waitExit(int, uint64, <-chan struct{}) error { return errUnsupported }
func killGroup(int, uint64) error                 { return errUnsupported }
func procAttr() *syscall.SysProcAttr              { return &syscall.SysProcAttr{} }
func cgroupStatus() (string, string)              { return "", errUnsupported.Error() }
func removeCgroup(string, string)                 {}
func signalName(s syscall.Signal) string          { return s.String() }
func isCPULimitSignal(syscall.Signal) bool        { return false }

func makeCgroup(string, string, Limits) (*os.File, error) { return nil, errUnsupported }
func lockState(string) (*os.File, error)                  { return nil, errUnsupported }
func intoCgroup(*syscall.SysProcAttr, *os.File)           {}
