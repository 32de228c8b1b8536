package snp

import (
	"crypto/sha256"
	"encoding/binary"

	"github.com/castellan-dev/castellan/internal/measure/ovmf"
)

// The SEV hashes table QEMU writes for kernel-hashes=on
// (QEMU target/i386/sev.c, SevHashTable): a GUIDed header, then entries
// for the command line, the initrd and the kernel, padded to 16 bytes.
var (
	hashTableHeaderGUID = ovmf.MustGUID("9438d606-4f22-4cc9-b479-a793d411fd21")
	kernelEntryGUID     = ovmf.MustGUID("4de79437-abd2-427f-b835-d5b172d2045b")
	initrdEntryGUID     = ovmf.MustGUID("44baf731-3a2f-4bd7-9af1-41e29169781d")
	cmdlineEntryGUID    = ovmf.MustGUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
)

const (
	hashEntryLen = 16 + 2 + sha256.Size    // GUID, u16 length, SHA-256
	hashTableRaw = 16 + 2 + 3*hashEntryLen // header GUID, u16 length, 3 entries
	hashTableLen = (hashTableRaw + 15) &^ 15
)

// Hashes are the SHA-256 digests QEMU puts in the SEV hashes table for
// measured direct boot.
type Hashes struct {
	Kernel, Initrd, Cmdline [sha256.Size]byte
}

// NewHashes hashes the kernel and initrd bytes and the command line as QEMU
// does: the command line with its terminating NUL (an empty command line is
// the single NUL byte).
func NewHashes(kernel, initrd []byte, cmdline string) Hashes {
	return Hashes{
		Kernel:  sha256.Sum256(kernel),
		Initrd:  sha256.Sum256(initrd),
		Cmdline: sha256.Sum256(append([]byte(cmdline), 0)),
	}
}

// Table returns the padded SEV hashes table, byte for byte as QEMU lays it
// out.
func (h Hashes) Table() []byte {
	t := make([]byte, 0, hashTableLen)
	t = append(t, hashTableHeaderGUID[:]...)
	t = binary.LittleEndian.AppendUint16(t, hashTableRaw)
	for _, e := range []struct {
		g ovmf.GUID
		d [sha256.Size]byte
	}{{cmdlineEntryGUID, h.Cmdline}, {initrdEntryGUID, h.Initrd}, {kernelEntryGUID, h.Kernel}} {
		t = append(t, e.g[:]...)
		t = binary.LittleEndian.AppendUint16(t, hashEntryLen)
		t = append(t, e.d[:]...)
	}
	return append(t, make([]byte, hashTableLen-hashTableRaw)...)
}

// page returns the 4 KiB page holding the table at offset off.
func (h Hashes) page(off uint32) []byte {
	p := make([]byte, 4096)
	copy(p[off:], h.Table())
	return p
}
