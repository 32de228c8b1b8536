package snp

import (
	"encoding/binary"
	"fmt"
	"sort"
)

// bspEIP is the x86 reset vector the bootstrap processor starts at.
const bspEIP = 0xfffffff0

// Offsets in the VMSA page (AMD APM vol. 2, table B-4, "VMSA layout, state
// save area for SEV-ES"; Linux struct sev_es_save_area).
const (
	vmsaES, vmsaCS, vmsaSS, vmsaDS, vmsaFS, vmsaGS = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50
	vmsaGDTR, vmsaLDTR, vmsaIDTR, vmsaTR           = 0x60, 0x70, 0x80, 0x90
	vmsaEFER                                       = 0xd0
	vmsaCR4, vmsaCR0, vmsaDR7, vmsaDR6             = 0x148, 0x158, 0x160, 0x168
	vmsaRFLAGS, vmsaRIP                            = 0x170, 0x178
	vmsaGPAT                                       = 0x268
	vmsaRDX                                        = 0x310
	vmsaSEVFeatures                                = 0x3b0
	vmsaXCR0                                       = 0x3e8
	vmsaMXCSR                                      = 0x408
	vmsaX87FCW                                     = 0x410
)

// vmsa returns the initial VMSA page of a vCPU starting at eip, as QEMU (with
// KVM) sets it up: real-mode segments with CS based at eip's upper half,
// KVM's EFER.SVME and CR4.MCE, the CPUID signature of the vCPU model in EDX,
// and the guest's SEV features.
func vmsa(eip uint32, sevFeatures uint64, vcpuSig uint32) []byte {
	p := make([]byte, 4096)
	seg := func(off int, sel, attr uint16, limit uint32, base uint64) {
		binary.LittleEndian.PutUint16(p[off:], sel)
		binary.LittleEndian.PutUint16(p[off+2:], attr)
		binary.LittleEndian.PutUint32(p[off+4:], limit)
		binary.LittleEndian.PutUint64(p[off+8:], base)
	}
	u64 := func(off int, v uint64) { binary.LittleEndian.PutUint64(p[off:], v) }
	seg(vmsaES, 0, 0x93, 0xffff, 0)
	seg(vmsaCS, 0xf000, 0x9b, 0xffff, uint64(eip&0xffff0000))
	seg(vmsaSS, 0, 0x93, 0xffff, 0)
	seg(vmsaDS, 0, 0x93, 0xffff, 0)
	seg(vmsaFS, 0, 0x93, 0xffff, 0)
	seg(vmsaGS, 0, 0x93, 0xffff, 0)
	seg(vmsaGDTR, 0, 0, 0xffff, 0)
	seg(vmsaLDTR, 0, 0x82, 0xffff, 0)
	seg(vmsaIDTR, 0, 0, 0xffff, 0)
	seg(vmsaTR, 0, 0x8b, 0xffff, 0)
	u64(vmsaEFER, 0x1000) // EFER.SVME, set by KVM
	u64(vmsaCR4, 0x40)    // CR4.MCE, set by KVM
	u64(vmsaCR0, 0x10)
	u64(vmsaDR7, 0x400)
	u64(vmsaDR6, 0xffff0ff0)
	u64(vmsaRFLAGS, 0x2)
	u64(vmsaRIP, uint64(eip&0xffff))
	u64(vmsaGPAT, 0x0007040600070406) // PAT reset value, APM vol. 2 A.3
	u64(vmsaRDX, uint64(vcpuSig))
	u64(vmsaSEVFeatures, sevFeatures)
	u64(vmsaXCR0, 0x1)
	binary.LittleEndian.PutUint32(p[vmsaMXCSR:], 0x1f80)
	binary.LittleEndian.PutUint16(p[vmsaX87FCW:], 0x37f)
	return p
}

// vmsaPages returns one VMSA page per vCPU: the BSP at the reset vector, the
// APs at the firmware's SEV-ES AP reset vector.
func vmsaPages(fw *Firmware, vcpus int, sevFeatures uint64, vcpuSig uint32) ([][]byte, error) {
	if vcpus > 1 && fw.ResetEIP == 0 {
		return nil, fmt.Errorf("firmware has no SEV-ES reset block, so %d vCPUs cannot start", vcpus)
	}
	bsp := vmsa(bspEIP, sevFeatures, vcpuSig)
	var ap []byte
	if vcpus > 1 {
		ap = vmsa(fw.ResetEIP, sevFeatures, vcpuSig)
	}
	pages := make([][]byte, vcpus)
	for i := range pages {
		pages[i] = ap
	}
	pages[0] = bsp
	return pages, nil
}

// Signature computes the CPUID Fn0000_0001_EAX signature of a family, model
// and stepping (AMD CPUID specification #25481).
func Signature(family, model, stepping uint32) uint32 {
	famLow, famHigh := family, uint32(0)
	if family > 0xf {
		famLow, famHigh = 0xf, (family-0xf)&0xff
	}
	return famHigh<<20 | (model>>4&0xf)<<16 | famLow<<8 | (model&0xf)<<4 | stepping&0xf
}

// vcpuTypes are QEMU's AMD EPYC models (target/i386/cpu.c builtin_x86_defs)
// and their family, model and stepping.
var vcpuTypes = map[string][3]uint32{
	"EPYC": {23, 1, 2}, "EPYC-v1": {23, 1, 2}, "EPYC-v2": {23, 1, 2}, "EPYC-IBPB": {23, 1, 2},
	"EPYC-v3": {23, 1, 2}, "EPYC-v4": {23, 1, 2},
	"EPYC-Rome": {23, 49, 0}, "EPYC-Rome-v1": {23, 49, 0}, "EPYC-Rome-v2": {23, 49, 0}, "EPYC-Rome-v3": {23, 49, 0},
	"EPYC-Milan": {25, 1, 1}, "EPYC-Milan-v1": {25, 1, 1}, "EPYC-Milan-v2": {25, 1, 1},
	"EPYC-Genoa": {25, 17, 0}, "EPYC-Genoa-v1": {25, 17, 0},
	"EPYC-Turin": {26, 0, 0},
}

// VCPUSignature returns the CPUID signature of a QEMU vCPU model name.
func VCPUSignature(name string) (uint32, error) {
	f, ok := vcpuTypes[name]
	if !ok {
		return 0, fmt.Errorf("unknown vCPU type %q (known: %v)", name, VCPUTypes())
	}
	return Signature(f[0], f[1], f[2]), nil
}

// VCPUTypes lists the known vCPU model names, sorted.
func VCPUTypes() []string {
	names := make([]string, 0, len(vcpuTypes))
	for k := range vcpuTypes {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}
