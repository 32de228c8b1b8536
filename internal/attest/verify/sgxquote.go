package verify

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
)

// Intel SGX DCAP ECDSA quote layout (Intel SGX ECDSA Quote Library API,
// "Quote Format", version 3; version 4 of the same document for the SGX
// form of v4, which wraps the QE report in certification data type 6).
const (
	SGXHeaderSize     = 48
	SGXReportBodySize = 384
	sgxSigSize        = 64
	sgxKeySize        = 64
	sgxAKTypeP256     = 2 // ECDSA-256-with-P-256 curve
	sgxTeeTypeSGX     = 0 // v4 header TEE type of an SGX quote
	sgxCertPCKChain   = 5 // certification data: PEM PCK leaf || intermediate || root
	sgxCertQEReport   = 6 // certification data (v4): QE report, its signature, auth data, nested type 5
	sgxMaxPCKChain    = 3 // leaf, PCK platform or processor CA, root
	sgxMaxPEMChain    = 16 << 10
	sgxMinQuoteSize   = SGXHeaderSize + SGXReportBodySize + 4 + sgxSigSize + sgxKeySize + SGXReportBodySize + sgxSigSize + 2 + 2 + 4
	sgxAttrInit       = 1 << 0 // ATTRIBUTES.FLAGS.INIT: the enclave was initialised
	sgxAttrDebug      = 1 << 1 // ATTRIBUTES.FLAGS.DEBUG: the enclave's memory can be read by a debugger
)

// IntelQEVendorID is the QE vendor ID of Intel's quoting enclave.
var IntelQEVendorID = [16]byte{0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07}

// SGXReportBody is the 384-byte SGX REPORT body (sgx_report_body_t) of the
// application enclave, or of the quoting enclave in its QE report.
type SGXReportBody struct {
	CPUSVN       [16]byte
	MiscSelect   uint32
	ISVExtProdID [16]byte
	Attributes   [16]byte // FLAGS (little-endian uint64) || XFRM
	MREnclave    [32]byte
	MRSigner     [32]byte
	ConfigID     [64]byte
	ISVProdID    uint16
	ISVSVN       uint16
	ConfigSVN    uint16
	ISVFamilyID  [16]byte
	ReportData   [64]byte
}

// Flags returns ATTRIBUTES.FLAGS.
func (b *SGXReportBody) Flags() uint64 { return binary.LittleEndian.Uint64(b.Attributes[:8]) }

// Debug reports whether ATTRIBUTES.DEBUG is set.
func (b *SGXReportBody) Debug() bool { return b.Flags()&sgxAttrDebug != 0 }

// Offsets in the report body; the gaps are reserved and must be zero.
var sgxReservedRanges = [][2]int{{20, 32}, {96, 128}, {160, 192}, {262, 304}}

func parseSGXReportBody(b []byte) (SGXReportBody, error) {
	var r SGXReportBody
	if len(b) != SGXReportBodySize {
		return r, fmt.Errorf("report body is %d bytes, want %d", len(b), SGXReportBodySize)
	}
	for _, rg := range sgxReservedRanges {
		for _, c := range b[rg[0]:rg[1]] {
			if c != 0 {
				return r, fmt.Errorf("reserved bytes %d to %d of the report body are not zero", rg[0], rg[1])
			}
		}
	}
	le := binary.LittleEndian
	copy(r.CPUSVN[:], b[0:16])
	r.MiscSelect = le.Uint32(b[16:20])
	copy(r.ISVExtProdID[:], b[32:48])
	copy(r.Attributes[:], b[48:64])
	copy(r.MREnclave[:], b[64:96])
	copy(r.MRSigner[:], b[128:160])
	copy(r.ConfigID[:], b[192:256])
	r.ISVProdID = le.Uint16(b[256:258])
	r.ISVSVN = le.Uint16(b[258:260])
	r.ConfigSVN = le.Uint16(b[260:262])
	copy(r.ISVFamilyID[:], b[304:320])
	copy(r.ReportData[:], b[320:384])
	return r, nil
}

// SGXQuote is a parsed SGX DCAP ECDSA quote. The parser checks its layout
// only; VerifySGXQuote checks what it says.
type SGXQuote struct {
	Version    uint16
	QESVN      uint16
	PCESVN     uint16
	QEVendorID [16]byte
	UserData   [20]byte
	Body       SGXReportBody

	Signature      [sgxSigSize]byte // by the attestation key over header || body (r || s)
	AttestationKey [sgxKeySize]byte // P-256 point X || Y
	QEReport       SGXReportBody
	QEReportSig    [sgxSigSize]byte // by the PCK key over the raw QE report
	QEAuthData     []byte
	PCKChain       []*x509.Certificate // leaf first

	signed      []byte // header || body
	qeReportRaw []byte
}

// quoteReader reads little-endian fields and never past its end.
type quoteReader struct {
	b   []byte
	off int
	err error
}

func (r *quoteReader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b)-r.off {
		r.err = fmt.Errorf("%s: needs %d bytes at offset %d, the quote has %d", what, n, r.off, len(r.b)-r.off)
		return nil
	}
	out := r.b[r.off : r.off+n]
	r.off += n
	return out
}

func (r *quoteReader) u16(what string) uint16 {
	if b := r.take(2, what); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (r *quoteReader) u32(what string) uint32 {
	if b := r.take(4, what); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

// ParseSGXQuote parses an SGX DCAP ECDSA quote of version 3, or the SGX
// form of version 4, strictly: the attestation key type must be ECDSA
// P-256, the certification data a PCK chain (type 5; for v4 wrapped in the
// QE report certification data, type 6), reserved bytes zero, and nothing
// may follow the signed data. At most evidence.MaxEvidenceSize bytes.
func ParseSGXQuote(b []byte) (*SGXQuote, error) {
	if len(b) > evidence.MaxEvidenceSize {
		return nil, fmt.Errorf("SGX quote is %d bytes, more than the limit of %d", len(b), evidence.MaxEvidenceSize)
	}
	if len(b) < sgxMinQuoteSize {
		return nil, fmt.Errorf("SGX quote is %d bytes, less than the smallest quote (%d)", len(b), sgxMinQuoteSize)
	}
	r := &quoteReader{b: b}
	q := &SGXQuote{}
	q.Version = r.u16("version")
	if q.Version != 3 && q.Version != 4 {
		return nil, fmt.Errorf("SGX quote version %d, want 3 or 4", q.Version)
	}
	if t := r.u16("attestation key type"); t != sgxAKTypeP256 {
		return nil, fmt.Errorf("SGX quote attestation key type %d, want %d (ECDSA P-256)", t, sgxAKTypeP256)
	}
	// v3: reserved; v4: TEE type, 0 for SGX (0x81 is TDX).
	if t := r.u32("TEE type"); t != sgxTeeTypeSGX {
		if t == 0x81 {
			return nil, errors.New("this is a TDX quote (TEE type 0x81), not an SGX quote")
		}
		return nil, fmt.Errorf("SGX quote header: TEE type (reserved in v3) is %#x, want 0", t)
	}
	q.QESVN = r.u16("QE SVN")
	q.PCESVN = r.u16("PCE SVN")
	copy(q.QEVendorID[:], r.take(16, "QE vendor ID"))
	copy(q.UserData[:], r.take(20, "user data"))
	body := r.take(SGXReportBodySize, "report body")
	if r.err != nil {
		return nil, fmt.Errorf("SGX quote: %w", r.err)
	}
	var err error
	if q.Body, err = parseSGXReportBody(body); err != nil {
		return nil, fmt.Errorf("SGX quote: %w", err)
	}
	q.signed = b[:r.off]

	sigLen := int(r.u32("signature data length"))
	if r.err == nil && sigLen != len(b)-r.off {
		return nil, fmt.Errorf("SGX quote: signature data length %d, but %d bytes follow", sigLen, len(b)-r.off)
	}
	copy(q.Signature[:], r.take(sgxSigSize, "quote signature"))
	copy(q.AttestationKey[:], r.take(sgxKeySize, "attestation key"))
	if q.Version == 4 {
		if t := r.u16("certification data type"); r.err == nil && t != sgxCertQEReport {
			return nil, fmt.Errorf("SGX quote v4: certification data type %d, want %d (QE report)", t, sgxCertQEReport)
		}
		if n := int(r.u32("certification data size")); r.err == nil && n != len(b)-r.off {
			return nil, fmt.Errorf("SGX quote v4: QE report certification data size %d, but %d bytes follow", n, len(b)-r.off)
		}
	}
	q.qeReportRaw = r.take(SGXReportBodySize, "QE report")
	copy(q.QEReportSig[:], r.take(sgxSigSize, "QE report signature"))
	authLen := int(r.u16("QE authentication data size"))
	q.QEAuthData = bytes.Clone(r.take(authLen, "QE authentication data"))
	certType := r.u16("certification data type")
	certLen := int(r.u32("certification data size"))
	if r.err == nil && certType != sgxCertPCKChain {
		return nil, fmt.Errorf("SGX quote: certification data type %d, want %d (PCK certificate chain)", certType, sgxCertPCKChain)
	}
	if r.err == nil && certLen != len(b)-r.off {
		return nil, fmt.Errorf("SGX quote: certification data size %d, but %d bytes follow", certLen, len(b)-r.off)
	}
	certData := r.take(certLen, "certification data")
	if r.err != nil {
		return nil, fmt.Errorf("SGX quote: %w", r.err)
	}
	if q.QEReport, err = parseSGXReportBody(q.qeReportRaw); err != nil {
		return nil, fmt.Errorf("SGX quote: QE report: %w", err)
	}
	if q.PCKChain, err = parsePCKChain(certData); err != nil {
		return nil, fmt.Errorf("SGX quote: %w", err)
	}
	return q, nil
}

// parsePCKChain reads the PEM certificates of certification data type 5.
// Intel's quoting library ends it with a NUL byte, which is allowed.
func parsePCKChain(b []byte) ([]*x509.Certificate, error) {
	if len(b) > sgxMaxPEMChain {
		return nil, fmt.Errorf("PCK certificate chain is %d bytes, more than the limit of %d", len(b), sgxMaxPEMChain)
	}
	b = bytes.TrimRight(b, "\x00")
	var out []*x509.Certificate
	for {
		blk, rest := pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PCK certificate chain: a %q PEM block", blk.Type)
		}
		if len(out) == sgxMaxPCKChain {
			return nil, fmt.Errorf("PCK certificate chain: more than %d certificates", sgxMaxPCKChain)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PCK certificate chain: certificate %d: %w", len(out), err)
		}
		out = append(out, c)
		b = rest
	}
	if len(bytes.TrimSpace(b)) != 0 {
		return nil, errors.New("PCK certificate chain: bytes that are not PEM certificates")
	}
	if len(out) < 2 {
		return nil, fmt.Errorf("PCK certificate chain has %d certificates, want the PCK certificate and its issuers", len(out))
	}
	return out, nil
}
