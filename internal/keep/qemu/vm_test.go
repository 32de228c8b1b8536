package qemu

import (
	"bytes"
	"context"
	"crypto/sha512"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/keep/qemu/qemutest"
	"github.com/castellan-dev/castellan/internal/keepimage"
)

// TestVMMachine checks which VM each backend gets, and the refusals that
// name what is missing.
func TestVMMachine(t *testing.T) {
	img := fakeImage(t)
	for _, tc := range []struct {
		name, backend string
		host          *qemutest.Host
		firmware      string
		lim           keep.Limits
		accel, conf   string
		err           string
	}{
		{"nil under tcg", "nil", qemutest.ThisMachine(), "", keep.Limits{}, AccelTCG, "", ""},
		{"sim-snp is a plain vm", "sim-snp", qemutest.SNPHost(), "", keep.Limits{VMMemoryBytes: 1 << 30, VCPUs: 2}, AccelKVM, "", ""},
		{"snp", "snp", qemutest.SNPHost(), "/fw/OVMF.fd", keep.Limits{}, AccelKVM, SNP, ""},
		{"snp without firmware", "snp", qemutest.SNPHost(), "", keep.Limits{}, "", "", "cannot launch SNP VM keeps: no firmware file given"},
		{"snp here", "snp", qemutest.ThisMachine(), "/fw/OVMF.fd", keep.Limits{}, "", "", "cannot launch SEV-SNP VM keeps: not an SEV-SNP host"},
		{"tdx", "tdx", qemutest.TDXHost(), "/fw/OVMF.fd", keep.Limits{}, AccelKVM, TDX, ""},
		{"tdx on snp host", "tdx", qemutest.SNPHost(), "/fw/OVMF.fd", keep.Limits{}, "", "", "not a TDX host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := &VM{Image: img, Host: tc.host}
			if err := v.Provision(); err != nil {
				t.Fatal(err)
			}
			v.Firmware = tc.firmware // Provision would check the file exists
			m, err := v.Machine(keep.Spec{Backend: tc.backend, Dir: "/k", Limits: tc.lim})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.Accel != tc.accel || m.Confidential != tc.conf {
				t.Fatalf("machine %s/%q, want %s/%q", m.Accel, m.Confidential, tc.accel, tc.conf)
			}
			wantMem, wantCPU := tc.lim.VMMemoryBytes, int(tc.lim.VCPUs)
			if wantMem == 0 {
				wantMem, wantCPU = keep.DefaultVMMemory, keep.DefaultVCPUs
			}
			if m.MemoryBytes != wantMem || m.VCPUs != wantCPU {
				t.Fatalf("size %d bytes %d vCPUs", m.MemoryBytes, m.VCPUs)
			}
			if (m.Firmware != "") != (tc.conf != "") {
				t.Fatalf("firmware %q for %q", m.Firmware, tc.conf)
			}
			if _, err := m.Args(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestVMProvisionRefused(t *testing.T) {
	noQEMU := qemutest.ThisMachine()
	noQEMU.Path = ""
	for _, tc := range []struct {
		name string
		vm   *VM
		want string
	}{
		{"no image", &VM{Host: qemutest.ThisMachine()}, "vm keeps: no keep image"},
		{"bad image", &VM{Image: t.TempDir(), Host: qemutest.ThisMachine()}, "no kernel file"},
		{"no qemu", &VM{Image: fakeImage(t), Host: noQEMU}, "vm keeps: qemu-system-x86_64 is not installed"},
		{"no firmware file", &VM{Image: fakeImage(t), Firmware: "/nonexistent/OVMF.fd", Host: qemutest.SNPHost()}, "vm keeps: firmware:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.vm.Provision()
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := (&VM{}).Start(context.Background(), keep.Spec{}); err == nil {
		t.Fatal("an unprovisioned VM launcher started a keep")
	}
}

// TestVMAvailable: whether a backend's keeps can start as VMs here.
func TestVMAvailable(t *testing.T) {
	t.Setenv("CASTELLAN_CONFIG_DIR", t.TempDir())
	img := fakeImage(t)
	for _, tc := range []struct {
		host             *qemutest.Host
		firmware         string
		backend, wantErr string
	}{
		{qemutest.ThisMachine(), "", "nil", ""},
		{qemutest.ThisMachine(), "", "sim-snp", ""},
		{qemutest.ThisMachine(), "", "snp", "cannot launch SEV-SNP VM keeps: not an SEV-SNP host"},
		{qemutest.ThisMachine(), "", "sgx2", `unknown backend "sgx2"`},
		{qemutest.SNPHost(), "", "snp", "no firmware file given"},
		{qemutest.SNPHost(), "/fw", "snp", ""},
		{qemutest.TDXHost(), "/fw", "tdx", ""},
	} {
		v := &VM{Image: img, Host: tc.host}
		if err := v.Provision(); err != nil {
			t.Fatal(err)
		}
		v.Firmware = tc.firmware
		err := v.Available(tc.backend)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s on %s: %v, want %q", tc.backend, tc.host.Path, err, tc.wantErr)
		}
	}
}

// TestInitMeasurement: a sim-snp VM keep claims the SHA-384 of the image's
// /init, computed by the launcher from the initramfs.
func TestInitMeasurement(t *testing.T) {
	path := filepath.Join(t.TempDir(), "initrd")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	init := []byte("a castellan binary")
	if err := keepimage.WriteInitramfs(f, []keepimage.Entry{{Name: "lib", Mode: 0o755, Dir: true}, {Name: keepimage.InitPath, Mode: 0o755, Data: init}}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	want := sha512.Sum384(init)
	if got := initMeasurement(path); !bytes.Equal(got, want[:]) {
		t.Fatalf("measurement %x, want %x", got, want)
	}
	if got := initMeasurement(filepath.Join(t.TempDir(), "none")); got != nil {
		t.Fatalf("measurement of no initrd: %x", got)
	}
	v := &VM{simInit: want[:]}
	s := keep.Spec{Backend: "sim-snp", Nonce: []byte("n"), Digest: "sha256:" + strings.Repeat("0", 64), ClientKey: make([]byte, 32), AttachTimeout: time.Second}
	t.Setenv("CASTELLAN_CONFIG_DIR", t.TempDir())
	r, err := v.launchRequest(s)
	if err != nil || !bytes.Equal(r.SimMeasurement, want[:]) || len(r.SimCA) == 0 {
		t.Fatalf("sim-snp launch request: %v, measurement %x", err, r.SimMeasurement)
	}
	s.Backend = "sim-tdx"
	if r, err := v.launchRequest(s); err != nil || r.SimMeasurement != nil {
		t.Fatalf("sim-tdx launch request: %v, measurement %x", err, r.SimMeasurement)
	}
}
