//go:build !unix

package qemu

import "syscall"

// killGroup and inGroup do nothing where VM keeps cannot run (Provision
// refuses them there first).
func killGroup(int) {}

func inGroup(int) *syscall.SysProcAttr { return &syscall.SysProcAttr{} }
