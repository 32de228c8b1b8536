package sim

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/google/go-tdx-guest/pcs"
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
	qesvn, pcesvn := quotingSVNs(o.QESVN, o.PCESVN)
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
	// validity; zero = an hour ago and the simulation's validity on.
	IssueDate, NextUpdate time.Time
	// RevokePCK lists the simulated PCK certificate in the PCK CRL.
	RevokePCK bool
	// RevokeTCBSigner lists the TCB signing certificate that signs the
	// TCB info and QE identity in the root CA CRL.
	RevokeTCBSigner bool
}

// SignSGXCollateral returns simulated Intel collateral for simulated SGX
// quotes, by the URLs a verifier fetches it from (Intel's PCS v4 SGX TCB
// info and QE identity, signed by a simulated "Intel SGX TCB Signing"
// certificate under the simulation root; the PCK and root CA CRLs), shaped
// by o for tests. Collateral (and the CA's collateral folder) holds the
// same documents with the default options.
func (ca *CA) SignSGXCollateral(o SGXCollateralOptions) (collateral.Map, error) {
	if ca.tdxRootKey == nil {
		return nil, errors.New("simulated SGX collateral: " + errNoCollateralKeys.Error())
	}
	now := time.Now().UTC().Truncate(time.Second)
	s, err := ca.newIntelSigner(now)
	if err != nil {
		return nil, fmt.Errorf("simulated SGX collateral: %w", err)
	}
	m := collateral.Map{}
	if err := ca.intelCRLs(m, now, now.Add(-time.Hour), now.Add(collateralValidity), o.RevokePCK, false); err != nil {
		return nil, fmt.Errorf("simulated SGX collateral: %w", err)
	}
	if err := ca.sgxCollateral(m, s, now, o); err != nil {
		return nil, fmt.Errorf("simulated SGX collateral: %w", err)
	}
	if o.RevokeTCBSigner {
		crl, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
			Number: big.NewInt(now.Unix()*4 + 3), ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(collateralValidity),
			RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: s.cert.SerialNumber, RevocationTime: now.Add(-time.Minute)}},
		}, ca.tdxRoot, ca.tdxRootKey)
		if err != nil {
			return nil, fmt.Errorf("simulated SGX collateral: %w", err)
		}
		m[tdxRootCRLURL] = &collateral.Response{Body: crl, Fetched: now}
	}
	return m, nil
}

func (o SGXCollateralOptions) dates(now time.Time) (issue, next time.Time) {
	issue, next = o.IssueDate, o.NextUpdate
	if issue.IsZero() {
		issue = now.Add(-time.Hour)
	}
	if next.IsZero() {
		next = now.Add(collateralValidity)
	}
	return issue, next
}

// sgxCollateral adds the SGX TCB info for the simulated FMSPC and the SGX
// QE identity, signed by s, to m: one TCB level at the simulated
// platform's TCB (status o.Status) above an out-of-date floor, and one QE
// level at the simulated QE's ISVSVN (o.QEStatus).
func (ca *CA) sgxCollateral(m collateral.Map, s *intelSigner, now time.Time, o SGXCollateralOptions) error {
	status, qeStatus := o.Status, o.QEStatus
	if status == "" {
		status = string(pcs.TcbComponentStatusUpToDate)
	}
	if qeStatus == "" {
		qeStatus = string(pcs.TcbComponentStatusUpToDate)
	}
	i, n := o.dates(now)
	issue, next := i.Format(time.RFC3339), n.Format(time.RFC3339)
	date := now.Add(-24 * time.Hour).Format(time.RFC3339)
	err := s.put(m, collateral.SGXTCBInfoURL(simFMSPC), "tcbInfo", "Tcb-Info-Issuer-Chain", jsonTcbInfo{
		ID: "SGX", Version: 3, IssueDate: issue, NextUpdate: next,
		Fmspc: simFMSPC, PceID: "0000", TcbType: 0, TcbEvaluationDataNumber: 17,
		TcbLevels: []jsonTcbLevel{
			{Tcb: jsonTcb{SgxTcbcomponents: svns(DefaultTeeTCBSVN[:]), Pcesvn: DefaultPCESVN}, TcbDate: date, TcbStatus: status},
			{Tcb: jsonTcb{SgxTcbcomponents: svns(nil)}, TcbDate: date, TcbStatus: string(pcs.TcbComponentStatusOutOfDate)},
		},
	}, now)
	if err != nil {
		return err
	}
	return s.put(m, collateral.SGXQEIdentityURL(), "enclaveIdentity", "Sgx-Enclave-Identity-Issuer-Chain", jsonEnclaveIdentity{
		ID: "QE", Version: 2, IssueDate: issue, NextUpdate: next, TcbEvaluationDataNumber: 17,
		// The simulated QE report: MISCSELECT zero, ATTRIBUTES INIT|MODE64
		// (PROVISIONKEY masked out, as Intel's identity does).
		Miscselect: "00000000", MiscselectMask: "ffffffff",
		Attributes: "11" + strings.Repeat("00", 15), AttributesMask: "fbffffffffffffff" + strings.Repeat("00", 8),
		Mrsigner: hex.EncodeToString(simQEMRSigner[:]), IsvProdID: sgxQEProdID,
		TcbLevels: []jsonTcbLevel{
			{Tcb: jsonTcb{Isvsvn: uint32(DefaultQESVN)}, TcbDate: date, TcbStatus: qeStatus},
			{Tcb: jsonTcb{Isvsvn: 0}, TcbDate: date, TcbStatus: string(pcs.TcbComponentStatusOutOfDate)},
		},
	}, now)
}
