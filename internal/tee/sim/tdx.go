package sim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"fmt"
	"io"
	"math/big"

	"github.com/google/go-tdx-guest/pcs"
)

// TDXOptions shape a simulated TDX quote. The zero value gives a quote for
// this executable with the default TCB and debugging off.
type TDXOptions struct {
	Measurement []byte    // MRTD, 48 bytes; nil = Measurement() of this executable
	TeeTCBSVN   *[16]byte // TEE_TCB_SVN; nil = DefaultTeeTCBSVN
	QESVN       *uint16   // nil = DefaultQESVN
	PCESVN      *uint16   // nil = DefaultPCESVN
	Debug       bool      // set TDATTRIBUTES.DEBUG
	// Attributes, if set, replaces TDATTRIBUTES whole (default
	// SEPT_VE_DISABLE, plus DEBUG if Debug).
	Attributes *uint64
	// Edit, if set, changes the header and body (the signed part of the
	// quote) before they are signed: tests craft RTMRs, MRCONFIGID, XFAM...
	Edit func(headerAndBody []byte)
}

// Defaults for a simulated TDX quote.
var (
	DefaultTeeTCBSVN = [16]byte{5, 1, 3}
	DefaultQESVN     = uint16(8)
	DefaultPCESVN    = uint16(13)
)

// Intel's identifiers that a v4 quote carries; the simulation uses the same
// values so that the bytes look like a real quote's.
var intelQEVendorID = [16]byte{0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07}

// TDX v4 quote layout (Intel TDX DCAP Quoting Library API, "Quote Format").
const (
	tdxHeaderSize     = 0x30
	tdxBodySize       = 0x248
	tdxQEReportSize   = 0x180
	tdxSigSize        = 0x40
	tdxTeeTypeTDX     = 0x81
	tdxAKTypeP256     = 2
	certTypeQEReport  = 6
	certTypePCKChain  = 5
	bodyTeeTCBSVN     = 0x00
	bodyTDAttributes  = 0x78
	bodyXFAM          = 0x80
	bodyMRTD          = 0x88
	bodyReportData    = 0x208
	tdAttributesDebug = 0x01 // bit 0 of TDATTRIBUTES: TUD.DEBUG
	// bit 28: SEPT_VE_DISABLE, which Linux guests require and verifiers
	// expect by default.
	tdAttributesSEPTVEDisable = 1 << 28
)

// SignTDX returns a signed TDX v4 quote over reportData. The quote carries
// its own PCK certificate chain (PEM, leaf first) in its certification
// data, as a real quote does, so there are no separate endorsements.
func (ca *CA) SignTDX(reportData [64]byte, o TDXOptions) ([]byte, error) {
	m := o.Measurement
	if m == nil {
		var err error
		if m, err = Measurement(); err != nil {
			return nil, err
		}
	}
	if len(m) != 48 {
		return nil, fmt.Errorf("simulated TDX quote: measurement is %d bytes, want 48", len(m))
	}
	svn := DefaultTeeTCBSVN
	if o.TeeTCBSVN != nil {
		svn = *o.TeeTCBSVN
	}
	qesvn, pcesvn := DefaultQESVN, DefaultPCESVN
	if o.QESVN != nil {
		qesvn = *o.QESVN
	}
	if o.PCESVN != nil {
		pcesvn = *o.PCESVN
	}
	le := binary.LittleEndian

	header := make([]byte, tdxHeaderSize)
	le.PutUint16(header[0:], 4)
	le.PutUint16(header[2:], tdxAKTypeP256)
	le.PutUint32(header[4:], tdxTeeTypeTDX)
	le.PutUint16(header[8:], pcesvn)
	le.PutUint16(header[10:], qesvn)
	copy(header[12:], intelQEVendorID[:])
	// user data [28:48): the QE puts the platform identity here; zero.

	body := make([]byte, tdxBodySize)
	copy(body[bodyTeeTCBSVN:], svn[:])
	attrs := uint64(tdAttributesSEPTVEDisable)
	if o.Debug {
		attrs |= tdAttributesDebug
	}
	if o.Attributes != nil {
		attrs = *o.Attributes
	}
	le.PutUint64(body[bodyTDAttributes:], attrs)
	le.PutUint64(body[bodyXFAM:], 0x61ae7) // x87, SSE, AVX, AVX-512, PKRU, AMX: a typical TD
	copy(body[bodyMRTD:], m)
	copy(body[bodyReportData:], reportData[:])

	if o.Edit != nil {
		hb := append(append([]byte{}, header...), body...)
		o.Edit(hb)
		copy(header, hb[:tdxHeaderSize])
		copy(body, hb[tdxHeaderSize:])
	}
	// The attestation key signs header || body.
	hq := sha256.Sum256(append(append([]byte{}, header...), body...))
	qsig, err := rawSig(ca.akKey, hq[:])
	if err != nil {
		return nil, fmt.Errorf("simulated TDX quote: %w", err)
	}
	ak := make([]byte, 64)
	ca.akKey.X.FillBytes(ak[:32])
	ca.akKey.Y.FillBytes(ak[32:])

	// The QE report binds the attestation key: its report data is
	// SHA-256(attestation key || QE authentication data), zero padded.
	authData := make([]byte, 32)
	for i := range authData {
		authData[i] = byte(i)
	}
	qe := make([]byte, tdxQEReportSize)
	le.PutUint16(qe[0x102:], qesvn) // ISVSVN
	le.PutUint16(qe[0x100:], 1)     // ISVPRODID of the TD QE
	hk := sha256.Sum256(append(append([]byte{}, ak...), authData...))
	copy(qe[0x140:], hk[:])
	hqe := sha256.Sum256(qe)
	qeSig, err := rawSig(ca.pckKey, hqe[:])
	if err != nil {
		return nil, fmt.Errorf("simulated TDX quote: %w", err)
	}

	// Certification data type 6 (QE report) nests type 5 (PCK chain).
	var qeCert []byte
	qeCert = append(qeCert, qe...)
	qeCert = append(qeCert, qeSig...)
	qeCert = le.AppendUint16(qeCert, uint16(len(authData)))
	qeCert = append(qeCert, authData...)
	qeCert = le.AppendUint16(qeCert, certTypePCKChain)
	qeCert = le.AppendUint32(qeCert, uint32(len(ca.pckPEM)))
	qeCert = append(qeCert, ca.pckPEM...)

	var signed []byte
	signed = append(signed, qsig...)
	signed = append(signed, ak...)
	signed = le.AppendUint16(signed, certTypeQEReport)
	signed = le.AppendUint32(signed, uint32(len(qeCert)))
	signed = append(signed, qeCert...)

	var q []byte
	q = append(q, header...)
	q = append(q, body...)
	q = le.AppendUint32(q, uint32(len(signed)))
	q = append(q, signed...)
	return q, nil
}

// rawSig signs a digest and returns r || s, 32 bytes each, big-endian: the
// signature form of TDX quotes.
func rawSig(k *ecdsa.PrivateKey, digest []byte) ([]byte, error) {
	r, s, err := ecdsa.Sign(rand.Reader, k, digest)
	if err != nil {
		return nil, err
	}
	out := make([]byte, tdxSigSize)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out, nil
}

// Subjects of Intel's PCK chain: go-tdx-guest checks these common names.
// The organization says the certificates are simulated.
func intelName(cn string) pkix.Name {
	return pkix.Name{
		CommonName:   cn,
		Organization: []string{simOrg},
		Locality:     []string{"Santa Clara"},
		Province:     []string{"CA"},
		Country:      []string{"US"},
	}
}

// generateTDX makes root → PCK platform CA → PCK leaf (ECDSA P-256 with
// SHA-256, as Intel's) and the quoting enclave's attestation key. The leaf
// has the six extensions the verifier expects: authority and subject key
// IDs, key usage, basic constraints, CRL distribution point and the SGX
// extension (PPID, TCB, PCE-ID, FMSPC).
func (ca *CA) generateTDX(r io.Reader) error {
	keys := make([]*ecdsa.PrivateKey, 4)
	for i := range keys {
		k, err := ecdsa.GenerateKey(elliptic.P256(), r)
		if err != nil {
			return err
		}
		keys[i] = k
	}
	rootKey, pcaKey, pckKey, akKey := keys[0], keys[1], keys[2], keys[3]
	sns := make([]*big.Int, 3)
	for i := range sns {
		sn, err := serial(r)
		if err != nil {
			return err
		}
		sns[i] = sn
	}
	start := notBefore()
	rootT := &x509.Certificate{
		SerialNumber:          sns[0],
		Subject:               intelName("Intel SGX Root CA"),
		NotBefore:             start,
		NotAfter:              start.AddDate(25, 0, 0),
		SignatureAlgorithm:    x509.ECDSAWithSHA256,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
		SubjectKeyId:          skid(rootKey.Public()),
		// Where verifiers fetch the root CA CRL (from the simulation's
		// collateral folder: the host does not resolve).
		CRLDistributionPoints: []string{tdxRootCRLURL},
	}
	root, err := create(r, rootT, rootT, rootKey.Public(), rootKey)
	if err != nil {
		return err
	}
	pcaT := &x509.Certificate{
		SerialNumber:          sns[1],
		Subject:               intelName("Intel SGX PCK Platform CA"),
		NotBefore:             start,
		NotAfter:              start.AddDate(25, 0, 0),
		SignatureAlgorithm:    x509.ECDSAWithSHA256,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          skid(pcaKey.Public()),
	}
	pca, err := create(r, pcaT, root, pcaKey.Public(), rootKey)
	if err != nil {
		return err
	}
	sgx, err := sgxExtension(r, DefaultPCESVN)
	if err != nil {
		return err
	}
	pckT := &x509.Certificate{
		SerialNumber:          sns[2],
		Subject:               intelName("Intel SGX PCK Certificate"),
		NotBefore:             start,
		NotAfter:              start.AddDate(7, 0, 0),
		SignatureAlgorithm:    x509.ECDSAWithSHA256,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
		BasicConstraintsValid: true,
		SubjectKeyId:          skid(pckKey.Public()),
		CRLDistributionPoints: []string{"https://castellan.invalid/sim/pckcrl"},
		ExtraExtensions:       []pkix.Extension{sgx},
	}
	pck, err := create(r, pckT, pca, pckKey.Public(), pcaKey)
	if err != nil {
		return err
	}
	ca.tdxRoot, ca.tdxPCA, ca.tdxPCK, ca.pckKey, ca.akKey = root, pca, pck, pckKey, akKey
	ca.tdxRootKey, ca.pcaKey = rootKey, pcaKey
	return nil
}

// sgxExtension builds Intel's SGX extension (OID 1.2.840.113741.1.13.1):
// a SEQUENCE of (OID, value) pairs.
func sgxExtension(r io.Reader, pcesvn uint16) (pkix.Extension, error) {
	type pair struct {
		ID    asn1.ObjectIdentifier
		Value any
	}
	ppid := make([]byte, 16)
	fmspc := []byte{0x00, 0x80, 0x6f, 0x05, 0x00, 0x00} // a Sapphire Rapids FMSPC
	if _, err := io.ReadFull(r, ppid); err != nil {
		return pkix.Extension{}, err
	}
	marshal := func(p pair) (asn1.RawValue, error) {
		b, err := asn1.Marshal(p)
		return asn1.RawValue{FullBytes: b}, err
	}
	seq := func(items []asn1.RawValue) ([]byte, error) { return asn1.Marshal(items) }

	var tcb []asn1.RawValue
	for i := 1; i <= 16; i++ {
		v, err := marshal(pair{append(append(asn1.ObjectIdentifier{}, pcs.OidTCB...), i), int(DefaultTeeTCBSVN[i-1])})
		if err != nil {
			return pkix.Extension{}, err
		}
		tcb = append(tcb, v)
	}
	v, err := marshal(pair{pcs.OidPCESvn, int(pcesvn)})
	if err != nil {
		return pkix.Extension{}, err
	}
	tcb = append(tcb, v)
	v, err = marshal(pair{pcs.OidCPUSvn, DefaultTeeTCBSVN[:]})
	if err != nil {
		return pkix.Extension{}, err
	}
	tcb = append(tcb, v)
	tcbSeq, err := seq(tcb)
	if err != nil {
		return pkix.Extension{}, err
	}
	oidTCB, err := asn1.Marshal(pcs.OidTCB)
	if err != nil {
		return pkix.Extension{}, err
	}
	tcbPair, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: append(oidTCB, tcbSeq...)})
	if err != nil {
		return pkix.Extension{}, err
	}

	var items []asn1.RawValue
	for _, p := range []pair{{pcs.OidPPID, ppid}} {
		v, err := marshal(p)
		if err != nil {
			return pkix.Extension{}, err
		}
		items = append(items, v)
	}
	items = append(items, asn1.RawValue{FullBytes: tcbPair})
	for _, p := range []pair{{pcs.OidPCEID, []byte{0, 0}}, {pcs.OidFMSPC, fmspc}} {
		v, err := marshal(p)
		if err != nil {
			return pkix.Extension{}, err
		}
		items = append(items, v)
	}
	val, err := seq(items)
	if err != nil {
		return pkix.Extension{}, err
	}
	return pkix.Extension{Id: pcs.OidSgxExtension, Value: val}, nil
}
