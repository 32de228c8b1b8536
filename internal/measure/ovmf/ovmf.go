// Package ovmf reads the GUIDed table that OVMF and TDVF firmware images
// carry at their end (edk2 OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm).
// The table tells a VMM, and so anyone who computes a launch measurement,
// where the firmware keeps its SEV-ES reset vector, its SEV and TDX metadata
// and its SEV hashes table. The snp and tdx packages read their own entries
// from it; this package only finds them.
//
// Layout, read backwards from the end of the image: the last 32 bytes are the
// reset vector; before them the footer entry (u16 size of the whole table
// including the footer, then the footer GUID); before it the entries, each
// laid out as data, u16 size (data + 18), GUID, and read from the end.
package ovmf

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// GUID is a GUID in the mixed-endian byte order that EFI stores on disk.
type GUID [16]byte

// MustGUID parses "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" into EFI byte order;
// it panics on a malformed constant.
func MustGUID(s string) GUID {
	var g GUID
	var raw [16]byte
	j := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '-' {
			continue
		}
		if j >= 32 || i+1 >= len(s) {
			panic("ovmf: bad GUID " + s)
		}
		hi, lo := unhex(s[i]), unhex(s[i+1])
		if hi < 0 || lo < 0 {
			panic("ovmf: bad GUID " + s)
		}
		raw[j/2] = byte(hi<<4 | lo)
		j += 2
		i++
	}
	if j != 32 || len(s) != 36 {
		panic("ovmf: bad GUID " + s)
	}
	// The first three fields are little-endian, the last two as written.
	g[0], g[1], g[2], g[3] = raw[3], raw[2], raw[1], raw[0]
	g[4], g[5] = raw[5], raw[4]
	g[6], g[7] = raw[7], raw[6]
	copy(g[8:], raw[8:])
	return g
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// FooterGUID marks the table (OVMF_TABLE_FOOTER_GUID).
var FooterGUID = MustGUID("96b582de-1fb2-45f7-baea-a366c55a082d")

const (
	resetVectorSize = 32
	entryHeaderSize = 2 + 16
)

// ErrNoTable is returned when the image has no GUIDed footer table.
var ErrNoTable = errors.New("no OVMF GUIDed footer table at the end of the image (not an OVMF/TDVF build)")

// Table is the parsed footer table: each entry's data by GUID.
type Table map[GUID][]byte

// ParseTable finds and parses the footer table of a firmware image. The
// returned slices alias fw.
func ParseTable(fw []byte) (Table, error) {
	if len(fw) < resetVectorSize+entryHeaderSize {
		return nil, fmt.Errorf("image of %d bytes is too short for an OVMF footer table", len(fw))
	}
	end := len(fw) - resetVectorSize // the footer entry ends here
	var g GUID
	copy(g[:], fw[end-16:end])
	if g != FooterGUID {
		return nil, ErrNoTable
	}
	size := int(binary.LittleEndian.Uint16(fw[end-entryHeaderSize:]))
	if size < entryHeaderSize || size > end {
		return nil, fmt.Errorf("OVMF footer table size %d does not fit the %d-byte image", size, len(fw))
	}
	tbl := Table{}
	// Entries lie between start and the footer's own header.
	start := end - size
	pos := end - entryHeaderSize
	for pos-start >= entryHeaderSize {
		var eg GUID
		copy(eg[:], fw[pos-16:pos])
		n := int(binary.LittleEndian.Uint16(fw[pos-entryHeaderSize:]))
		if n < entryHeaderSize || n > pos-start {
			return nil, fmt.Errorf("OVMF footer table entry %x has size %d, outside the table", eg, n)
		}
		if _, dup := tbl[eg]; dup {
			return nil, fmt.Errorf("OVMF footer table lists entry %x twice", eg)
		}
		tbl[eg] = fw[pos-n : pos-entryHeaderSize]
		pos -= n
	}
	return tbl, nil
}

// Uint32 returns the little-endian u32 at the start of entry g's data.
func (t Table) Uint32(g GUID) (uint32, bool) {
	d, ok := t[g]
	if !ok || len(d) < 4 {
		return 0, false
	}
	return binary.LittleEndian.Uint32(d), true
}
