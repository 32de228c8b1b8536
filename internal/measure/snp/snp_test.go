package snp

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type vector struct {
	Name          string `json:"name"`
	Firmware      string `json:"firmware"`
	VCPUs         int    `json:"vcpus"`
	VCPUType      string `json:"vcpu_type"`
	NoKernel      bool   `json:"no_kernel"`
	Kernel        string `json:"kernel"`
	Initrd        string `json:"initrd"`
	Cmdline       string `json:"cmdline"`
	GuestFeatures uint64 `json:"guest_features"`
	Want          string `json:"want"`
	WantError     string `json:"want_error"`
}

func loadVectors(t *testing.T) (snp, seves []vector) {
	t.Helper()
	b, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ SNP, SEVES []vector }
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.SNP) < 10 || len(v.SEVES) < 3 {
		t.Fatalf("vectors.json has %d SNP and %d SEV-ES vectors", len(v.SNP), len(v.SEVES))
	}
	return v.SNP, v.SEVES
}

func firmware(t testing.TB, name string) *Firmware {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	fw, err := ParseFirmware(b)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return fw
}

func (v vector) hashes() *Hashes {
	if v.NoKernel {
		return nil
	}
	h := NewHashes([]byte(v.Kernel), []byte(v.Initrd), v.Cmdline)
	return &h
}

// runVectors checks measure's hex output for each vector, or its error.
func runVectors(t *testing.T, vs []vector, measure func(fw *Firmware, h *Hashes, v vector, sig uint32) ([]byte, error)) {
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			sig, err := VCPUSignature(v.VCPUType)
			if err != nil {
				t.Fatal(err)
			}
			got, err := measure(firmware(t, v.Firmware), v.hashes(), v, sig)
			if v.WantError != "" {
				if err == nil || !strings.Contains(err.Error(), v.WantError) {
					t.Fatalf("error %v, want one containing %q", err, v.WantError)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got) != v.Want {
				t.Fatalf("measurement\n got %x\nwant %s", got, v.Want)
			}
		})
	}
}

// TestReferenceVectors checks every SEV-SNP launch measurement of
// virtee/sev-snp-measure's tests (and its outputs for other vCPU types).
func TestReferenceVectors(t *testing.T) {
	vs, _ := loadVectors(t)
	runVectors(t, vs, func(fw *Firmware, h *Hashes, v vector, sig uint32) ([]byte, error) {
		d, err := Measure(fw, h, Params{VCPUs: v.VCPUs, VCPUSig: sig, GuestFeatures: v.GuestFeatures})
		return d[:], err
	})
}

func TestReferenceVectorsSEVES(t *testing.T) {
	_, vs := loadVectors(t)
	runVectors(t, vs, func(fw *Firmware, h *Hashes, v vector, sig uint32) ([]byte, error) {
		d, err := MeasureSEVES(fw, h, v.VCPUs, sig)
		return d[:], err
	})
}

// TestInputsChangeMeasurement: each input the measurement claims to cover
// changes it.
func TestInputsChangeMeasurement(t *testing.T) {
	fw := firmware(t, "ovmf_AmdSev_suffix.bin")
	base := NewHashes([]byte("kernel"), []byte("initrd"), "console=ttyS0")
	sig, _ := VCPUSignature(DefaultVCPUType)
	p := Params{VCPUs: 2, VCPUSig: sig, GuestFeatures: DefaultGuestFeatures}
	ref, err := Measure(fw, &base, p)
	if err != nil {
		t.Fatal(err)
	}
	milan, _ := VCPUSignature("EPYC-Milan")
	other := func(h Hashes, p Params) Digest {
		d, err := Measure(fw, &h, p)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	tampered := append([]byte(nil), fw.Data...)
	tampered[100] ^= 1
	fw2, err := ParseFirmware(tampered)
	if err != nil {
		t.Fatal(err)
	}
	d2, _ := Measure(fw2, &base, p)
	cases := map[string]Digest{
		"kernel":   other(NewHashes([]byte("kernel!"), []byte("initrd"), "console=ttyS0"), p),
		"initrd":   other(NewHashes([]byte("kernel"), []byte("initrd!"), "console=ttyS0"), p),
		"cmdline":  other(NewHashes([]byte("kernel"), []byte("initrd"), "console=ttyS0 "), p),
		"vcpus":    other(base, Params{VCPUs: 3, VCPUSig: sig, GuestFeatures: 1}),
		"vcpu":     other(base, Params{VCPUs: 2, VCPUSig: milan, GuestFeatures: 1}),
		"features": other(base, Params{VCPUs: 2, VCPUSig: sig, GuestFeatures: 0x21}),
		"firmware": d2,
	}
	for name, d := range cases {
		if d == ref {
			t.Errorf("changing the %s leaves the measurement unchanged", name)
		}
	}
}

func TestHashesTableLayout(t *testing.T) {
	h := NewHashes(nil, nil, "")
	tb := h.Table()
	if len(tb) != 0xb0 { // QEMU: sizeof(PaddedSevHashTable)
		t.Fatalf("table is %#x bytes, want 0xb0", len(tb))
	}
	if got := binary.LittleEndian.Uint16(tb[16:]); got != 0xa8 {
		t.Fatalf("table length field %#x, want 0xa8", got)
	}
	// The command line entry hashes the NUL: SHA-256("\x00").
	if got := hex.EncodeToString(tb[18+18 : 18+50]); got != "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d" {
		t.Fatalf("cmdline hash %s", got)
	}
	if hex.EncodeToString(tb[0:16]) != "06d63894224fc94cb479a793d411fd21" {
		t.Fatalf("header GUID bytes %x", tb[0:16])
	}
}

func TestSignature(t *testing.T) {
	for _, c := range []struct{ f, m, s, want uint32 }{{14, 1, 2, 0x0e12}, {23, 1, 2, 0x800f12}, {25, 1, 1, 0xa00f11}, {25, 17, 0, 0xa10f10}} {
		if got := Signature(c.f, c.m, c.s); got != c.want {
			t.Errorf("Signature(%d,%d,%d) = %#x, want %#x", c.f, c.m, c.s, got, c.want)
		}
	}
	if _, err := VCPUSignature("Skylake-Server"); err == nil || !strings.Contains(err.Error(), "unknown vCPU type") {
		t.Fatalf("error %v", err)
	}
}

func TestParams(t *testing.T) {
	fw := firmware(t, "ovmf_AmdSev_suffix.bin")
	for _, n := range []int{0, -1, MaxVCPUs + 1} {
		if _, err := Measure(fw, nil, Params{VCPUs: n}); err == nil {
			t.Errorf("%d vCPUs accepted", n)
		}
	}
}

// TestBadFirmware: truncated, foreign and tampered images are refused with
// a message that says what is wrong.
func TestBadFirmware(t *testing.T) {
	good, err := os.ReadFile("testdata/ovmf_AmdSev_suffix.bin")
	if err != nil {
		t.Fatal(err)
	}
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	metaOff := func(b []byte) int {
		for i := len(b) - 4; i >= 0; i-- {
			if string(b[i:i+4]) == "ASEV" {
				return i
			}
		}
		t.Fatal("no ASEV in fixture")
		return 0
	}
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "not a whole number of 4 KiB pages"},
		{"truncated", good[:len(good)-100], "not a whole number of 4 KiB pages"},
		{"zeros", make([]byte, 8192), "no SEV metadata"},
		{"no footer", mut(func(b []byte) []byte { b[len(b)-33] ^= 0xff; return b }), "no SEV metadata"},
		{"bad signature", mut(func(b []byte) []byte { b[metaOff(b)] = 'X'; return b }), `want "ASEV"`},
		{"bad version", mut(func(b []byte) []byte { b[metaOff(b)+8] = 2; return b }), "version 2"},
		{"huge count", mut(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[metaOff(b)+12:], 1<<30); return b }), "does not hold"},
		{"unknown section", mut(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[metaOff(b)+16+8:], 9); return b }), "unknown type 0x9"},
		{"unaligned section", mut(func(b []byte) []byte { b[metaOff(b)+16] |= 1; return b }), "not whole pages"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseFirmware(c.data)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
	if _, err := ParseFirmware(make([]byte, 8192)); !errors.Is(err, ErrNoSEVMetadata) {
		t.Fatalf("zeros: %v is not ErrNoSEVMetadata", err)
	}
}

func FuzzParseFirmware(f *testing.F) {
	for _, n := range []string{"ovmf_AmdSev_suffix.bin", "ovmf_OvmfX64_suffix.bin"} {
		b, err := os.ReadFile(filepath.Join("testdata", n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(make([]byte, 4096))
	f.Fuzz(func(t *testing.T, b []byte) {
		fw, err := ParseFirmware(b)
		if err != nil {
			return
		}
		h := NewHashes(nil, nil, "")
		// Whatever parses must measure without panicking.
		_, _ = Measure(fw, &h, Params{VCPUs: 2, VCPUSig: 0x800f12, GuestFeatures: 1})
		_, _ = MeasureSEVES(fw, &h, 2, 0x800f12)
	})
}
