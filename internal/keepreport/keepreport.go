// Package keepreport defines what `castellan run --report FILE` writes
// before the workload starts, for local tools that show a keep (the
// console's --direct mode): the keep's certificate and claims, and fresh
// evidence binding the certificate's key. A report is a convenience, not
// proof: whoever relies on it verifies the evidence (internal/attest/verify)
// or the certificate chain (keepcert) itself.
package keepreport

import "github.com/castellan-dev/castellan/keepcert"

// Report is the JSON of a keep report.
type Report struct {
	WorkloadDigest     string           `json:"workload_digest"`
	Backend            string           `json:"backend"`
	Platform           string           `json:"platform"`
	Attested           bool             `json:"attested"`
	AttestationService string           `json:"attestation_service"`
	CertificateChain   []string         `json:"certificate_chain"` // PEM, leaf first
	Claims             *keepcert.Claims `json:"claims"`
	// Evidence is the CBOR evidence.Envelope over the certificate's key, a
	// fresh random nonce and the workload digest (base64 in JSON); absent
	// for the nil backend without an attestation service.
	Evidence []byte `json:"evidence,omitempty"`
}
