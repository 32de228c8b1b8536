package tdx

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/castellan-dev/castellan/internal/measure/ovmf"
)

// tdxMetadataOffsetGUID names the footer table entry holding the offset,
// from the end of the image, of the TDVF metadata descriptor (TDVF design
// guide, "TDVF metadata").
var tdxMetadataOffsetGUID = ovmf.MustGUID("e47a6535-984a-4798-865e-4685a7bf8ec2")

// SectionType is the type of one TDVF metadata section.
type SectionType uint32

// The section types QEMU's TDVF loader accepts (hw/i386/tdvf.c).
const (
	SectionBFV     SectionType = 0 // boot firmware volume, copied from the image
	SectionCFV     SectionType = 1 // configuration firmware volume (variables), copied
	SectionTDHOB   SectionType = 2 // TD hand-off block, zero memory the VMM fills
	SectionTempMem SectionType = 3 // temporary memory, zero
)

func (t SectionType) String() string {
	switch t {
	case SectionBFV:
		return "BFV"
	case SectionCFV:
		return "CFV"
	case SectionTDHOB:
		return "TD_HOB"
	case SectionTempMem:
		return "TempMem"
	}
	return fmt.Sprintf("type %d", uint32(t))
}

// AttrMRExtend marks a section whose contents TDH.MR.EXTEND measures.
const AttrMRExtend = 0x1

// Section is one TDVF metadata section (TDVF_SECTION).
type Section struct {
	DataOffset    uint32 // in the image
	RawDataSize   uint32
	MemoryAddress uint64 // GPA
	MemorySize    uint64
	Type          SectionType
	Attributes    uint32
}

// Firmware is a parsed TDVF image (an OVMF build with TDX support, given to
// QEMU with -bios).
type Firmware struct {
	Data     []byte
	Sections []Section
}

// ErrNoTDXMetadata is returned for firmware without TDVF metadata.
var ErrNoTDXMetadata = errors.New("firmware has no TDX metadata (not a TDVF/OVMF build with Intel TDX support)")

const (
	pageSize       = 4096
	descriptorLen  = 16
	sectionLen     = 32
	maxSections    = 64
	maxSectionSize = 1 << 32 // also the bound of all sections together
)

// ParseFirmware reads the TDVF metadata of a firmware image and checks each
// section the way QEMU does before it builds the TD: page-aligned GPA and
// size, raw data inside the image, BFV/CFV with data, TD_HOB/TempMem
// without, exactly one TD_HOB, no overlapping sections, and no attribute
// other than MR_EXTEND (a PAGE_AUG section would be added differently).
func ParseFirmware(data []byte) (*Firmware, error) {
	tbl, err := ovmf.ParseTable(data)
	if err != nil {
		if errors.Is(err, ovmf.ErrNoTable) {
			return nil, fmt.Errorf("%w: %w", ErrNoTDXMetadata, err)
		}
		return nil, err
	}
	off, ok := tbl.Uint32(tdxMetadataOffsetGUID)
	if !ok {
		return nil, ErrNoTDXMetadata
	}
	if off < descriptorLen || uint64(off) > uint64(len(data)) {
		return nil, fmt.Errorf("TDX metadata offset %#x is outside the %d-byte image", off, len(data))
	}
	start := len(data) - int(off)
	d := data[start:]
	if string(d[0:4]) != "TDVF" {
		return nil, fmt.Errorf("TDX metadata at offset %#x has signature %q, want \"TDVF\"", start, d[0:4])
	}
	length := binary.LittleEndian.Uint32(d[4:])
	version := binary.LittleEndian.Uint32(d[8:])
	n := binary.LittleEndian.Uint32(d[12:])
	if version != 1 {
		return nil, fmt.Errorf("TDX metadata version %d, want 1", version)
	}
	if n == 0 || n > maxSections {
		return nil, fmt.Errorf("TDX metadata lists %d sections, want 1 to %d", n, maxSections)
	}
	if uint64(length) != descriptorLen+uint64(n)*sectionLen || uint64(length) > uint64(off) {
		return nil, fmt.Errorf("TDX metadata length %d does not match its %d sections or overruns the image", length, n)
	}
	fw := &Firmware{Data: data}
	hobs := 0
	total := uint64(0)
	for i := uint32(0); i < n; i++ {
		e := d[descriptorLen+i*sectionLen:]
		s := Section{
			DataOffset:    binary.LittleEndian.Uint32(e),
			RawDataSize:   binary.LittleEndian.Uint32(e[4:]),
			MemoryAddress: binary.LittleEndian.Uint64(e[8:]),
			MemorySize:    binary.LittleEndian.Uint64(e[16:]),
			Type:          SectionType(binary.LittleEndian.Uint32(e[24:])),
			Attributes:    binary.LittleEndian.Uint32(e[28:]),
		}
		if err := s.check(len(data)); err != nil {
			return nil, fmt.Errorf("TDX metadata section %d (%v): %w", i, s.Type, err)
		}
		if s.Type == SectionTDHOB {
			hobs++
		}
		if total += s.MemorySize; total > maxSectionSize {
			return nil, fmt.Errorf("TDX metadata sections add up to more than %d bytes of guest memory", uint64(maxSectionSize))
		}
		for j, o := range fw.Sections {
			if s.MemoryAddress < o.MemoryAddress+o.MemorySize && o.MemoryAddress < s.MemoryAddress+s.MemorySize {
				return nil, fmt.Errorf("TDX metadata section %d (%v) overlaps section %d (%v) in guest memory", i, s.Type, j, o.Type)
			}
		}
		fw.Sections = append(fw.Sections, s)
	}
	if hobs != 1 {
		return nil, fmt.Errorf("TDX metadata has %d TD_HOB sections, want 1", hobs)
	}
	return fw, nil
}

func (s Section) check(imageLen int) error {
	if s.Attributes&^AttrMRExtend != 0 {
		return fmt.Errorf("unsupported attributes %#x", s.Attributes)
	}
	if s.MemoryAddress%pageSize != 0 || s.MemorySize%pageSize != 0 || s.MemorySize == 0 {
		return fmt.Errorf("memory at %#x size %#x is not whole pages", s.MemoryAddress, s.MemorySize)
	}
	if s.MemorySize > maxSectionSize || s.MemoryAddress > 1<<52 {
		return fmt.Errorf("memory at %#x size %#x is out of range", s.MemoryAddress, s.MemorySize)
	}
	if uint64(s.RawDataSize) > s.MemorySize {
		return fmt.Errorf("raw data size %#x is larger than its memory %#x", s.RawDataSize, s.MemorySize)
	}
	if uint64(s.DataOffset)+uint64(s.RawDataSize) > uint64(imageLen) {
		return fmt.Errorf("raw data at %#x size %#x is outside the %d-byte image", s.DataOffset, s.RawDataSize, imageLen)
	}
	switch s.Type {
	case SectionBFV, SectionCFV:
		if s.RawDataSize == 0 {
			return errors.New("has no data")
		}
		if s.Attributes&AttrMRExtend != 0 && uint64(s.RawDataSize) != s.MemorySize {
			return fmt.Errorf("measured, but raw data size %#x differs from its memory %#x", s.RawDataSize, s.MemorySize)
		}
	case SectionTDHOB, SectionTempMem:
		if s.RawDataSize != 0 {
			return errors.New("has data, but is memory the VMM provides")
		}
		if s.Attributes&AttrMRExtend != 0 {
			return errors.New("is memory the VMM provides, but is marked MR_EXTEND")
		}
	default:
		return errors.New("unsupported section type")
	}
	return nil
}
