package qemu

// cpuid executes CPUID with leaf eax and subleaf ecx (cpuid_amd64.s).
func cpuid(eax, ecx uint32) (a, b, c, d uint32)

// snpCPUID reads the C-bit position (EBX[5:0]) and the physical address
// bits lost to memory encryption (EBX[11:6]) from CPUID 0x8000001F, the
// values QEMU's sev-snp-guest wants; the defaults when the CPU does not
// report them.
func snpCPUID() (cbitpos, reducedPhysBits int) {
	if max, _, _, _ := cpuid(0x80000000, 0); max < 0x8000001F {
		return DefaultCBitPos, DefaultReducedPhysBits
	}
	_, ebx, _, _ := cpuid(0x8000001F, 0)
	cbit, rpb := int(ebx&0x3f), int(ebx>>6&0x3f)
	if cbit == 0 {
		return DefaultCBitPos, DefaultReducedPhysBits
	}
	return cbit, rpb
}
