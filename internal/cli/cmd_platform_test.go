package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/keep/qemu"
	"github.com/castellan-dev/castellan/internal/keep/qemu/qemutest"
	"github.com/castellan-dev/castellan/internal/tee"
)

func TestPlatformInfo(t *testing.T) {
	t.Setenv("CASTELLAN_CONFIG_DIR", t.TempDir())
	m, err := tee.SimMeasurement()
	if err != nil {
		t.Fatal(err)
	}

	var stdout, stderr bytes.Buffer
	if code := Main([]string{"platform", "info"}, nil, &stdout, &stderr); code != ExitOK {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range append(tee.Names(), "sim measurement: "+m, "sim roots:", "auto:") {
		if !strings.Contains(out, want) {
			t.Errorf("text output does not contain %q:\n%s", want, out)
		}
	}

	stdout.Reset()
	if code := Main([]string{"platform", "info", "--json"}, nil, &stdout, &stderr); code != ExitOK {
		t.Fatalf("--json: exit %d, stderr %q", code, stderr.String())
	}
	var got platformInfoOutput
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("--json output is not JSON: %v", err)
	}
	if len(got.Backends) != len(tee.Names()) || got.SimMeasurement != m {
		t.Errorf("--json output %+v", got)
	}
	if strings.HasPrefix(got.Auto, "sim-") {
		t.Errorf("auto is %s", got.Auto)
	}

	stderr.Reset()
	if code := Main([]string{"platform", "info", "extra"}, nil, &stdout, &stderr); code != ExitUsage {
		t.Errorf("extra argument: exit %d, want %d", code, ExitUsage)
	}
}

// TestPlatformInfoVMKeeps checks the VM keep part against fake hosts: a
// confidential host with an image and firmware, and this machine's kind
// (QEMU 7.2, no KVM).
func TestPlatformInfoVMKeeps(t *testing.T) {
	t.Setenv("CASTELLAN_CONFIG_DIR", t.TempDir())
	img := t.TempDir()
	for _, f := range []string{qemu.ImageKernel, qemu.ImageInitrd, qemu.ImageCmdline} {
		os.WriteFile(filepath.Join(img, f), []byte("x"), 0o644)
	}
	fw := filepath.Join(t.TempDir(), "OVMF.amdsev.fd")
	os.WriteFile(fw, []byte("x"), 0o644)
	defer func(h qemu.Host) { platformHost = h }(platformHost)
	for _, tc := range []struct {
		name string
		host *qemutest.Host
		args []string
		want []string
	}{
		{"snp host", qemutest.SNPHost(), []string{"--keep-image", img, "--firmware", fw}, []string{
			"vm keeps:        usable\n", "qemu:          /usr/local/bin/qemu-system-x86_64 (QEMU 9.2.0)", "kvm:           usable",
			"snp vms:       yes", "tdx vms:       no: not a TDX host", "keep image:    " + img, "firmware:      " + fw}},
		{"this machine", qemutest.ThisMachine(), nil, []string{
			"vm keeps:        not usable: no keep image given", "kvm:           no: the CPU has neither vmx nor svm",
			"snp vms:       no: not an SEV-SNP host", "firmware:      no: no firmware given"}},
		{"this machine with an image", qemutest.ThisMachine(), []string{"--keep-image", img}, []string{
			"vm keeps:        usable, under TCG (emulation: slow, and not isolated by hardware)"}},
		{"old qemu", func() *qemutest.Host {
			h := qemutest.SNPHost()
			h.Outputs["-version"], h.Outputs["-object help"] = "QEMU emulator version 8.2.2\n", qemutest.ObjectsOld
			return h
		}(), []string{"--keep-image", img}, []string{"snp vms:       no: QEMU 8.2.2 is too old for SEV-SNP"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			platformHost = tc.host
			var stdout, stderr bytes.Buffer
			if code := Main(append([]string{"platform", "info"}, tc.args...), nil, &stdout, &stderr); code != ExitOK {
				t.Fatalf("exit %d, stderr %q", code, stderr.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("output does not contain %q:\n%s", w, stdout.String())
				}
			}
			stdout.Reset()
			Main(append([]string{"platform", "info", "--json"}, tc.args...), nil, &stdout, &stderr)
			var got struct {
				VMKeeps struct {
					QEMU   string `json:"qemu"`
					KVM    bool   `json:"kvm"`
					Usable bool   `json:"usable"`
				} `json:"vm_keeps"`
			}
			if err := json.Unmarshal(stdout.Bytes(), &got); err != nil || got.VMKeeps.QEMU != tc.host.Path {
				t.Fatalf("--json: %v %+v", err, got)
			}
		})
	}
}
