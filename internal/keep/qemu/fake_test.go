package qemu

import (
	"errors"
	"io/fs"
	"strings"
	"time"
)

// fakeHost is a Host made of maps: files, programs and their outputs.
type fakeHost struct {
	files    map[string]string
	path     string            // where qemu-system-x86_64 is; "" = not installed
	outputs  map[string]string // "arg arg" → stdout
	createVM error
}

var _ Host = (*fakeHost)(nil)

func (f *fakeHost) LookPath(name string) (string, error) {
	if f.path == "" {
		return "", errors.New("executable file not found in $PATH")
	}
	return f.path, nil
}

func (f *fakeHost) Output(name string, args ...string) ([]byte, error) {
	out, ok := f.outputs[strings.Join(args, " ")]
	if !ok {
		return nil, errors.New("exit status 1")
	}
	return []byte(out), nil
}

func (f *fakeHost) ReadFile(path string) ([]byte, error) {
	s, ok := f.files[path]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
	}
	return []byte(s), nil
}

func (f *fakeHost) Stat(path string) (fs.FileInfo, error) {
	if _, ok := f.files[path]; !ok {
		return nil, &fs.PathError{Op: "stat", Path: path, Err: fs.ErrNotExist}
	}
	return fakeInfo(path), nil
}

func (f *fakeHost) CreateVM() error { return f.createVM }

type fakeInfo string

func (i fakeInfo) Name() string       { return string(i) }
func (i fakeInfo) Size() int64        { return 0 }
func (i fakeInfo) Mode() fs.FileMode  { return 0o600 }
func (i fakeInfo) ModTime() time.Time { return time.Time{} }
func (i fakeInfo) IsDir() bool        { return false }
func (i fakeInfo) Sys() any           { return nil }

const objectsOld = "List of user creatable objects:\n  authz-list\n  memory-backend-memfd\n  sev-guest\n  tls-creds-x509\n"
const objectsNew = objectsOld + "  sev-snp-guest\n  tdx-guest\n"

// hosts used by the tests.
func thisMachine() *fakeHost { // what the research notes found here
	return &fakeHost{
		files: map[string]string{"/proc/cpuinfo": "processor\t: 0\nflags\t\t: fpu vme sse sse2 avx2 hypervisor\n", "/dev/kvm": ""},
		path:  "/usr/bin/qemu-system-x86_64",
		outputs: map[string]string{
			"-version":     "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard\n",
			"-object help": objectsOld,
		},
	}
}

func snpHost() *fakeHost {
	return &fakeHost{
		files: map[string]string{"/proc/cpuinfo": "flags\t\t: fpu svm sev sev_es sev_snp\n", "/dev/kvm": "",
			"/sys/module/kvm_amd/parameters/sev_snp": "Y\n"},
		path: "/usr/local/bin/qemu-system-x86_64",
		outputs: map[string]string{
			"-version":     "QEMU emulator version 9.2.0\n",
			"-object help": objectsNew,
		},
	}
}

func tdxHost() *fakeHost {
	return &fakeHost{
		files: map[string]string{"/proc/cpuinfo": "flags\t\t: fpu vmx tdx_host_platform\n", "/dev/kvm": "",
			"/sys/module/kvm_intel/parameters/tdx": "Y\n"},
		path: "/usr/bin/qemu-system-x86_64",
		outputs: map[string]string{
			"-version":     "QEMU emulator version 10.1.0\n",
			"-object help": objectsNew,
		},
	}
}
