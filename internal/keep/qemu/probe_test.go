package qemu

import (
	"errors"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/keep/qemu/qemutest"
)

var _ Host = (*qemutest.Host)(nil)

func TestProbe(t *testing.T) {
	for _, tc := range []struct {
		name         string
		host         func() *qemutest.Host
		confidential string
		accel        string // want, or "" for an error
		want         string // in the error or the warning
	}{
		{"this machine: tcg", qemutest.ThisMachine, "", AccelTCG, "TCG (emulation): slow, and not isolated by hardware (the CPU has neither vmx nor svm"},
		{"this machine: no snp", qemutest.ThisMachine, SNP, "", "cannot launch SEV-SNP VM keeps: not an SEV-SNP host: no /sys/module/kvm_amd/parameters/sev_snp"},
		{"this machine: no tdx", qemutest.ThisMachine, TDX, "", "cannot launch TDX VM keeps: not a TDX host: no /sys/module/kvm_intel/parameters/tdx"},
		{"no qemu", func() *qemutest.Host { h := qemutest.ThisMachine(); h.Path = ""; return h }, "", "", "qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86)"},
		{"qemu fails", func() *qemutest.Host { h := qemutest.ThisMachine(); delete(h.Outputs, "-version"); return h }, "", "", "-version: exit status 1"},
		{"not qemu", func() *qemutest.Host { h := qemutest.ThisMachine(); h.Outputs["-version"] = "hello\n"; return h }, "", "", "no \"QEMU emulator version\""},
		{"kvm", func() *qemutest.Host {
			h := qemutest.ThisMachine()
			h.Files["/proc/cpuinfo"] = "flags : fpu vmx\n"
			return h
		}, "", AccelKVM, ""},
		{"vmx but no /dev/kvm", func() *qemutest.Host {
			h := qemutest.ThisMachine()
			h.Files["/proc/cpuinfo"] = "flags : fpu vmx\n"
			delete(h.Files, "/dev/kvm")
			return h
		}, "", AccelTCG, "no /dev/kvm"},
		{"kvm create fails", func() *qemutest.Host {
			h := qemutest.ThisMachine()
			h.Files["/proc/cpuinfo"] = "flags : fpu svm\n"
			h.CreateVMError = errors.New("KVM_CREATE_VM: operation not permitted")
			return h
		}, "", AccelTCG, "/dev/kvm cannot create a VM: KVM_CREATE_VM: operation not permitted"},
		{"snp host", qemutest.SNPHost, SNP, AccelKVM, ""},
		{"snp host, plain vm", qemutest.SNPHost, "", AccelKVM, ""},
		{"snp host, old qemu", func() *qemutest.Host {
			h := qemutest.SNPHost()
			h.Outputs["-version"], h.Outputs["-object help"] = "QEMU emulator version 8.2.2\n", qemutest.ObjectsOld
			return h
		}, SNP, "", "QEMU 8.2.2 is too old for SEV-SNP (no sev-snp-guest object; QEMU 9.1 or later has it)"},
		{"snp off", func() *qemutest.Host {
			h := qemutest.SNPHost()
			h.Files["/sys/module/kvm_amd/parameters/sev_snp"] = "N\n"
			return h
		}, SNP, "", "sev_snp is off"},
		{"snp host, kvm broken", func() *qemutest.Host {
			h := qemutest.SNPHost()
			h.CreateVMError = errors.New("KVM_CREATE_VM: no space left on device")
			return h
		}, SNP, "", "KVM is not usable: /dev/kvm cannot create a VM"},
		{"snp host asked for tdx", qemutest.SNPHost, TDX, "", "not a TDX host"},
		{"tdx host", qemutest.TDXHost, TDX, AccelKVM, ""},
		{"tdx host, old qemu", func() *qemutest.Host {
			h := qemutest.TDXHost()
			h.Outputs["-version"], h.Outputs["-object help"] = "QEMU emulator version 9.2.0\n", qemutest.ObjectsOld+"  sev-snp-guest\n"
			return h
		}, TDX, "", "QEMU 9.2.0 is too old for TDX (no tdx-guest object; QEMU 10.1 or later has it)"},
		{"tdx off", func() *qemutest.Host {
			h := qemutest.TDXHost()
			h.Files["/sys/module/kvm_intel/parameters/tdx"] = "N\n"
			return h
		}, TDX, "", "tdx is off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Probe(tc.host())
			accel, warning, err := s.Plan(tc.confidential)
			if tc.accel == "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("error %v, want %q", err, tc.want)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Fatalf("error %q is more than one line", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Plan: %v", err)
			}
			if accel != tc.accel {
				t.Fatalf("accel %s, want %s", accel, tc.accel)
			}
			if !strings.Contains(warning, tc.want) || (tc.want == "") != (warning == "") {
				t.Fatalf("warning %q, want %q", warning, tc.want)
			}
		})
	}
}

func TestProbeReport(t *testing.T) {
	s := Probe(qemutest.ThisMachine())
	if s.QEMU != "/usr/bin/qemu-system-x86_64" || s.QEMUVersion != "7.2.22" || s.Accel != AccelTCG || s.KVM || s.SNP || s.TDX {
		t.Fatalf("%+v", s)
	}
	if !s.hasObject("sev-guest") || s.hasObject("sev-snp-guest") || s.hasObject("List of user creatable objects:") {
		t.Fatalf("objects %q", s.Objects)
	}
}

// TestProbeThisHost runs the real probes: they must not fail, whatever
// this machine has.
func TestProbeThisHost(t *testing.T) {
	s := Probe(OS{})
	if _, _, err := s.Plan(""); err != nil && s.QEMUError == "" {
		t.Fatalf("plain VM refused without a QEMU error: %v", err)
	}
	t.Logf("%+v", s)
}
