package tdx

import (
	"crypto/sha512"
	"encoding/binary"
)

// Digest is a 48-byte TDX measurement register (SHA-384).
type Digest [sha512.Size384]byte

const mrExtendChunk = 256

// MRTD returns the build-time measurement of a TD started with fw: for each
// section in metadata order and each of its pages, TDH.MEM.PAGE.ADD extends
// the digest with a 128-byte buffer "MEM.PAGE.ADD" + GPA, then, for
// MR_EXTEND sections, TDH.MR.EXTEND with "MR.EXTEND" + GPA and the 256-byte
// chunk for each chunk of the page (Intel TDX module specification, "MRTD:
// build-time measurement register"). KVM adds and extends page by page
// (KVM_TDX_INIT_MEM_REGION), so the two interleave.
func MRTD(fw *Firmware) Digest {
	h := sha512.New384()
	var buf [128]byte
	record := func(op string, gpa uint64) {
		clear(buf[:])
		copy(buf[:], op)
		binary.LittleEndian.PutUint64(buf[16:], gpa)
		h.Write(buf[:])
	}
	for _, s := range fw.Sections {
		for page := uint64(0); page < s.MemorySize; page += pageSize {
			gpa := s.MemoryAddress + page
			record("MEM.PAGE.ADD", gpa)
			if s.Attributes&AttrMRExtend == 0 {
				continue
			}
			for c := uint64(0); c < pageSize; c += mrExtendChunk {
				record("MR.EXTEND", gpa+c)
				off := uint64(s.DataOffset) + page + c
				h.Write(fw.Data[off : off+mrExtendChunk])
			}
		}
	}
	var d Digest
	h.Sum(d[:0])
	return d
}
