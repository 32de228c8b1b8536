package qemu

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// goldenBase is the machine of the golden files; goldenKinds make each
// kind of VM of it.
func goldenBase() Machine {
	return Machine{
		Kernel: "/images/keep/kernel", Initrd: "/images/keep/initrd",
		Cmdline:     "console=ttyS0 panic=-1 quiet",
		MemoryBytes: 512 << 20, VCPUs: 1, Dir: "/var/lib/castellan/host/keeps/0123456789ab",
	}
}

var goldenKinds = []struct {
	name string
	mod  func(*Machine)
}{
	{"tcg", func(m *Machine) { m.Accel = AccelTCG }},
	{"kvm", func(m *Machine) { m.Accel = AccelKVM; m.VCPUs = 2; m.MemoryBytes = 1 << 30 }},
	{"snp", func(m *Machine) {
		m.Accel, m.Confidential, m.Firmware = AccelKVM, SNP, "/usr/share/castellan/OVMF.amdsev.fd"
	}},
	{"tdx", func(m *Machine) {
		m.Accel, m.Confidential, m.Firmware = AccelKVM, TDX, "/usr/share/castellan/OVMF.tdx.fd"
	}},
}

func TestArgsGolden(t *testing.T) {
	base := goldenBase()
	for _, tc := range goldenKinds {
		t.Run(tc.name, func(t *testing.T) {
			m := base
			tc.mod(&m)
			checkGolden(t, &m, tc.name)
		})
	}
}

// checkGolden compares m's arguments with testdata/NAME.args.
func checkGolden(t *testing.T, m *Machine, name string) {
	t.Helper()
	args, err := m.Args()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(args, "\n") + "\n"
	path := filepath.Join("testdata", name+".args")
	if *update {
		os.WriteFile(path, []byte(got), 0o644)
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("arguments differ from %s (go test -update rewrites it):\n%s", path, got)
	}
}

func TestArgsRefused(t *testing.T) {
	ok := Machine{Accel: AccelTCG, Kernel: "k", Initrd: "i", MemoryBytes: 512 << 20, VCPUs: 1, Dir: "/d"}
	for _, tc := range []struct {
		name, want string
		mod        func(*Machine)
	}{
		{"accel", `accelerator "hvf"`, func(m *Machine) { m.Accel = "hvf" }},
		{"kind", `confidential VM kind "sev"`, func(m *Machine) { m.Confidential = "sev" }},
		{"snp under tcg", "an snp VM needs KVM, not tcg", func(m *Machine) { m.Confidential = SNP; m.Firmware = "f" }},
		{"tdx without firmware", "needs its firmware file", func(m *Machine) { m.Accel, m.Confidential = AccelKVM, TDX }},
		{"no kernel", "no kernel or initrd", func(m *Machine) { m.Kernel = "" }},
		{"memory", "memory of 1000 bytes", func(m *Machine) { m.MemoryBytes = 1000 }},
		{"odd memory", "whole number of MiB", func(m *Machine) { m.MemoryBytes = 512<<20 + 1 }},
		{"vcpus", "0 vCPUs", func(m *Machine) { m.VCPUs = 0 }},
		{"comma", "holds a comma", func(m *Machine) { m.Dir = "/keeps/a,server=off" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := ok
			tc.mod(&m)
			_, err := m.Args()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := ok.Args(); err != nil {
		t.Fatalf("the base machine is refused: %v", err)
	}
}
