//go:build !linux

package qemu

import "errors"

func createVM() error { return errors.New("KVM is Linux only") }
