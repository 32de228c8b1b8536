package qemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/keep/qemu/qemutest"
)

// fakeImage writes a keep image folder with placeholder files.
func fakeImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for f, b := range map[string]string{ImageKernel: "bzImage", ImageInitrd: "cpio", ImageCmdline: "console=ttyS0"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestInspect(t *testing.T) {
	img := fakeImage(t)
	fw := filepath.Join(t.TempDir(), "OVMF.fd")
	os.WriteFile(fw, []byte("firmware"), 0o644)
	noKernel := fakeImage(t)
	os.Remove(filepath.Join(noKernel, ImageKernel))
	for _, tc := range []struct {
		name           string
		host           *qemutest.Host
		image, fw      string
		usable         bool
		reason, imgWhy string
		fwWhy          string
	}{
		{"tcg with image", qemutest.ThisMachine(), img, "", true, "", "", "no firmware given"},
		{"no image", qemutest.ThisMachine(), "", fw, false, "no keep image given", "no keep image given", ""},
		{"image without kernel", qemutest.ThisMachine(), noKernel, "", false, "no kernel file", "no kernel file", "no firmware given"},
		{"missing firmware", qemutest.SNPHost(), img, fw + ".missing", true, "", "", "no such file"},
		{"no qemu", &qemutest.Host{Files: map[string]string{"/proc/cpuinfo": "flags : vmx\n"}}, img, fw, false, "qemu-system-x86_64 is not installed", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Inspect(tc.host, tc.image, tc.fw)
			if r.Usable != tc.usable || !strings.Contains(r.Reason, tc.reason) || (tc.reason == "") != (r.Reason == "") {
				t.Fatalf("usable %v reason %q, want %v %q", r.Usable, r.Reason, tc.usable, tc.reason)
			}
			if !strings.Contains(r.ImageReason, tc.imgWhy) || (tc.imgWhy == "") != (r.Image != "") {
				t.Fatalf("image %q, why %q, want why %q", r.Image, r.ImageReason, tc.imgWhy)
			}
			if !strings.Contains(r.FirmwareReason, tc.fwWhy) || (tc.fwWhy == "") != (r.Firmware != "") {
				t.Fatalf("firmware %q, why %q, want why %q", r.Firmware, r.FirmwareReason, tc.fwWhy)
			}
		})
	}
	if r := Inspect(qemutest.ThisMachine(), img, ""); !strings.Contains(r.Warning, "TCG") {
		t.Fatalf("no TCG warning on this machine: %q", r.Warning)
	}
}
