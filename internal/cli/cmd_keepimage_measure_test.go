package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/attest/policy"
	"github.com/castellan-dev/castellan/internal/measure/measuretest"
)

// measureImage writes a keep image folder with a fake bzImage.
func measureImage(t *testing.T, cmdline string) string {
	t.Helper()
	dir := t.TempDir()
	for name, b := range map[string][]byte{
		"kernel":  measuretest.BzImage(1),
		"initrd":  []byte("initrd bytes"),
		"cmdline": []byte(cmdline),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func runMeasure(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = Main(append([]string{"keep-image", "measure"}, args...), strings.NewReader(""), &o, &e)
	return o.String(), e.String(), code
}

const (
	snpFirmware = "../measure/snp/testdata/ovmf_AmdSev_suffix.bin"
	snpNoHashes = "../measure/snp/testdata/ovmf_OvmfX64_suffix.bin"
	tdxFirmware = "../measure/tdx/testdata/tdvf_synthetic.bin"
)

// TestKeepImageMeasureSNP: the printed entry loads as a measurement
// database, and the launch parameters change it.
func TestKeepImageMeasureSNP(t *testing.T) {
	dir := measureImage(t, "console=ttyS0 panic=-1")
	out, errOut, code := runMeasure(t, dir, "--platform", "snp", "--firmware", snpFirmware)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !regexp.MustCompile(`name = 'keep image sha256:[0-9a-f]{12}, firmware sha256:8f765dfabc12, snp, 1 vCPU EPYC-v4, features 0x1'`).MatchString(out) {
		t.Fatalf("output:\n%s", out)
	}
	pf, mf := filepath.Join(t.TempDir(), "policy.toml"), filepath.Join(t.TempDir(), "measurements.toml")
	os.WriteFile(pf, []byte(`workloads = ["any"]`), 0o644)
	os.WriteFile(mf, []byte(out), 0o644)
	snap, err := policy.Load(pf, mf)
	if err != nil {
		t.Fatalf("output does not load as a measurement database: %v\n%s", err, out)
	}
	if len(snap.Measurements["snp"]) != 1 {
		t.Fatalf("measurements %v", snap.Measurements)
	}
	value := func(args ...string) string {
		o, e, c := runMeasure(t, append([]string{dir, "--platform", "snp", "--firmware", snpFirmware, "--json"}, args...)...)
		if c != 0 {
			t.Fatalf("%v: exit %d: %s", args, c, e)
		}
		var m measureOutput
		if err := json.Unmarshal([]byte(o), &m); err != nil {
			t.Fatal(err)
		}
		if m.Policy != "0x30000" || m.Image.Dir != dir {
			t.Fatalf("JSON %+v", m)
		}
		return m.Measurement
	}
	def := value()
	if !strings.Contains(out, def) {
		t.Fatalf("TOML and JSON disagree: %s vs\n%s", def, out)
	}
	if value("--vcpus", "1", "--vcpu-type", "EPYC-v4", "--guest-features", "1") != def {
		t.Fatal("explicit defaults change the measurement")
	}
	for _, args := range [][]string{{"--vcpus", "2"}, {"--vcpu-type", "EPYC-Milan"}, {"--guest-features", "0x21"}} {
		if value(args...) == def {
			t.Errorf("%v does not change the measurement", args)
		}
	}
	os.WriteFile(filepath.Join(dir, "cmdline"), []byte("console=ttyS0 panic=0"), 0o644)
	if value() == def {
		t.Error("the command line does not change the measurement")
	}
}

func TestKeepImageMeasureTDX(t *testing.T) {
	dir := measureImage(t, "console=ttyS0")
	out, errOut, code := runMeasure(t, dir, "--platform", "tdx", "--firmware", tdxFirmware)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, re := range []string{
		`platform = 'tdx'`,
		`value = '8f95ae91040785735545e6d7f38131b643c565f7a74dbdadec07c696be7a078f584b7712141dd630b9701ef7e86a01f6'`,
		`rtmr1 = '[0-9a-f]{96}'`, `rtmr2 = '[0-9a-f]{96}'`,
		`name = 'keep image sha256:[0-9a-f]{12}, firmware sha256:915d7bebd3a3, tdx, 512 MiB'`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("output lacks %s:\n%s", re, out)
		}
	}
	o2, _, _ := runMeasure(t, dir, "--platform", "tdx", "--firmware", tdxFirmware, "--memory", "4GiB")
	if o2 == out {
		t.Error("--memory does not change RTMR[1]")
	}
}

// TestKeepImageMeasureBad: each bad input gives one line naming it.
func TestKeepImageMeasureBad(t *testing.T) {
	good := measureImage(t, "quiet")
	notBz := measureImage(t, "quiet")
	os.WriteFile(filepath.Join(notBz, "kernel"), bytes.Repeat([]byte("x"), 8192), 0o644)
	noPE := measureImage(t, "quiet")
	k := measuretest.BzImage(1)
	copy(k, "XX")
	os.WriteFile(filepath.Join(noPE, "kernel"), k, 0o644)
	newline := measureImage(t, "quiet\n")
	noInitrd := measureImage(t, "quiet")
	os.Remove(filepath.Join(noInitrd, "initrd"))
	tmp := t.TempDir()
	truncated := filepath.Join(tmp, "truncated.fd")
	b, _ := os.ReadFile(snpFirmware)
	os.WriteFile(truncated, b[:3000], 0o644)
	zeros := filepath.Join(tmp, "zeros.fd")
	os.WriteFile(zeros, make([]byte, 8192), 0o644)
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no platform", []string{good, "--firmware", snpFirmware}, 2, "--platform snp or tdx is required"},
		{"bad platform", []string{good, "--platform", "sgx", "--firmware", snpFirmware}, 2, `--platform "sgx"`},
		{"no firmware", []string{good, "--platform", "snp"}, 2, "--firmware is required"},
		{"no folder", []string{"--platform", "snp", "--firmware", snpFirmware}, 2, "want one keep image folder"},
		{"memory with snp", []string{good, "--platform", "snp", "--firmware", snpFirmware, "--memory", "1GiB"}, 2, "--memory applies to --platform tdx only"},
		{"vcpus with tdx", []string{good, "--platform", "tdx", "--firmware", tdxFirmware, "--vcpus", "2"}, 2, "--vcpus applies to --platform snp only"},
		{"missing folder", []string{filepath.Join(tmp, "nope"), "--platform", "snp", "--firmware", snpFirmware}, 1, "nope: no such keep image folder"},
		{"missing initrd", []string{noInitrd, "--platform", "snp", "--firmware", snpFirmware}, 1, "initrd: no such file"},
		{"missing firmware", []string{good, "--platform", "snp", "--firmware", filepath.Join(tmp, "OVMF.fd")}, 1, "OVMF.fd: no such file"},
		{"firmware is a folder", []string{good, "--platform", "snp", "--firmware", tmp}, 1, "is a directory, not a file"},
		{"kernel not bzImage", []string{notBz, "--platform", "snp", "--firmware", snpFirmware}, 1, "kernel: not a Linux bzImage"},
		{"kernel without EFI stub", []string{noPE, "--platform", "tdx", "--firmware", tdxFirmware}, 1, "kernel: not a PE/COFF image"},
		{"cmdline newline", []string{newline, "--platform", "snp", "--firmware", snpFirmware}, 1, "cmdline: holds a NUL or line break"},
		{"truncated firmware", []string{good, "--platform", "snp", "--firmware", truncated}, 1, "truncated.fd: firmware size 3000 is not a whole number of 4 KiB pages"},
		{"no SEV metadata", []string{good, "--platform", "snp", "--firmware", zeros}, 1, "zeros.fd: firmware has no SEV metadata"},
		{"no TDX metadata", []string{good, "--platform", "tdx", "--firmware", zeros}, 1, "zeros.fd: firmware has no TDX metadata"},
		// The last 4 KiB of an OVMF build: TDX metadata whose sections lie
		// outside what is left.
		{"truncated TDVF", []string{good, "--platform", "tdx", "--firmware", snpFirmware}, 1, "ovmf_AmdSev_suffix.bin: TDX metadata section 0 (BFV): raw data at 0x84000 size 0x37c000 is outside the 4096-byte image"},
		{"no kernel hashes", []string{good, "--platform", "snp", "--firmware", snpNoHashes}, 1, "ovmf_OvmfX64_suffix.bin: firmware has no SNP_KERNEL_HASHES section"},
		{"unknown vcpu type", []string{good, "--platform", "snp", "--firmware", snpFirmware, "--vcpu-type", "Skylake"}, 1, `unknown vCPU type "Skylake"`},
		{"zero vcpus", []string{good, "--platform", "snp", "--firmware", snpFirmware, "--vcpus", "0"}, 1, "--vcpus 0"},
		{"features without SNP", []string{good, "--platform", "snp", "--firmware", snpFirmware, "--guest-features", "0x20"}, 1, "SNPActive"},
		{"bad memory", []string{good, "--platform", "tdx", "--firmware", tdxFirmware, "--memory", "lots"}, 1, `--memory "lots"`},
		{"memory too small", []string{good, "--platform", "tdx", "--firmware", tdxFirmware, "--memory", "0MiB"}, 1, `--memory "0MiB"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := runMeasure(t, c.args...)
			if code != c.code || !strings.Contains(errOut, c.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, errOut, c.code, c.want)
			}
			if out != "" {
				t.Fatalf("stdout %q on error", out)
			}
			if lines := strings.Count(errOut, "\n"); lines != 1 || !strings.HasPrefix(errOut, "castellan: error: ") {
				t.Fatalf("stderr is not one error line: %q", errOut)
			}
		})
	}
}
