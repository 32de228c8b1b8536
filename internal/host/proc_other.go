//go:build !linux

package host

import (
	"errors"
	"os"
	"runtime"
)

// The host agent manages keeps through Linux interfaces (pidfd, flock;
// internal/keep for the rest). Elsewhere it does not start.

var errUnsupported = errors.New("the host agent runs on Linux only, not " + runtime.GOOS)

func waitExit(int, uint64, <-chan struct{}) error { return errUnsupported }
func lockState(string) (*os.File, error)          { return nil, errUnsupported }
func checkStateDir(string) error                  { return nil }
