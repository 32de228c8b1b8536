// Package measuretest makes inputs for tests of the measurement packages
// and of 'castellan keep-image measure': a minimal bzImage with an EFI
// stub, so that no test needs a real kernel, and an SEV firmware image laid
// out as edk2's AmdSev build, so that none needs a fetched one.
package measuretest

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"os"
	"strings"
	"testing"
)

// BzImage returns a 12 KiB bzImage with an EFI stub: MZ and PE32+ headers,
// the Linux setup header at 0x1f1 (boot protocol 2.15, loaded high, initrd
// allowed above 4 GiB) inside the PE headers as in a real bzImage, and one
// section whose bytes depend on seed.
func BzImage(seed byte) []byte {
	k := make([]byte, 0x3000)
	copy(k, "MZ")
	binary.LittleEndian.PutUint32(k[0x3c:], 0x40)
	copy(k[0x40:], "PE\x00\x00")
	coff := 0x44
	binary.LittleEndian.PutUint16(k[coff:], 0x8664)
	binary.LittleEndian.PutUint16(k[coff+2:], 1)     // sections
	binary.LittleEndian.PutUint16(k[coff+16:], 0xf0) // optional header size
	opt := coff + 20
	binary.LittleEndian.PutUint16(k[opt:], 0x20b)
	binary.LittleEndian.PutUint32(k[opt+60:], 0x1000) // SizeOfHeaders
	binary.LittleEndian.PutUint32(k[opt+108:], 16)    // NumberOfRvaAndSizes
	s := opt + 0xf0
	copy(k[s:], ".text")
	binary.LittleEndian.PutUint32(k[s+16:], 0x2000) // SizeOfRawData
	binary.LittleEndian.PutUint32(k[s+20:], 0x1000) // PointerToRawData
	copy(k[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(k[0x206:], 0x020f)
	k[0x211] = 0x01                                  // LOADED_HIGH
	binary.LittleEndian.PutUint16(k[0x236:], 0x0040) // XLF_CAN_BE_LOADED_ABOVE_4G
	for i := 0x1000; i < len(k); i++ {
		k[i] = byte(i*7) ^ seed
	}
	return k
}

// SEV metadata section types (edk2 OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm).
const (
	sevSecMem       = 1
	sevSecrets      = 2
	sevCPUID        = 3
	sevSVSMCAA      = 4
	sevKernelHashes = 0x10
)

// SEVFirmwareHashesGPA is where SEVFirmware(true)'s SEV hashes table lies: an
// offset inside its SNP_KERNEL_HASHES page, as QEMU allows.
const SEVFirmwareHashesGPA = 0x80f400

// SEVFirmware returns a 16 KiB firmware image laid out as edk2's
// OvmfPkg/AmdSev build lays out its end: page contents from a SHA-256 chain
// seeded with "castellan synthetic amdsev", then in the last page the SEV
// metadata ("ASEV", version 1) and the GUIDed footer table with the SEV-ES
// reset block (AP reset EIP 0xffffd0c4), the SEV metadata offset
// and, with kernelHashes, the SEV hashes table entry. Its sections are
// SNP_SEC_MEM, SNP_SECRETS, CPUID, SVSM_CAA, SNP_SEC_MEM and, with
// kernelHashes, SNP_KERNEL_HASHES (one page at 0x80f000), in that order.
// No test needs a real AmdSev build: the expected measurements of this image
// come from running virtee/sev-snp-measure on it (see the snp package's
// testdata/README.md).
func SEVFirmware(kernelHashes bool) []byte {
	const size = 0x4000
	fw := make([]byte, 0, size)
	seed := sha256.Sum256([]byte("castellan synthetic amdsev"))
	for len(fw) < size {
		fw = append(fw, seed[:]...)
		seed = sha256.Sum256(seed[:])
	}
	type section struct{ gpa, size, typ uint32 }
	secs := []section{
		{0x800000, 0x9000, sevSecMem},
		{0x809000, 0x1000, sevSecrets},
		{0x80a000, 0x1000, sevCPUID},
		{0x80b000, 0x1000, sevSVSMCAA},
		{0x80c000, 0x3000, sevSecMem},
	}
	if kernelHashes {
		secs = append(secs, section{0x80f000, 0x1000, sevKernelHashes})
	}
	// The SEV metadata 0x400 bytes before the end.
	const metaOff = 0x400
	meta := fw[size-metaOff:]
	copy(meta, "ASEV")
	binary.LittleEndian.PutUint32(meta[4:], uint32(16+12*len(secs)))
	binary.LittleEndian.PutUint32(meta[8:], 1)
	binary.LittleEndian.PutUint32(meta[12:], uint32(len(secs)))
	for i, s := range secs {
		d := meta[16+12*i:]
		binary.LittleEndian.PutUint32(d, s.gpa)
		binary.LittleEndian.PutUint32(d[4:], s.size)
		binary.LittleEndian.PutUint32(d[8:], s.typ)
	}
	// The footer table: entries (data, u16 size, GUID), the footer entry,
	// then the 32 bytes of the reset vector.
	var tbl []byte
	entry := func(guid string, data []byte) {
		tbl = append(tbl, data...)
		tbl = binary.LittleEndian.AppendUint16(tbl, uint16(len(data)+18))
		tbl = append(tbl, guidBytes(guid)...)
	}
	le32 := func(vs ...uint32) []byte {
		var b []byte
		for _, v := range vs {
			b = binary.LittleEndian.AppendUint32(b, v)
		}
		return b
	}
	entry("00f771de-1a7e-4fcb-890e-68c77e2fb44e", le32(0xffffd0c4)) // SEV-ES reset block: AP reset EIP
	if kernelHashes {
		entry("7255371f-3a3b-4b04-927b-1da6efa8d454", le32(SEVFirmwareHashesGPA, 0x400)) // SEV hashes table GPA and size
	}
	entry("dc886566-984a-4798-a75e-5585a7bf67cc", le32(metaOff)) // SEV metadata offset from the end
	tbl = binary.LittleEndian.AppendUint16(tbl, uint16(len(tbl)+18))
	tbl = append(tbl, guidBytes("96b582de-1fb2-45f7-baea-a366c55a082d")...)
	copy(fw[size-32-len(tbl):], tbl)
	return fw
}

// guidBytes returns a GUID in its mixed-endian byte order.
func guidBytes(s string) []byte {
	h, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(h) != 16 {
		panic("measuretest: bad GUID " + s)
	}
	return []byte{h[3], h[2], h[1], h[0], h[5], h[4], h[7], h[6], h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]}
}

// DebianOVMFPath is where Debian's ovmf package installs its OvmfPkgX64
// build (SEV and TDX metadata, no SNP_KERNEL_HASHES page).
const DebianOVMFPath = "/usr/share/ovmf/OVMF.fd"

// DebianOVMFSHA256 is the sha256 of that file in Debian 12's ovmf
// 2022.11-6+deb12u2, the build the expected values were computed for.
const DebianOVMFSHA256 = "7b456907dd0786d415999e801a1ac4637b8ed4d7cf5378cfc6edbe5e574dd773"

// DebianOVMF returns the bytes of Debian's OVMF.fd, or skips t when the
// package is not installed or another build is (scripts/test installs it).
func DebianOVMF(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(DebianOVMFPath)
	if err != nil {
		t.Skipf("%v (install Debian 12's ovmf package)", err)
	}
	if s := sha256.Sum256(b); hex.EncodeToString(s[:]) != DebianOVMFSHA256 {
		t.Skipf("%s is not the ovmf 2022.11-6+deb12u2 build of the vectors (sha256 %x)", DebianOVMFPath, s)
	}
	return b
}
