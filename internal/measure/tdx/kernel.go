package tdx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"sort"
)

// ErrNotBzImage is returned for a kernel without a Linux boot protocol
// header ("HdrS" at 0x202).
var ErrNotBzImage = errors.New("not a Linux bzImage (no \"HdrS\" boot header at 0x202)")

// ErrNotPE is returned for a kernel without a PE/COFF header (a bzImage
// built without the EFI stub, which TDVF cannot start).
var ErrNotPE = errors.New("not a PE/COFF image (a bzImage without CONFIG_EFI_STUB cannot be started by TDVF)")

// qemuACPIDataSize is the room QEMU's q35 machine keeps for ACPI tables
// below the top of low memory when it places the initrd.
const qemuACPIDataSize = 0x28000

// patchKernel applies the setup-header edits QEMU's x86_load_linux makes to
// a bzImage before it hands the kernel to the firmware over fw_cfg (with
// TDX, unlike SEV, the header is patched): loader type, heap end, command
// line address, and the initrd address and size, which depend on how much
// memory lies below 4 GiB.
func patchKernel(k []byte, initrdSize uint64, memBytes uint64) ([]byte, error) {
	if len(k) < 0x1000 {
		return nil, fmt.Errorf("kernel of %d bytes is too short", len(k))
	}
	if string(k[0x202:0x206]) != "HdrS" {
		return nil, ErrNotBzImage
	}
	kd := append([]byte(nil), k...)
	protocol := binary.LittleEndian.Uint16(kd[0x206:])
	realAddr, cmdlineAddr := uint32(0x10000), uint32(0x20000)
	if protocol < 0x200 || kd[0x211]&0x01 == 0 {
		realAddr, cmdlineAddr = 0x90000, 0x9a000
	}
	if protocol >= 0x200 {
		kd[0x210] = 0xb0 // type_of_loader: QEMU
	}
	if protocol >= 0x201 {
		kd[0x211] |= 0x80 // CAN_USE_HEAP
		binary.LittleEndian.PutUint32(kd[0x224:], cmdlineAddr-realAddr-0x200)
	}
	if protocol >= 0x202 {
		binary.LittleEndian.PutUint32(kd[0x228:], cmdlineAddr)
	} else {
		binary.LittleEndian.PutUint16(kd[0x20:], 0xa33f)
		binary.LittleEndian.PutUint16(kd[0x22:], uint16(cmdlineAddr-realAddr))
	}
	if initrdSize == 0 {
		return kd, nil
	}
	if protocol < 0x200 {
		return nil, fmt.Errorf("kernel boot protocol %#x is too old for an initrd", protocol)
	}
	initrdMax := uint64(0x37ffffff)
	switch {
	case protocol >= 0x20c && binary.LittleEndian.Uint16(kd[0x236:])&0x40 != 0:
		initrdMax = 0xffffffff // XLF_CAN_BE_LOADED_ABOVE_4G
	case protocol >= 0x203:
		if m := binary.LittleEndian.Uint32(kd[0x22c:]); m != 0 {
			initrdMax = uint64(m)
		}
	}
	// q35 keeps 2 GiB of low memory when the guest has at least 2.75 GiB,
	// else all of it up to 2.75 GiB.
	lowmem := uint64(0xb0000000)
	if memBytes >= 0xb0000000 {
		lowmem = 0x80000000
	}
	below4G := min(memBytes, lowmem)
	if below4G <= qemuACPIDataSize {
		return nil, fmt.Errorf("guest memory %d bytes is too small", memBytes)
	}
	if initrdMax >= below4G-qemuACPIDataSize {
		initrdMax = below4G - qemuACPIDataSize - 1
	}
	if initrdSize >= initrdMax {
		return nil, fmt.Errorf("initrd of %d bytes does not fit below %#x in %d bytes of guest memory", initrdSize, initrdMax, memBytes)
	}
	binary.LittleEndian.PutUint32(kd[0x218:], uint32((initrdMax-initrdSize)&^4095))
	binary.LittleEndian.PutUint32(kd[0x21c:], uint32(initrdSize))
	return kd, nil
}

// authenticode returns the Authenticode digest of a PE/COFF image
// (Microsoft PE/COFF specification, "Calculating the PE image hash"): the
// headers without the checksum and the certificate table entry, the
// sections in file order, the bytes after them that are not the
// certificate table, then zero padding of the file to 8 bytes, as measured
// for the kernel by TDVF (and replayed by Phala's dstack-mr).
func authenticode(d []byte, h hash.Hash) ([]byte, error) {
	le16 := func(off int) (int, bool) {
		if off < 0 || off+2 > len(d) {
			return 0, false
		}
		return int(binary.LittleEndian.Uint16(d[off:])), true
	}
	le32 := func(off int) (int, bool) {
		if off < 0 || off+4 > len(d) {
			return 0, false
		}
		return int(binary.LittleEndian.Uint32(d[off:])), true
	}
	if len(d) < 0x40 || d[0] != 'M' || d[1] != 'Z' {
		return nil, ErrNotPE
	}
	pe, _ := le32(0x3c)
	if pe > len(d)-24 || string(d[pe:pe+4]) != "PE\x00\x00" {
		return nil, ErrNotPE
	}
	coff := pe + 4
	nsect, _ := le16(coff + 2)
	optSize, _ := le16(coff + 16)
	opt := coff + 20
	magic, ok := le16(opt)
	if !ok {
		return nil, fmt.Errorf("%w: truncated optional header", ErrNotPE)
	}
	var dataDir int
	switch magic {
	case 0x10b:
		dataDir = opt + 96
	case 0x20b:
		dataDir = opt + 112
	default:
		return nil, fmt.Errorf("%w: optional header magic %#x", ErrNotPE, magic)
	}
	checksum := opt + 64
	certDir := dataDir + 4*8 // IMAGE_DIRECTORY_ENTRY_SECURITY
	sizeOfHeaders, ok := le32(opt + 60)
	if !ok || certDir+8 > opt+optSize || sizeOfHeaders < certDir+8 || sizeOfHeaders > len(d) {
		return nil, fmt.Errorf("%w: header sizes out of range", ErrNotPE)
	}
	h.Write(d[:checksum])
	h.Write(d[checksum+4 : certDir])
	h.Write(d[certDir+8 : sizeOfHeaders])
	type sect struct{ off, size int }
	var sects []sect
	for i := 0; i < nsect; i++ {
		s := opt + optSize + i*40
		size, ok1 := le32(s + 16)
		off, ok2 := le32(s + 20)
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("%w: truncated section table", ErrNotPE)
		}
		if size > 0 {
			sects = append(sects, sect{off, size})
		}
	}
	sort.SliceStable(sects, func(i, j int) bool { return sects[i].off < sects[j].off })
	hashed := sizeOfHeaders
	for _, s := range sects {
		if s.off < len(d) {
			h.Write(d[s.off:min(s.off+s.size, len(d))])
		}
		hashed += s.size
	}
	certAddr, _ := le32(certDir)
	certSize, _ := le32(certDir + 4)
	if certAddr > 0 && certSize > 0 && len(d) > hashed && len(d)-hashed > certSize {
		h.Write(d[hashed : len(d)-certSize])
	}
	if r := len(d) % 8; r != 0 {
		h.Write(make([]byte, 8-r))
	}
	return h.Sum(nil), nil
}
