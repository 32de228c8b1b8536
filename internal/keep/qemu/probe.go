package qemu

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"regexp"
	"strings"
)

// Host is what the probes read from this machine: a narrow interface so
// that tests can fake a host with or without KVM, SNP, TDX, QEMU or
// firmware.
type Host interface {
	// LookPath finds a program on PATH.
	LookPath(name string) (string, error)
	// Output runs a program and returns its standard output.
	Output(name string, args ...string) ([]byte, error)
	ReadFile(path string) ([]byte, error)
	Stat(path string) (fs.FileInfo, error)
	// CreateVM opens /dev/kvm and creates (and closes) an empty VM with
	// KVM_CREATE_VM: the device node alone does not prove KVM works.
	CreateVM() error
}

// Program is QEMU's executable name.
const Program = "qemu-system-x86_64"

// Support is what this host offers VM keeps. JSON is `castellan platform
// info --json`.
type Support struct {
	QEMU        string   `json:"qemu,omitempty"`         // path of qemu-system-x86_64
	QEMUVersion string   `json:"qemu_version,omitempty"` // e.g. 7.2.22
	QEMUError   string   `json:"qemu_error,omitempty"`   // why QEMU cannot be used
	Objects     []string `json:"-"`                      // object types QEMU knows (-object help)
	// KVM says whether KVM can run guests here, and why not.
	KVM       bool   `json:"kvm"`
	KVMReason string `json:"kvm_reason,omitempty"`
	// Accel is what a plain VM keep runs under: kvm, or tcg (emulation).
	Accel string `json:"accel,omitempty"`
	// SNP and TDX: this host can launch such confidential VMs, or why not.
	SNP       bool   `json:"snp"`
	SNPReason string `json:"snp_reason,omitempty"`
	TDX       bool   `json:"tdx"`
	TDXReason string `json:"tdx_reason,omitempty"`
	// CBitPos and ReducedPhysBits of an SEV-SNP host (CPUID 0x8000001F).
	CBitPos         int `json:"-"`
	ReducedPhysBits int `json:"-"`
}

var versionRE = regexp.MustCompile(`QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?`)

// QEMU's objects of the confidential VM kinds.
const (
	snpObject = "sev-snp-guest"
	tdxObject = "tdx-guest"
)

// Probe finds QEMU and what this host can run. It never fails: what is
// missing is in the reasons.
func Probe(h Host) *Support {
	s := &Support{}
	s.probeQEMU(h)
	s.probeKVM(h)
	s.Accel = AccelTCG
	if s.KVM {
		s.Accel = AccelKVM
	}
	s.probeSNP(h)
	s.probeTDX(h)
	return s
}

func (s *Support) probeQEMU(h Host) {
	path, err := h.LookPath(Program)
	if err != nil {
		s.QEMUError = Program + " is not installed (Debian: apt-get install qemu-system-x86)"
		return
	}
	s.QEMU = path
	out, err := h.Output(path, "-version")
	if err != nil {
		s.QEMUError = fmt.Sprintf("%s -version: %v", path, err)
		return
	}
	m := versionRE.FindStringSubmatch(string(out))
	if m == nil {
		s.QEMUError = fmt.Sprintf("%s -version: no \"QEMU emulator version\" in its output", path)
		return
	}
	s.QEMUVersion = m[1] + "." + m[2]
	if m[3] != "" {
		s.QEMUVersion += "." + m[3]
	}
	out, err = h.Output(path, "-object", "help")
	if err != nil {
		s.QEMUError = fmt.Sprintf("%s -object help: %v", path, err)
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.TrimSpace(line); f != "" && !strings.HasSuffix(f, ":") {
			s.Objects = append(s.Objects, f)
		}
	}
}

func (s *Support) hasObject(name string) bool {
	for _, o := range s.Objects {
		if o == name {
			return true
		}
	}
	return false
}

func (s *Support) probeKVM(h Host) {
	cpuinfo, err := h.ReadFile("/proc/cpuinfo")
	if err != nil {
		s.KVMReason = "cannot read /proc/cpuinfo: " + err.Error()
		return
	}
	flags := cpuFlags(cpuinfo)
	if !flags["vmx"] && !flags["svm"] {
		s.KVMReason = "the CPU has neither vmx nor svm (no hardware virtualisation, or a VM without nested virtualisation): a KVM guest would not run even though /dev/kvm may exist"
		return
	}
	if _, err := h.Stat("/dev/kvm"); err != nil {
		s.KVMReason = "no /dev/kvm (load kvm_intel or kvm_amd)"
		return
	}
	if err := h.CreateVM(); err != nil {
		s.KVMReason = "/dev/kvm cannot create a VM: " + err.Error()
		return
	}
	s.KVM = true
}

// cpuFlags returns the flags of the first processor in /proc/cpuinfo.
func cpuFlags(cpuinfo []byte) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(string(cpuinfo), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == "flags" {
			for _, f := range strings.Fields(v) {
				out[f] = true
			}
			break
		}
	}
	return out
}

// moduleParam reads a kvm module parameter: "Y", "1" or "y" is on.
func moduleParam(h Host, path string) (bool, error) {
	b, err := h.ReadFile(path)
	if err != nil {
		return false, err
	}
	v := strings.TrimSpace(string(b))
	return v == "Y" || v == "y" || v == "1", nil
}

// A confidential VM kind: what the host and QEMU need for it.
type cvmKind struct {
	what    string // "an SEV-SNP host"
	param   string // the kvm module parameter that turns it on
	offHint string // why the parameter may be off
	name    string // "SEV-SNP"
	object  string // QEMU's object type
	since   string // the first QEMU version with it
}

var (
	snpKind = cvmKind{"an SEV-SNP host", "/sys/module/kvm_amd/parameters/sev_snp", "SNP disabled in the BIOS or the kernel",
		"SEV-SNP", snpObject, "9.1"}
	tdxKind = cvmKind{"a TDX host", "/sys/module/kvm_intel/parameters/tdx", "TDX disabled in the BIOS, or kvm_intel loaded without tdx=1",
		"TDX", tdxObject, "10.1"}
)

// probeCVM says whether this host can launch VMs of kind k, or why not.
func (s *Support) probeCVM(h Host, k cvmKind) (bool, string) {
	on, err := moduleParam(h, k.param)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, fmt.Sprintf("not %s: no %s (module not loaded, or no host support in this kernel or CPU)", k.what, k.param)
	case err != nil:
		return false, err.Error()
	case !on:
		return false, fmt.Sprintf("not %s: %s is off (%s)", k.what, k.param, k.offHint)
	case !s.KVM:
		return false, "KVM is not usable: " + s.KVMReason
	case s.QEMUError != "":
		return false, s.QEMUError
	case !s.hasObject(k.object):
		return false, fmt.Sprintf("QEMU %s is too old for %s (no %s object; QEMU %s or later has it)", s.QEMUVersion, k.name, k.object, k.since)
	}
	return true, ""
}

func (s *Support) probeSNP(h Host) {
	if s.SNP, s.SNPReason = s.probeCVM(h, snpKind); s.SNP {
		s.CBitPos, s.ReducedPhysBits = snpCPUID()
	}
}

func (s *Support) probeTDX(h Host) {
	s.TDX, s.TDXReason = s.probeCVM(h, tdxKind)
}

// Plan says how a VM keep runs here: confidential is SNP, TDX or "" (a
// plain VM). The error names what is missing; warning is set when the VM
// runs under TCG.
func (s *Support) Plan(confidential string) (accel, warning string, err error) {
	if s.QEMUError != "" {
		return "", "", errors.New(s.QEMUError)
	}
	switch confidential {
	case SNP:
		if !s.SNP {
			return "", "", fmt.Errorf("cannot launch SEV-SNP VM keeps: %s", s.SNPReason)
		}
		return AccelKVM, "", nil
	case TDX:
		if !s.TDX {
			return "", "", fmt.Errorf("cannot launch TDX VM keeps: %s", s.TDXReason)
		}
		return AccelKVM, "", nil
	case "":
		if s.KVM {
			return AccelKVM, "", nil
		}
		return AccelTCG, "VM keeps run under TCG (emulation): slow, and not isolated by hardware (" + s.KVMReason + ")", nil
	}
	return "", "", fmt.Errorf("confidential VM kind %q (want snp, tdx or none)", confidential)
}

// OS is the real host.
type OS struct{}

var _ Host = OS{}

func (OS) LookPath(name string) (string, error) { return exec.LookPath(name) }
func (OS) Output(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).Output()
}
func (OS) ReadFile(path string) ([]byte, error)  { return os.ReadFile(path) }
func (OS) Stat(path string) (fs.FileInfo, error) { return os.Stat(path) }
func (OS) CreateVM() error                       { return createVM() }
