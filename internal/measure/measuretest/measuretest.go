// Package measuretest makes inputs for tests of the measurement packages
// and of 'castellan keep-image measure': a minimal bzImage with an EFI
// stub, so that no test needs a real kernel.
package measuretest

import "encoding/binary"

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
