// Package evidence defines what a keep sends to prove itself: a CBOR
// envelope around the hardware's raw report or quote, the keep's public
// key, the verifier's nonce and the workload digest, and the claims that a
// verifier extracts from it.
//
// The hardware report carries 64 bytes of report data chosen by the keep:
//
//	SHA-512("castellan keep v1" || len||SPKI || len||nonce || len||digest)
//
// with each len a big-endian uint32. The hardware vouches for the measured
// runtime; the runtime vouches for the key and the workload it loaded.
package evidence

import (
	"crypto/sha512"
	"encoding/binary"
)

// Platform names carried in an Envelope.
const (
	PlatformNone = "none" // the nil backend: no TEE, never trusted unless the policy allows insecure keeps
	PlatformSNP  = "snp"  // an AMD SEV-SNP attestation report (real or simulated)
	PlatformTDX  = "tdx"  // an Intel TDX quote (real or simulated)
)

// Domain separates Castellan's report data from any other use of the same key.
const Domain = "castellan keep v1"

// Envelope is the evidence of one keep start. CBOR field keys are small
// integers, fixed forever.
type Envelope struct {
	Platform       string   `cbor:"1,keyasint"`
	Evidence       []byte   `cbor:"2,keyasint"`           // raw SNP report or TDX quote; empty for none
	Endorsements   [][]byte `cbor:"3,keyasint,omitempty"` // DER certificates (VCEK, ASK, ARK; PCK chain), leaf first
	Key            []byte   `cbor:"4,keyasint"`           // the keep's public key, SPKI DER
	Nonce          []byte   `cbor:"5,keyasint"`
	WorkloadDigest string   `cbor:"6,keyasint"` // "sha256:..." manifest digest
}

// ReportData is the 64 bytes a keep asks the hardware to sign.
func ReportData(spki, nonce []byte, workloadDigest string) [64]byte {
	h := sha512.New()
	h.Write([]byte(Domain))
	for _, b := range [][]byte{spki, nonce, []byte(workloadDigest)} {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	var out [64]byte
	copy(out[:], h.Sum(nil))
	return out
}

// Claims is what a verifier learned from an Envelope whose signatures
// checked out. Policy decisions (TCB minimums, measurement database,
// nonce freshness) are made on Claims, not on raw evidence.
type Claims struct {
	Platform string // PlatformNone, PlatformSNP or PlatformTDX
	// Simulated is true when the chain ends at a Castellan simulation root
	// rather than a vendor root. Simulated and none evidence is insecure.
	Simulated bool
	// Measurement is the launch measurement: SNP MEASUREMENT or TDX MRTD (48 bytes).
	Measurement []byte
	// TCB holds the platform's security version numbers by component name:
	// SNP "bootloader", "tee", "snp", "microcode"; TDX "tee_tcb_svn.0" ..
	// "tee_tcb_svn.15" and "qe_svn", "pce_svn". A policy minimum names some
	// components; each named one must be at or above it.
	TCB map[string]uint64
	// Debug is true when the guest policy allows debugging (the host could read the keep).
	Debug bool
	// Details are the other hardware fields the verifier decided on, by
	// name, so that a relying party sees what was checked: for SEV-SNP
	// "vmpl", "guest_policy", "platform_info", "host_data", "firmware"...;
	// for TDX "tcb_status", "rtmr0", "td_attributes", "xfam"...; and where
	// collateral was used, "collateral" and its next update. The values
	// are short text (decimal, hex or a status name).
	Details map[string]string
	// ReportData is the 64 bytes the hardware signed.
	ReportData [64]byte
	// Key, Nonce and WorkloadDigest are copied from the envelope once the
	// report data is checked to bind them.
	Key            []byte
	Nonce          []byte
	WorkloadDigest string
}

// Insecure reports whether the claims come from no TEE or a simulated one.
func (c *Claims) Insecure() bool { return c.Platform == PlatformNone || c.Simulated }
