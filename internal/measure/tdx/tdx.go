// Package tdx computes the expected Intel TDX measurements of a keep image
// booted directly (QEMU -kernel/-initrd/-append) by TDVF, ahead of time, so
// that the owner can put them in the attestation policy.
//
//   - MRTD, the build-time measurement: the pages of the TDVF image that its
//     TDX metadata names, added and extended by the TDX module (see MRTD).
//   - RTMR[1]: TDVF's measurement of the kernel (the Authenticode SHA-384 of
//     the bzImage after QEMU patches its setup header, which depends on the
//     guest memory size and the initrd size) and the fixed boot events up to
//     ExitBootServices.
//   - RTMR[2]: the kernel command line TDVF passes (UTF-16LE with its NUL,
//     " initrd=initrd" appended when there is an initrd) and the initrd.
//
// RTMR[0] (TD HOB, ACPI tables built by QEMU, UEFI variables and boot
// order) depends on the QEMU version and machine options rather than on the
// keep image, and is not computed. The event sequence follows Phala's
// dstack-mr, whose RTMR values were checked against real TDX hosts.
package tdx

import (
	"crypto/sha512"
	"unicode/utf16"
)

// Inputs are the parts of a directly booted TD that the RTMRs cover.
type Inputs struct {
	Kernel      []byte
	Initrd      []byte
	Cmdline     string
	MemoryBytes uint64 // guest RAM: QEMU puts the initrd address into the kernel header
}

// Measurements are the reference values of a TD.
type Measurements struct {
	MRTD, RTMR1, RTMR2 Digest
}

// extend replays a measurement register: RTMR = SHA-384(RTMR || event).
func extend(events ...Digest) Digest {
	var mr Digest
	for _, e := range events {
		h := sha512.New384()
		h.Write(mr[:])
		h.Write(e[:])
		h.Sum(mr[:0])
	}
	return mr
}

func sum(b []byte) Digest { return sha512.Sum384(b) }

// RTMR1 returns RTMR[1] for a kernel booted by TDVF.
func RTMR1(in Inputs) (Digest, error) {
	k, err := patchKernel(in.Kernel, uint64(len(in.Initrd)), in.MemoryBytes)
	if err != nil {
		return Digest{}, err
	}
	kh, err := authenticode(k, sha512.New384())
	if err != nil {
		return Digest{}, err
	}
	return extend(
		Digest(kh),
		sum([]byte("Calling EFI Application from Boot Option")),
		sum([]byte{0, 0, 0, 0}), // separator
		sum([]byte("Exit Boot Services Invocation")),
		sum([]byte("Exit Boot Services Returned with Success")),
	), nil
}

// RTMR2 returns RTMR[2]: the command line TDVF gives the kernel, then the
// initrd.
func RTMR2(in Inputs) Digest {
	cmdline := in.Cmdline
	if len(in.Initrd) > 0 {
		cmdline += " initrd=initrd"
	}
	u := utf16.Encode([]rune(cmdline))
	b := make([]byte, 0, 2*len(u)+2)
	for _, c := range u {
		b = append(b, byte(c), byte(c>>8))
	}
	b = append(b, 0, 0)
	return extend(sum(b), sum(in.Initrd))
}

// Measure returns MRTD, RTMR[1] and RTMR[2].
func Measure(fw *Firmware, in Inputs) (Measurements, error) {
	r1, err := RTMR1(in)
	if err != nil {
		return Measurements{}, err
	}
	return Measurements{MRTD: MRTD(fw), RTMR1: r1, RTMR2: RTMR2(in)}, nil
}
