// Package qemutest fakes the host that internal/keep/qemu probes: a
// machine with or without QEMU, KVM, SEV-SNP or TDX, made of maps.
package qemutest

import (
	"errors"
	"io/fs"
	"strings"
	"time"
)

// Host is a qemu.Host made of maps: files, programs and their outputs.
type Host struct {
	Files         map[string]string
	Path          string            // where qemu-system-x86_64 is; "" = not installed
	Outputs       map[string]string // QEMU's arguments joined by spaces → its stdout
	CreateVMError error
	// Programs are other programs on PATH (e.g. virtiofsd): name → path.
	Programs map[string]string
}

func (f *Host) LookPath(name string) (string, error) {
	if p, ok := f.Programs[name]; ok {
		return p, nil
	}
	if f.Path == "" || name != "qemu-system-x86_64" {
		return "", errors.New("executable file not found in $PATH")
	}
	return f.Path, nil
}

func (f *Host) Output(name string, args ...string) ([]byte, error) {
	out, ok := f.Outputs[strings.Join(args, " ")]
	if !ok {
		return nil, errors.New("exit status 1")
	}
	return []byte(out), nil
}

func (f *Host) ReadFile(path string) ([]byte, error) {
	s, ok := f.Files[path]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
	}
	return []byte(s), nil
}

func (f *Host) Stat(path string) (fs.FileInfo, error) {
	if _, ok := f.Files[path]; !ok {
		return nil, &fs.PathError{Op: "stat", Path: path, Err: fs.ErrNotExist}
	}
	return fakeInfo(path), nil
}

func (f *Host) CreateVM() error { return f.CreateVMError }

type fakeInfo string

func (i fakeInfo) Name() string       { return string(i) }
func (i fakeInfo) Size() int64        { return 0 }
func (i fakeInfo) Mode() fs.FileMode  { return 0o600 }
func (i fakeInfo) ModTime() time.Time { return time.Time{} }
func (i fakeInfo) IsDir() bool        { return false }
func (i fakeInfo) Sys() any           { return nil }

// Help texts of the two virtiofsd daemons (the lines the launcher reads):
// QEMU's C daemon, the Rust daemon, and a Rust daemon with --readonly.
const (
	VirtiofsdCHelp      = "usage: virtiofsd [options]\n    -o source=PATH             shared directory tree\n    --fd=FDNUM                 fd number of vhost-user socket\n"
	VirtiofsdRustHelp   = "Usage: virtiofsd [OPTIONS]\n      --shared-dir <SHARED_DIR>  Shared directory path\n      --fd <FD>  File descriptor for the listening socket\n"
	VirtiofsdRustROHelp = VirtiofsdRustHelp + "      --readonly  the shared directory is read-only\n"
)

// Object lists of QEMU before SEV-SNP support, and with SEV-SNP and TDX.
const (
	ObjectsOld = "List of user creatable objects:\n  authz-list\n  memory-backend-memfd\n  sev-guest\n  tls-creds-x509\n"
	ObjectsNew = ObjectsOld + "  sev-snp-guest\n  tdx-guest\n"
)

// ThisMachine is what the research notes found on the build machine:
// /dev/kvm but no vmx or svm, QEMU 7.2.
func ThisMachine() *Host {
	return &Host{
		Files: map[string]string{"/proc/cpuinfo": "processor\t: 0\nflags\t\t: fpu vme sse sse2 avx2 hypervisor\n", "/dev/kvm": ""},
		Path:  "/usr/bin/qemu-system-x86_64",
		Outputs: map[string]string{
			"-version":     "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard\n",
			"-object help": ObjectsOld,
		},
	}
}

// SNPHost is an SEV-SNP host with QEMU 9.2.
func SNPHost() *Host {
	return &Host{
		Files: map[string]string{"/proc/cpuinfo": "flags\t\t: fpu svm sev sev_es sev_snp\n", "/dev/kvm": "",
			"/sys/module/kvm_amd/parameters/sev_snp": "Y\n"},
		Path: "/usr/local/bin/qemu-system-x86_64",
		Outputs: map[string]string{
			"-version":     "QEMU emulator version 9.2.0\n",
			"-object help": ObjectsNew,
		},
	}
}

// TDXHost is a TDX host with QEMU 10.1.
func TDXHost() *Host {
	return &Host{
		Files: map[string]string{"/proc/cpuinfo": "flags\t\t: fpu vmx tdx_host_platform\n", "/dev/kvm": "",
			"/sys/module/kvm_intel/parameters/tdx": "Y\n"},
		Path: "/usr/bin/qemu-system-x86_64",
		Outputs: map[string]string{
			"-version":     "QEMU emulator version 10.1.0\n",
			"-object help": ObjectsNew,
		},
	}
}
