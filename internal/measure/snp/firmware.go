package snp

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/castellan-dev/castellan/internal/measure/ovmf"
)

// Footer table entries SEV guests need (edk2 OvmfPkg/ResetVector).
var (
	sevESResetBlockGUID  = ovmf.MustGUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
	sevMetadataGUID      = ovmf.MustGUID("dc886566-984a-4798-a75e-5585a7bf67cc")
	sevHashTableRVGUID   = ovmf.MustGUID("7255371f-3a3b-4b04-927b-1da6efa8d454")
	fourGiB              = uint64(1) << 32
	sevMetadataHeaderLen = 16
	sevMetadataDescLen   = 12
)

// SectionType is the type of one SEV metadata section
// (edk2 OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm).
type SectionType uint32

// The section types OVMF declares, and how the launch measures each.
const (
	SectionSNPSecMem       SectionType = 1    // zero pages, measured as PAGE_TYPE_ZERO
	SectionSNPSecrets      SectionType = 2    // the secrets page (PAGE_TYPE_SECRETS)
	SectionCPUID           SectionType = 3    // the CPUID page (PAGE_TYPE_CPUID)
	SectionSVSMCAA         SectionType = 4    // SVSM calling area, zero pages
	SectionSNPKernelHashes SectionType = 0x10 // the page holding the SEV hashes table
)

func (t SectionType) String() string {
	switch t {
	case SectionSNPSecMem:
		return "SNP_SEC_MEM"
	case SectionSNPSecrets:
		return "SNP_SECRETS"
	case SectionCPUID:
		return "CPUID"
	case SectionSVSMCAA:
		return "SVSM_CAA"
	case SectionSNPKernelHashes:
		return "SNP_KERNEL_HASHES"
	}
	return fmt.Sprintf("type %#x", uint32(t))
}

// Section is one SEV metadata section: guest memory the VMM prepares before
// launch.
type Section struct {
	GPA  uint32
	Size uint32
	Type SectionType
}

// Firmware is a parsed OVMF image (the AmdSev build for measured direct
// boot). QEMU maps it so that it ends at 4 GiB.
type Firmware struct {
	Data []byte
	// GPA is where the image starts in guest memory (4 GiB - size).
	GPA uint64
	// ResetEIP is the SEV-ES AP reset vector; 0 when the image has none.
	ResetEIP uint32
	// HashesTableGPA is where OVMF expects the SEV hashes table; 0 when the
	// image has none.
	HashesTableGPA uint32
	Sections       []Section
}

// ErrNoSEVMetadata is returned for firmware without SEV metadata: not an
// SEV-capable OVMF build.
var ErrNoSEVMetadata = errors.New("firmware has no SEV metadata (not an SEV-SNP capable OVMF build, e.g. edk2's OvmfPkg/AmdSev)")

// ParseFirmware reads the footer table and the SEV metadata of an OVMF
// image. Every section must lie in 32-bit guest memory, be page aligned and
// not overlap the firmware image itself.
func ParseFirmware(data []byte) (*Firmware, error) {
	if len(data) == 0 || len(data)%4096 != 0 {
		return nil, fmt.Errorf("firmware size %d is not a whole number of 4 KiB pages (truncated?)", len(data))
	}
	if uint64(len(data)) > fourGiB/2 {
		return nil, fmt.Errorf("firmware size %d is larger than 2 GiB", len(data))
	}
	tbl, err := ovmf.ParseTable(data)
	if err != nil {
		if errors.Is(err, ovmf.ErrNoTable) {
			return nil, fmt.Errorf("%w: %w", ErrNoSEVMetadata, err)
		}
		return nil, err
	}
	fw := &Firmware{Data: data, GPA: fourGiB - uint64(len(data))}
	fw.ResetEIP, _ = tbl.Uint32(sevESResetBlockGUID)
	fw.HashesTableGPA, _ = tbl.Uint32(sevHashTableRVGUID)
	off, ok := tbl.Uint32(sevMetadataGUID)
	if !ok {
		return nil, ErrNoSEVMetadata
	}
	if off < uint32(sevMetadataHeaderLen) || uint64(off) > uint64(len(data)) {
		return nil, fmt.Errorf("SEV metadata offset %#x is outside the %d-byte image", off, len(data))
	}
	start := len(data) - int(off)
	hdr := data[start : start+sevMetadataHeaderLen]
	if string(hdr[0:4]) != "ASEV" {
		return nil, fmt.Errorf("SEV metadata at offset %#x has signature %q, want \"ASEV\"", start, hdr[0:4])
	}
	size := binary.LittleEndian.Uint32(hdr[4:])
	version := binary.LittleEndian.Uint32(hdr[8:])
	n := binary.LittleEndian.Uint32(hdr[12:])
	if version != 1 {
		return nil, fmt.Errorf("SEV metadata version %d, want 1", version)
	}
	if uint64(size) < uint64(sevMetadataHeaderLen)+uint64(n)*uint64(sevMetadataDescLen) || uint64(size) > uint64(off) {
		return nil, fmt.Errorf("SEV metadata size %d does not hold its %d sections or overruns the image", size, n)
	}
	for i := uint32(0); i < n; i++ {
		d := data[start+sevMetadataHeaderLen+int(i)*sevMetadataDescLen:]
		s := Section{
			GPA:  binary.LittleEndian.Uint32(d),
			Size: binary.LittleEndian.Uint32(d[4:]),
			Type: SectionType(binary.LittleEndian.Uint32(d[8:])),
		}
		switch s.Type {
		case SectionSNPSecMem, SectionSNPSecrets, SectionCPUID, SectionSVSMCAA, SectionSNPKernelHashes:
		default:
			return nil, fmt.Errorf("SEV metadata section %d has unknown %v", i, s.Type)
		}
		if s.GPA%4096 != 0 || s.Size%4096 != 0 || s.Size == 0 {
			return nil, fmt.Errorf("SEV metadata section %d (%v) at %#x size %#x is not whole pages", i, s.Type, s.GPA, s.Size)
		}
		if uint64(s.GPA)+uint64(s.Size) > fw.GPA {
			return nil, fmt.Errorf("SEV metadata section %d (%v) at %#x size %#x overlaps the firmware image at %#x", i, s.Type, s.GPA, s.Size, fw.GPA)
		}
		if (s.Type == SectionSNPSecrets || s.Type == SectionCPUID) && s.Size != 4096 {
			return nil, fmt.Errorf("SEV metadata section %d (%v) is %#x bytes, want one page", i, s.Type, s.Size)
		}
		if s.Type == SectionSNPKernelHashes {
			if s.Size != 4096 {
				return nil, fmt.Errorf("SEV metadata section %d (%v) is %#x bytes, want one page", i, s.Type, s.Size)
			}
			if fw.HashesTableGPA&^0xfff != s.GPA {
				return nil, fmt.Errorf("SEV hashes table at %#x is not in the %v page at %#x", fw.HashesTableGPA, s.Type, s.GPA)
			}
			if int(fw.HashesTableGPA&0xfff)+hashTableLen > 4096 {
				return nil, fmt.Errorf("SEV hashes table at %#x crosses its page", fw.HashesTableGPA)
			}
		}
		fw.Sections = append(fw.Sections, s)
	}
	return fw, nil
}

// HasKernelHashes reports whether the firmware reserves a page for the SEV
// hashes table, i.e. supports measured direct boot.
func (f *Firmware) HasKernelHashes() bool {
	for _, s := range f.Sections {
		if s.Type == SectionSNPKernelHashes {
			return true
		}
	}
	return false
}
