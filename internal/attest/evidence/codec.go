package evidence

import (
	"errors"
	"fmt"
	"strings"

	"github.com/fxamacker/cbor/v2"
)

// Limits on an encoded Envelope and its fields. An envelope arrives from an
// untrusted keep or host, so the decoder refuses anything larger before a
// verifier looks at it.
const (
	MaxEnvelopeSize    = 64 << 10 // the whole CBOR envelope
	MaxEvidenceSize    = 32 << 10 // a TDX quote with its PEM chain is about 5 KiB
	MaxEndorsements    = 8        // certificates in Endorsements
	MaxEndorsementSize = 8 << 10  // one DER certificate
	MaxKeySize         = 4 << 10  // an SPKI; RSA-4096 is about 550 bytes
	MaxNonceSize       = 256
	snpReportSize      = 0x4A0 // an SEV-SNP ATTESTATION_REPORT
	tdxQuoteMinSize    = 0x3FC // the smallest TDX v4 quote
	sgxQuoteMinSize    = 0x3FC // the smallest SGX v3 quote: header, body, signature data with empty certification data
	ccaTokenMinSize    = 64    // far below a CCA token with two COSE_Sign1 messages
)

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	encMode, err = cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err)
	}
	decMode, err = cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		MaxNestedLevels:   4,
		MaxArrayElements:  16, // the library minimum; check enforces MaxEndorsements
		MaxMapPairs:       16,
		UTF8:              cbor.UTF8RejectInvalid,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// Marshal encodes e with CBOR core deterministic encoding after checking it
// with the same rules Parse applies, so that every envelope a keep sends is
// one a verifier accepts.
func (e *Envelope) Marshal() ([]byte, error) {
	if err := e.check(); err != nil {
		return nil, err
	}
	b, err := encMode.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("evidence envelope: %w", err)
	}
	if len(b) > MaxEnvelopeSize {
		return nil, fmt.Errorf("evidence envelope: %d bytes, more than the limit of %d", len(b), MaxEnvelopeSize)
	}
	return b, nil
}

// Parse decodes an envelope strictly: at most MaxEnvelopeSize bytes, one
// CBOR map with only the known integer keys, no duplicate keys, no
// indefinite lengths or tags, no trailing bytes, a known platform and field
// sizes that fit it. It does not verify anything; see package verify.
func Parse(b []byte) (*Envelope, error) {
	if len(b) == 0 {
		return nil, errors.New("evidence envelope: empty")
	}
	if len(b) > MaxEnvelopeSize {
		return nil, fmt.Errorf("evidence envelope: %d bytes, more than the limit of %d", len(b), MaxEnvelopeSize)
	}
	// The first byte must open a map: this keeps a bare array or string from
	// being accepted through the decoder's struct-as-array paths.
	if b[0]>>5 != 5 {
		return nil, errors.New("evidence envelope: not a CBOR map")
	}
	var e Envelope
	if err := decMode.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("evidence envelope: %s", oneLine(err.Error()))
	}
	if err := e.check(); err != nil {
		return nil, err
	}
	return &e, nil
}

// check applies the field rules shared by Marshal and Parse.
func (e *Envelope) check() error {
	switch e.Platform {
	case PlatformNone:
		if len(e.Evidence) != 0 || len(e.Endorsements) != 0 {
			return errors.New("evidence envelope: platform none carries no evidence or endorsements")
		}
	case PlatformSNP:
		if len(e.Evidence) != snpReportSize {
			return fmt.Errorf("evidence envelope: SEV-SNP report is %d bytes, want %d", len(e.Evidence), snpReportSize)
		}
	case PlatformTDX:
		if len(e.Evidence) < tdxQuoteMinSize || len(e.Evidence) > MaxEvidenceSize {
			return fmt.Errorf("evidence envelope: TDX quote is %d bytes, want %d to %d", len(e.Evidence), tdxQuoteMinSize, MaxEvidenceSize)
		}
	case PlatformSGX:
		if len(e.Evidence) < sgxQuoteMinSize || len(e.Evidence) > MaxEvidenceSize {
			return fmt.Errorf("evidence envelope: SGX quote is %d bytes, want %d to %d", len(e.Evidence), sgxQuoteMinSize, MaxEvidenceSize)
		}
	case PlatformCCA:
		if len(e.Evidence) < ccaTokenMinSize || len(e.Evidence) > MaxEvidenceSize {
			return fmt.Errorf("evidence envelope: CCA token is %d bytes, want %d to %d", len(e.Evidence), ccaTokenMinSize, MaxEvidenceSize)
		}
	case "":
		return errors.New("evidence envelope: no platform")
	default:
		return fmt.Errorf("evidence envelope: unknown platform %q (want %s, %s, %s, %s or %s)", truncate(e.Platform), PlatformNone, PlatformSNP, PlatformTDX, PlatformSGX, PlatformCCA)
	}
	if len(e.Endorsements) > MaxEndorsements {
		return fmt.Errorf("evidence envelope: %d endorsements, more than the limit of %d", len(e.Endorsements), MaxEndorsements)
	}
	for i, c := range e.Endorsements {
		if len(c) == 0 || len(c) > MaxEndorsementSize {
			return fmt.Errorf("evidence envelope: endorsement %d is %d bytes, want 1 to %d", i, len(c), MaxEndorsementSize)
		}
	}
	if len(e.Key) == 0 || len(e.Key) > MaxKeySize {
		return fmt.Errorf("evidence envelope: key is %d bytes, want 1 to %d", len(e.Key), MaxKeySize)
	}
	if len(e.Nonce) > MaxNonceSize {
		return fmt.Errorf("evidence envelope: nonce is %d bytes, more than the limit of %d", len(e.Nonce), MaxNonceSize)
	}
	if err := CheckDigest(e.WorkloadDigest); err != nil {
		return fmt.Errorf("evidence envelope: %w", err)
	}
	return nil
}

// CheckDigest reports whether d is a workload digest in the form
// "sha256:<64 lowercase hex>" or "sha512:<128 lowercase hex>".
func CheckDigest(d string) error {
	alg, hex, ok := strings.Cut(d, ":")
	want := 0
	switch alg {
	case "sha256":
		want = 64
	case "sha512":
		want = 128
	}
	if !ok || want == 0 {
		return fmt.Errorf("workload digest %q: want sha256:<hex> or sha512:<hex>", truncate(d))
	}
	if len(hex) != want {
		return fmt.Errorf("workload digest %q: %d hex digits, want %d", truncate(d), len(hex), want)
	}
	for _, c := range hex {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("workload digest %q: not lowercase hex", truncate(d))
		}
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
