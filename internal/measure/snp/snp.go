// Package snp computes the expected AMD SEV-SNP launch MEASUREMENT of a
// keep image under measured direct boot with QEMU, ahead of time, so that
// the owner can put it in the attestation policy.
//
// The firmware (the OVMF AmdSev build, which QEMU maps to end at 4 GiB) is
// measured page by page; then the pages that its SEV metadata names (zero
// pages, the secrets page, the CPUID page, and the page where QEMU writes the
// SEV hashes table of kernel, initrd and command line when the guest object
// has kernel-hashes=on); then one VMSA page per vCPU. Each page extends the
// launch digest with the PAGE_INFO structure of SNP firmware ABI
// specification 8.17.2 (SNP_LAUNCH_UPDATE). This follows
// virtee/sev-snp-measure, whose test vectors testdata/ holds.
//
// Only QEMU as the VMM is modelled (its initial register state and VMSA
// contents); the measurement does not depend on guest memory size or on the
// guest policy, which the report carries separately.
package snp

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
)

// Page types of SNP_LAUNCH_UPDATE (SNP ABI table 67).
const (
	pageNormal  = 0x01
	pageVMSA    = 0x02
	pageZero    = 0x03
	pageSecrets = 0x05
	pageCPUID   = 0x06
)

// vmsaGPA is the GPA recorded for VMSA pages: (u64)-1 page aligned and
// limited to 52 bits.
const vmsaGPA = 0xFFFFFFFFF000

// Defaults that must agree with how castellan launches a VM keep.
const (
	// DefaultVCPUType is the QEMU -cpu model of an SNP keep.
	DefaultVCPUType = "EPYC-v4"
	// DefaultGuestFeatures is the VMSA SEV_FEATURES of the vCPUs: SNPActive
	// only, what QEMU (KVM_SEV_INIT2 with no extra VMSA features) gives.
	DefaultGuestFeatures = 0x1
	// DefaultPolicy is the guest policy castellan passes to QEMU's
	// sev-snp-guest object (SMT allowed, reserved bit 17 set, no debug,
	// no migration agent). It is not part of the measurement.
	DefaultPolicy = 0x30000
)

// MaxVCPUs bounds the vCPU count (QEMU's limit for the q35 machine).
const MaxVCPUs = 1024

// Params are the launch parameters that change the measurement.
type Params struct {
	VCPUs         int
	VCPUSig       uint32 // CPUID signature in the vCPUs' EDX, see VCPUSignature
	GuestFeatures uint64 // VMSA SEV_FEATURES
}

// Digest is a 48-byte SNP launch digest (the report's MEASUREMENT).
type Digest [sha512.Size384]byte

type gctx struct{ ld Digest }

func (g *gctx) update(pageType byte, gpa uint64, contents *Digest) {
	var info [0x70]byte
	copy(info[0:], g.ld[:])
	copy(info[48:], contents[:])
	binary.LittleEndian.PutUint16(info[96:], uint16(len(info)))
	info[98] = pageType
	// is_imi, vmpl3/2/1 perms and the reserved byte stay zero.
	binary.LittleEndian.PutUint64(info[104:], gpa)
	g.ld = sha512.Sum384(info[:])
}

func (g *gctx) normalPages(gpa uint64, data []byte) {
	for off := 0; off < len(data); off += 4096 {
		d := Digest(sha512.Sum384(data[off : off+4096]))
		g.update(pageNormal, gpa+uint64(off), &d)
	}
}

func (g *gctx) emptyPages(pageType byte, gpa uint64, size uint32) {
	var zero Digest
	for off := uint64(0); off < uint64(size); off += 4096 {
		g.update(pageType, gpa+off, &zero)
	}
}

// ErrNoKernelHashes is returned when a kernel is to be measured but the
// firmware has no page for the SEV hashes table.
var ErrNoKernelHashes = errors.New("firmware has no SNP_KERNEL_HASHES section, so it cannot do measured direct boot (use edk2's OvmfPkg/AmdSev build)")

// Measure returns the SEV-SNP launch measurement of fw with the given
// hashes (nil: no direct boot) and parameters.
func Measure(fw *Firmware, h *Hashes, p Params) (Digest, error) {
	if p.VCPUs < 1 || p.VCPUs > MaxVCPUs {
		return Digest{}, fmt.Errorf("vCPU count %d is not between 1 and %d", p.VCPUs, MaxVCPUs)
	}
	if h != nil && !fw.HasKernelHashes() {
		return Digest{}, ErrNoKernelHashes
	}
	pages, err := vmsaPages(fw, p.VCPUs, p.GuestFeatures, p.VCPUSig)
	if err != nil {
		return Digest{}, err
	}
	var g gctx
	g.normalPages(fw.GPA, fw.Data)
	for _, s := range fw.Sections {
		switch s.Type {
		case SectionSNPSecMem, SectionSVSMCAA:
			g.emptyPages(pageZero, uint64(s.GPA), s.Size)
		case SectionSNPSecrets:
			g.emptyPages(pageSecrets, uint64(s.GPA), s.Size)
		case SectionCPUID:
			g.emptyPages(pageCPUID, uint64(s.GPA), s.Size)
		case SectionSNPKernelHashes:
			if h == nil {
				g.emptyPages(pageZero, uint64(s.GPA), s.Size)
			} else {
				g.normalPages(uint64(s.GPA), h.page(fw.HashesTableGPA&0xfff))
			}
		}
	}
	for _, v := range pages {
		d := Digest(sha512.Sum384(v))
		g.update(pageVMSA, vmsaGPA, &d)
	}
	return g.ld, nil
}

// MeasureSEVES returns the SEV-ES launch digest (SHA-256 over the firmware,
// the hashes table when h is set, and the VMSA pages with no SEV features).
// Castellan attests SEV-SNP only; this is kept as a cross-check of the
// firmware parsing against the reference vectors.
func MeasureSEVES(fw *Firmware, h *Hashes, vcpus int, vcpuSig uint32) ([sha256.Size]byte, error) {
	if vcpus < 1 || vcpus > MaxVCPUs {
		return [32]byte{}, fmt.Errorf("vCPU count %d is not between 1 and %d", vcpus, MaxVCPUs)
	}
	if h != nil && fw.HashesTableGPA == 0 {
		return [32]byte{}, ErrNoKernelHashes
	}
	pages, err := vmsaPages(fw, vcpus, 0, vcpuSig)
	if err != nil {
		return [32]byte{}, err
	}
	s := sha256.New()
	s.Write(fw.Data)
	if h != nil {
		s.Write(h.Table())
	}
	for _, v := range pages {
		s.Write(v)
	}
	var out [32]byte
	copy(out[:], s.Sum(nil))
	return out, nil
}
