package sim

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// SGXOptions shape a simulated SGX quote. The zero value gives a version 3
// quote of this executable's simulated enclave, debugging off.
type SGXOptions struct {
	MREnclave []byte  // 32 bytes; nil = SGXMeasurement() of this executable
	MRSigner  []byte  // 32 bytes; nil = SGXSigner
	ISVProdID uint16  // the enclave's product ID
	ISVSVN    uint16  // the enclave's security version; 0 = DefaultISVSVN
	QESVN     *uint16 // nil = DefaultQESVN
	PCESVN    *uint16 // nil = DefaultPCESVN
	Debug     bool    // set ATTRIBUTES.DEBUG
	Version   uint16  // 3 (0 means 3) or 4, the SGX form of v4
}

// Defaults of a simulated SGX quote.
var (
	// SGXSigner is the MRSIGNER of simulated enclaves: the hash a real
	// enclave's signing key would have.
	SGXSigner = sha256.Sum256([]byte("castellan simulated enclave signer"))
	// DefaultISVSVN is the ISVSVN of a simulated enclave.
	DefaultISVSVN = uint16(1)
	// simQEMRSigner is the MRSIGNER of the simulated quoting enclave,
	// which simulated QE identities name.
	simQEMRSigner = sha256.Sum256([]byte("castellan simulated quoting enclave"))
)

// SGX quote layout (Intel SGX ECDSA Quote Library API, "Quote Format").
const (
	sgxHeaderSize  = 48
	sgxBodySize    = 384
	sgxAttrInit    = 0x01
	sgxAttrDebug   = 0x02
	sgxAttrMode64  = 0x04
	sgxAttrProvKey = 0x10
	sgxQEProdID    = 1
)

// SGXMeasurement returns the MRENCLAVE simulated SGX quotes from this
// executable claim: SHA-256 over the simulated launch measurement, so that
// it changes with the binary as MRENCLAVE does.
func SGXMeasurement() ([]byte, error) {
	m, err := Measurement()
	if err != nil {
		return nil, err
	}
	h := sha256.Sum256(append([]byte("castellan sim sgx mrenclave\x00"), m...))
	return h[:], nil
}

// sgxReportBody lays out an SGX REPORT body.
func sgxReportBody(cpusvn []byte, flags uint64, mrenclave, mrsigner []byte, prodID, svn uint16, reportData []byte) []byte {
	b := make([]byte, sgxBodySize)
	le := binary.LittleEndian
	copy(b[0:16], cpusvn)
	le.PutUint64(b[48:56], flags)
	le.PutUint64(b[56:64], 0x3) // XFRM: x87 and SSE, the minimum
	copy(b[64:96], mrenclave)
	copy(b[128:160], mrsigner)
	le.PutUint16(b[256:], prodID)
	le.PutUint16(b[258:], svn)
	copy(b[320:384], reportData)
	return b
}

// SignSGX returns a signed SGX DCAP ECDSA quote over reportData, with the
// PCK certificate chain (the same simulated PCK chain as TDX quotes: PCK →
// PCK platform CA → root) in its certification data. The simulated PCK key
// signs the QE report, whose report data binds the attestation key, which
// signs the quote.
func (ca *CA) SignSGX(reportData [64]byte, o SGXOptions) ([]byte, error) {
	mre := o.MREnclave
	if mre == nil {
		var err error
		if mre, err = SGXMeasurement(); err != nil {
			return nil, err
		}
	}
	mrs := o.MRSigner
	if mrs == nil {
		mrs = SGXSigner[:]
	}
	if len(mre) != 32 || len(mrs) != 32 {
		return nil, errors.New("simulated SGX quote: MRENCLAVE and MRSIGNER must be 32 bytes")
	}
	version := o.Version
	if version == 0 {
		version = 3
	}
	if version != 3 && version != 4 {
		return nil, fmt.Errorf("simulated SGX quote: version %d, want 3 or 4", version)
	}
	svn := o.ISVSVN
	if svn == 0 {
		svn = DefaultISVSVN
	}
	qesvn, pcesvn := DefaultQESVN, DefaultPCESVN
	if o.QESVN != nil {
		qesvn = *o.QESVN
	}
	if o.PCESVN != nil {
		pcesvn = *o.PCESVN
	}
	le := binary.LittleEndian

	header := make([]byte, sgxHeaderSize)
	le.PutUint16(header[0:], version)
	le.PutUint16(header[2:], tdxAKTypeP256)
	// [4:8): reserved in v3, TEE type 0 (SGX) in v4.
	le.PutUint16(header[8:], qesvn)
	le.PutUint16(header[10:], pcesvn)
	copy(header[12:], intelQEVendorID[:])

	flags := uint64(sgxAttrInit | sgxAttrMode64)
	if o.Debug {
		flags |= sgxAttrDebug
	}
	body := sgxReportBody(DefaultTeeTCBSVN[:], flags, mre, mrs, o.ISVProdID, svn, reportData[:])

	qe := sgxReportBody(DefaultTeeTCBSVN[:], sgxAttrInit|sgxAttrMode64|sgxAttrProvKey, make([]byte, 32), simQEMRSigner[:], sgxQEProdID, qesvn, nil)
	q, err := ca.dcapQuote(header, body, qe, version == 4)
	if err != nil {
		return nil, fmt.Errorf("simulated SGX quote: %w", err)
	}
	return q, nil
}

// dcapQuote assembles a DCAP ECDSA quote, SGX or TDX: header || body, then
// the signature data: the attestation key's signature over header || body,
// the attestation key, and the QE report certification data (qe, a QE
// report body whose report data is set here to SHA-256(attestation key ||
// QE authentication data), its signature by the PCK key, the authentication
// data and the PCK chain as certification data type 5), wrapped in
// certification data type 6 when wrapQE (TDX, and SGX v4) and bare (SGX v3).
func (ca *CA) dcapQuote(header, body, qe []byte, wrapQE bool) ([]byte, error) {
	hq := sha256.Sum256(append(append([]byte{}, header...), body...))
	qsig, err := rawSig(ca.akKey, hq[:])
	if err != nil {
		return nil, err
	}
	ak := make([]byte, 64)
	ca.akKey.X.FillBytes(ak[:32])
	ca.akKey.Y.FillBytes(ak[32:])
	authData := make([]byte, 32)
	for i := range authData {
		authData[i] = byte(i)
	}
	hk := sha256.Sum256(append(append([]byte{}, ak...), authData...))
	copy(qe[320:352], hk[:])
	hqe := sha256.Sum256(qe)
	qeSig, err := rawSig(ca.pckKey, hqe[:])
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	var qeCert []byte
	qeCert = append(qeCert, qe...)
	qeCert = append(qeCert, qeSig...)
	qeCert = le.AppendUint16(qeCert, uint16(len(authData)))
	qeCert = append(qeCert, authData...)
	qeCert = le.AppendUint16(qeCert, certTypePCKChain)
	qeCert = le.AppendUint32(qeCert, uint32(len(ca.pckPEM)))
	qeCert = append(qeCert, ca.pckPEM...)

	signed := append(append([]byte{}, qsig...), ak...)
	if wrapQE {
		signed = le.AppendUint16(signed, certTypeQEReport)
		signed = le.AppendUint32(signed, uint32(len(qeCert)))
	}
	signed = append(signed, qeCert...)
	q := append(append([]byte{}, header...), body...)
	q = le.AppendUint32(q, uint32(len(signed)))
	return append(q, signed...), nil
}

// SGXCollateralOptions shape simulated SGX collateral.
type SGXCollateralOptions struct {
	// Status is Intel's verdict on the simulated platform's TCB; "" =
	// "UpToDate". QEStatus likewise for the simulated QE.
	Status, QEStatus string
	// IssueDate and NextUpdate bound the TCB info's and QE identity's
	// validity; zero = an hour ago and thirty days on.
	IssueDate, NextUpdate time.Time
	// RevokePCK lists the simulated PCK certificate in the PCK CRL.
	RevokePCK bool
}

// SGXFMSPC is the FMSPC of simulated PCK certificates.
const SGXFMSPC = "00806F050000"

// SignSGXCollateral returns simulated Intel collateral for simulated SGX
// quotes, as JSON in the form of Intel's sgx_ql_qve_collateral_t (the
// form of an offline collateral folder's sgx-<FMSPC>.json): a TCB info and
// QE identity signed by a simulated "Intel SGX TCB Signing" certificate
// under the simulation root, and CRLs signed by the root and PCK CA.
func (ca *CA) SignSGXCollateral(o SGXCollateralOptions) ([]byte, error) {
	if ca.tdxRootKey == nil {
		return nil, errors.New("simulated SGX collateral: this simulation CA has no root key (delete it to have a new one made)")
	}
	status, qeStatus := o.Status, o.QEStatus
	if status == "" {
		status = "UpToDate"
	}
	if qeStatus == "" {
		qeStatus = "UpToDate"
	}
	issue, next := o.IssueDate, o.NextUpdate
	if issue.IsZero() {
		issue = time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	}
	if next.IsZero() {
		next = issue.Add(30 * 24 * time.Hour)
	}
	start := notBefore()
	sn, err := serial(rand.Reader)
	if err != nil {
		return nil, err
	}
	signerT := &x509.Certificate{
		SerialNumber:       sn,
		Subject:            intelName("Intel SGX TCB Signing"),
		NotBefore:          start,
		NotAfter:           start.AddDate(7, 0, 0),
		SignatureAlgorithm: x509.ECDSAWithSHA256,
		KeyUsage:           x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
	}
	// The TCB signing key is made per call: nothing more to store.
	signerKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	signerT.SubjectKeyId = skid(signerKey.Public())
	signer, err := create(rand.Reader, signerT, ca.tdxRoot, signerKey.Public(), ca.tdxRootKey)
	if err != nil {
		return nil, err
	}
	var chain bytes.Buffer
	for _, c := range []*x509.Certificate{signer, ca.tdxRoot} {
		pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}

	comps := make([]string, 16)
	for i, v := range DefaultTeeTCBSVN {
		comps[i] = fmt.Sprintf(`{"svn":%d}`, v)
	}
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	tcbInfo := fmt.Sprintf(`{"id":"SGX","version":3,"issueDate":%q,"nextUpdate":%q,"fmspc":%q,"pceId":"0000","tcbType":0,"tcbEvaluationDataNumber":17,"tcbLevels":[{"tcb":{"sgxtcbcomponents":[%s],"pcesvn":%d},"tcbDate":%q,"tcbStatus":%q}]}`,
		ts(issue), ts(next), SGXFMSPC, strings.Join(comps, ","), DefaultPCESVN, ts(issue), status)
	qeIdentity := fmt.Sprintf(`{"id":"QE","version":2,"issueDate":%q,"nextUpdate":%q,"tcbEvaluationDataNumber":17,"miscselect":"00000000","miscselectMask":"FFFFFFFF","attributes":"11000000000000000000000000000000","attributesMask":"FBFFFFFFFFFFFFFF0000000000000000","mrsigner":%q,"isvprodid":%d,"tcbLevels":[{"tcb":{"isvsvn":%d},"tcbDate":%q,"tcbStatus":%q}]}`,
		ts(issue), ts(next), strings.ToUpper(hex.EncodeToString(simQEMRSigner[:])), sgxQEProdID, DefaultQESVN, ts(issue), qeStatus)
	sign := func(s string) (string, error) {
		d := sha256.Sum256([]byte(s))
		sig, err := rawSig(signerKey, d[:])
		return hex.EncodeToString(sig), err
	}
	tcbSig, err := sign(tcbInfo)
	if err != nil {
		return nil, err
	}
	qeSig, err := sign(qeIdentity)
	if err != nil {
		return nil, err
	}
	crl := func(issuer *x509.Certificate, key crypto.Signer, revoked *big.Int) (string, error) {
		t := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: issue, NextUpdate: next}
		if revoked != nil {
			t.RevokedCertificateEntries = []x509.RevocationListEntry{{SerialNumber: revoked, RevocationTime: issue}}
		}
		der, err := x509.CreateRevocationList(rand.Reader, t, issuer, key)
		return hex.EncodeToString(der), err
	}
	var pckRevoked *big.Int
	if o.RevokePCK {
		pckRevoked = ca.tdxPCK.SerialNumber
	}
	rootCRL, err := crl(ca.tdxRoot, ca.tdxRootKey, nil)
	if err != nil {
		return nil, err
	}
	pckCRL, err := crl(ca.tdxPCA, ca.pcaKey, pckRevoked)
	if err != nil {
		return nil, err
	}
	var pcaChain bytes.Buffer
	for _, c := range []*x509.Certificate{ca.tdxPCA, ca.tdxRoot} {
		pem.Encode(&pcaChain, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return json.MarshalIndent(map[string]string{
		"pck_crl_issuer_chain":     pcaChain.String(),
		"root_ca_crl":              rootCRL,
		"pck_crl":                  pckCRL,
		"tcb_info_issuer_chain":    chain.String(),
		"tcb_info":                 tcbInfo,
		"tcb_info_signature":       tcbSig,
		"qe_identity_issuer_chain": chain.String(),
		"qe_identity":              qeIdentity,
		"qe_identity_signature":    qeSig,
	}, "", "  ")
}
