package tdx

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/measure/measuretest"
)

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasSuffix(name, ".gz") {
		r, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if b, err = io.ReadAll(r); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// TestMRTDSynthetic checks MRTD against google/gce-tcb-verifier's value for
// the same image.
func TestMRTDSynthetic(t *testing.T) {
	fw, err := ParseFirmware(readFile(t, "tdvf_synthetic.bin"))
	if err != nil {
		t.Fatal(err)
	}
	const want = "8f95ae91040785735545e6d7f38131b643c565f7a74dbdadec07c696be7a078f584b7712141dd630b9701ef7e86a01f6"
	if got := MRTD(fw); hex.EncodeToString(got[:]) != want {
		t.Fatalf("MRTD\n got %x\nwant %s", got, want)
	}
}

// TestMRTDDebianOVMF checks MRTD of Debian 12's OVMF.fd against
// google/gce-tcb-verifier's value. scripts/test installs the package.
func TestMRTDDebianOVMF(t *testing.T) {
	const path = "/usr/share/ovmf/OVMF.fd"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("%v (install Debian 12's ovmf package)", err)
	}
	if s := sha256.Sum256(b); hex.EncodeToString(s[:]) != "7b456907dd0786d415999e801a1ac4637b8ed4d7cf5378cfc6edbe5e574dd773" {
		t.Skipf("%s is not the ovmf 2022.11-6+deb12u2 build of the vector (sha256 %x)", path, s)
	}
	fw, err := ParseFirmware(b)
	if err != nil {
		t.Fatal(err)
	}
	const want = "4c7206f0f483c524f12c366c711e9049030a8d47c471ee5aa9c4999a08de4057fb887fed0744d5631a212967fb231c47"
	if got := MRTD(fw); hex.EncodeToString(got[:]) != want {
		t.Fatalf("MRTD\n got %x\nwant %s", got, want)
	}
}

// TestMRTDCovers: the measured firmware bytes and every section's GPA change
// MRTD; the unmeasured CFV contents do not.
func TestMRTDCovers(t *testing.T) {
	good := readFile(t, "tdvf_synthetic.bin")
	fw, err := ParseFirmware(good)
	if err != nil {
		t.Fatal(err)
	}
	ref := MRTD(fw)
	mrtd := func(b []byte) Digest {
		f, err := ParseFirmware(b)
		if err != nil {
			t.Fatal(err)
		}
		return MRTD(f)
	}
	bfv := append([]byte(nil), good...)
	bfv[0x2345] ^= 1
	if mrtd(bfv) == ref {
		t.Error("a BFV byte does not change MRTD")
	}
	cfv := append([]byte(nil), good...)
	cfv[0x0123] ^= 1
	if mrtd(cfv) != ref {
		t.Error("a CFV byte (not MR_EXTEND) changes MRTD")
	}
}

func le32put(b []byte, off int, v uint32) { binary.LittleEndian.PutUint32(b[off:], v) }

func TestParseFirmwareBad(t *testing.T) {
	good := readFile(t, "tdvf_synthetic.bin")
	md := len(good) - 0x400 // the descriptor, see testdata/README.md
	sec := func(i int) int { return md + 16 + 32*i }
	mut := func(f func(b []byte)) []byte { c := append([]byte(nil), good...); f(c); return c }
	cases := []struct {
		name string
		img  []byte
		want string
	}{
		{"empty", nil, "too short"},
		{"zeros", make([]byte, 8192), "no TDX metadata"},
		{"truncated", good[:len(good)-4096], "no TDX metadata"},
		{"cut at the front", good[4096:], "outside the"},
		{"signature", mut(func(b []byte) { b[md] = 'X' }), `want "TDVF"`},
		{"version", mut(func(b []byte) { le32put(b, md+8, 2) }), "version 2"},
		{"no sections", mut(func(b []byte) { le32put(b, md+12, 0) }), "lists 0 sections"},
		{"length", mut(func(b []byte) { le32put(b, md+4, 17) }), "does not match"},
		{"unaligned GPA", mut(func(b []byte) { b[sec(0)+8] |= 1 }), "not whole pages"},
		{"raw outside", mut(func(b []byte) { le32put(b, sec(0), 0x3000) }), "outside the"},
		{"raw bigger than memory", mut(func(b []byte) { le32put(b, sec(1)+4, 0x2000) }), "larger than its memory"},
		{"unknown type", mut(func(b []byte) { le32put(b, sec(2)+24, 7) }), "unsupported section type"},
		{"page aug", mut(func(b []byte) { le32put(b, sec(0)+28, 3) }), "unsupported attributes"},
		{"hob with data", mut(func(b []byte) { le32put(b, sec(2)+4, 0x1000) }), "has data"},
		{"no hob", mut(func(b []byte) { le32put(b, sec(2)+24, 3) }), "0 TD_HOB sections"},
		{"overlap", mut(func(b []byte) { binary.LittleEndian.PutUint64(b[sec(3)+8:], 0x809000) }), "overlaps section 2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseFirmware(c.img)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
	if _, err := ParseFirmware(make([]byte, 8192)); !errors.Is(err, ErrNoTDXMetadata) {
		t.Fatal(err)
	}
}

// TestAuthenticode checks the PE image hash against pesign's for a real
// EFI binary, unsigned and signed (with a certificate table).
func TestAuthenticode(t *testing.T) {
	const want = "1b15a9a6c72b7aaaebbb32be5834d197e4c2cda2bb8a58f95b1bab8e9466474d"
	for _, n := range []string{"td-payload.efi.gz", "td-payload.signed.efi.gz"} {
		got, err := authenticode(readFile(t, n), sha256.New())
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		if hex.EncodeToString(got) != want {
			t.Errorf("%s: %x, want %s", n, got, want)
		}
	}
	if _, err := authenticode([]byte("not a PE file, just text that is long enough to have a DOS header...."), sha256.New()); !errors.Is(err, ErrNotPE) {
		t.Fatalf("text: %v", err)
	}
}

func bzImage() []byte { return measuretest.BzImage(0) }

func TestRTMR1(t *testing.T) {
	k := bzImage()
	in := Inputs{Kernel: k, Initrd: []byte("initrd"), Cmdline: "console=ttyS0", MemoryBytes: 1 << 30}
	r, err := RTMR1(in)
	if err != nil {
		t.Fatal(err)
	}
	at := func(mem uint64, initrd []byte, kernel []byte) Digest {
		d, err := RTMR1(Inputs{Kernel: kernel, Initrd: initrd, MemoryBytes: mem})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	other := append([]byte(nil), k...)
	other[0x2800] ^= 1
	switch {
	case at(1<<30, in.Initrd, other) == r:
		t.Error("the kernel's code does not change RTMR[1]")
	case at(2<<30, in.Initrd, k) == r:
		t.Error("the guest memory (initrd address in the patched header) does not change RTMR[1]")
	case at(1<<30, []byte("initrd!"), k) == r:
		t.Error("the initrd size does not change RTMR[1]")
	}
	// QEMU's q35 keeps 2 GiB below 4 GiB from 2.75 GiB up, and exactly 2
	// GiB gives the same initrd address (as dstack-mr's test).
	if at(2<<30, in.Initrd, k) != at(0xb0000000, in.Initrd, k) || at(0xb0000000, in.Initrd, k) != at(8<<30, in.Initrd, k) {
		t.Error("RTMR[1] differs between 2 GiB, 2.75 GiB and 8 GiB of guest memory")
	}
	if at(1<<30, in.Initrd, k) != r {
		t.Error("RTMR[1] is not deterministic")
	}
}

// TestFixedEvents: RTMR[1]'s fixed events have the digests a real TD's event
// log shows (testdata/README.md).
func TestFixedEvents(t *testing.T) {
	for text, want := range map[string]string{
		"Calling EFI Application from Boot Option": "77a0dab2312b4e1e57a84d865a21e5b2ee8d677a21012ada819d0a98988078d3d740f6346bfe0abaa938ca20439a8d71",
		"\x00\x00\x00\x00":                         "394341b7182cd227c5c6b07ef8000cdfd86136c4292b8e576573ad7ed9ae41019f5818b4b971c9effc60e1ad9f1289f0",
		"Exit Boot Services Invocation":            "214b0bef1379756011344877743fdc2a5382bac6e70362d624ccf3f654407c1b4badf7d8f9295dd3dabdef65b27677e0",
		"Exit Boot Services Returned with Success": "0a2e01c85deae718a530ad8c6d20a84009babe6c8989269e950d8cf440c6e997695e64d455c4174a652cd080f6230b74",
	} {
		if got := sum([]byte(text)); hex.EncodeToString(got[:]) != want {
			t.Errorf("%q: %x, want %s", text, got, want)
		}
	}
}

func TestRTMR2(t *testing.T) {
	// The command line event is UTF-16LE with a NUL, and " initrd=initrd"
	// when there is an initrd.
	utf16 := []byte{}
	for _, c := range "quiet initrd=initrd" {
		utf16 = append(utf16, byte(c), 0)
	}
	utf16 = append(utf16, 0, 0)
	var zero Digest
	ev := func(b []byte) Digest { return sha512.Sum384(b) }
	step := func(mr, e Digest) Digest { return sha512.Sum384(append(mr[:], e[:]...)) }
	want := step(step(zero, ev(utf16)), ev([]byte("x")))
	if got := RTMR2(Inputs{Cmdline: "quiet", Initrd: []byte("x")}); got != want {
		t.Fatalf("RTMR[2] %x, want %x", got, want)
	}
	if RTMR2(Inputs{Cmdline: "quiet", Initrd: []byte("y")}) == want || RTMR2(Inputs{Cmdline: "quiet ", Initrd: []byte("x")}) == want {
		t.Fatal("RTMR[2] does not cover the initrd or the command line")
	}
}

func TestKernelBad(t *testing.T) {
	k := bzImage()
	noHdr := append([]byte(nil), k...)
	copy(noHdr[0x202:], "XXXX")
	noPE := append([]byte(nil), k...)
	copy(noPE, "XX")
	cases := []struct {
		name string
		in   Inputs
		want error
		msg  string
	}{
		{"short", Inputs{Kernel: []byte("tiny"), MemoryBytes: 1 << 30}, nil, "too short"},
		{"not bzImage", Inputs{Kernel: noHdr, MemoryBytes: 1 << 30}, ErrNotBzImage, "bzImage"},
		{"no EFI stub", Inputs{Kernel: noPE, MemoryBytes: 1 << 30}, ErrNotPE, "PE/COFF"},
		{"initrd too big", Inputs{Kernel: k, Initrd: make([]byte, 1<<20), MemoryBytes: 1 << 20}, nil, "does not fit"},
		{"no memory", Inputs{Kernel: k, Initrd: []byte("x"), MemoryBytes: 4096}, nil, "too small"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := RTMR1(c.in)
			if err == nil || !strings.Contains(err.Error(), c.msg) || (c.want != nil && !errors.Is(err, c.want)) {
				t.Fatalf("error %v, want %v / %q", err, c.want, c.msg)
			}
		})
	}
}

func FuzzParseFirmware(f *testing.F) {
	f.Add(readFile(f, "tdvf_synthetic.bin"))
	f.Add(make([]byte, 4096))
	f.Fuzz(func(t *testing.T, b []byte) {
		fw, err := ParseFirmware(b)
		if err != nil {
			return
		}
		if len(fw.Sections) > maxSections {
			t.Fatal("too many sections")
		}
		// Bound the work: the fuzzer may find valid images with huge sections.
		total := uint64(0)
		for _, s := range fw.Sections {
			total += s.MemorySize
		}
		if total <= 1<<24 {
			MRTD(fw)
		}
	})
}

func FuzzKernel(f *testing.F) {
	f.Add(bzImage(), uint32(100), uint64(1<<30))
	f.Add(readFile(f, "td-payload.efi.gz")[:8192], uint32(0), uint64(1<<31))
	f.Fuzz(func(t *testing.T, k []byte, initrdSize uint32, mem uint64) {
		p, err := patchKernel(k, uint64(initrdSize), mem)
		if err != nil {
			return
		}
		if len(p) != len(k) {
			t.Fatal("patching changed the kernel's size")
		}
		_, _ = authenticode(p, sha256.New())
	})
}
