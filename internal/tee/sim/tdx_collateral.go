package sim

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/google/go-tdx-guest/pcs"
)

// tdxRootCRLURL is the simulated TDX root's CRL distribution point.
const tdxRootCRLURL = "https://castellan.invalid/sim/tdx/IntelSGXRootCA.der"

// simFMSPC is the FMSPC in the simulated PCK certificate (sgxExtension).
const simFMSPC = "00806f050000"

// The simulated TDX module's TCB levels, by TEE_TCB_SVN[0] (its SVN), as
// Intel's TCB info lists a module's levels: a quote whose module SVN is
// below the default gets the status of the first level it reaches, so
// tests can ask for each status with TDXOptions.TeeTCBSVN.
var simModuleLevels = []struct {
	isvsvn uint32
	status pcs.TcbComponentStatus
}{
	{5, pcs.TcbComponentStatusUpToDate},
	{4, pcs.TcbComponentStatusSwHardeningNeeded},
	{3, pcs.TcbComponentStatusConfigurationNeeded},
	{2, pcs.TcbComponentStatusRevoked},
	{0, pcs.TcbComponentStatusOutOfDate},
}

// JSON forms of Intel's TCB info and enclave identity (PCS API v4); hex
// fields are strings, as Intel writes them.
type (
	jsonTcbComponent struct {
		Svn byte `json:"svn"`
	}
	jsonTcb struct {
		SgxTcbcomponents []jsonTcbComponent `json:"sgxtcbcomponents,omitempty"`
		Pcesvn           uint16             `json:"pcesvn,omitempty"`
		TdxTcbcomponents []jsonTcbComponent `json:"tdxtcbcomponents,omitempty"`
		Isvsvn           uint32             `json:"isvsvn"`
	}
	jsonTcbLevel struct {
		Tcb       jsonTcb `json:"tcb"`
		TcbDate   string  `json:"tcbDate"`
		TcbStatus string  `json:"tcbStatus"`
	}
	jsonModule struct {
		ID             string         `json:"id,omitempty"`
		Mrsigner       string         `json:"mrsigner"`
		Attributes     string         `json:"attributes"`
		AttributesMask string         `json:"attributesMask"`
		TcbLevels      []jsonTcbLevel `json:"tcbLevels,omitempty"`
	}
	jsonTcbInfo struct {
		ID                      string         `json:"id"`
		Version                 int            `json:"version"`
		IssueDate               string         `json:"issueDate"`
		NextUpdate              string         `json:"nextUpdate"`
		Fmspc                   string         `json:"fmspc"`
		PceID                   string         `json:"pceId"`
		TcbType                 int            `json:"tcbType"`
		TcbEvaluationDataNumber int            `json:"tcbEvaluationDataNumber"`
		TdxModule               *jsonModule    `json:"tdxModule,omitempty"`
		TdxModuleIdentities     []jsonModule   `json:"tdxModuleIdentities,omitempty"`
		TcbLevels               []jsonTcbLevel `json:"tcbLevels"`
	}
	jsonEnclaveIdentity struct {
		ID                      string         `json:"id"`
		Version                 int            `json:"version"`
		IssueDate               string         `json:"issueDate"`
		NextUpdate              string         `json:"nextUpdate"`
		TcbEvaluationDataNumber int            `json:"tcbEvaluationDataNumber"`
		Miscselect              string         `json:"miscselect"`
		MiscselectMask          string         `json:"miscselectMask"`
		Attributes              string         `json:"attributes"`
		AttributesMask          string         `json:"attributesMask"`
		Mrsigner                string         `json:"mrsigner"`
		IsvProdID               uint16         `json:"isvprodid"`
		TcbLevels               []jsonTcbLevel `json:"tcbLevels"`
	}
)

func svns(v []byte) []jsonTcbComponent {
	out := make([]jsonTcbComponent, 16)
	for i := range out {
		if i < len(v) {
			out[i].Svn = v[i]
		}
	}
	return out
}

// intelSigner is a simulated "Intel SGX TCB Signing" certificate under the
// TDX (and SGX) root, made with the collateral it signs: sign returns
// {"<name>": body, "signature": hex(r||s)} over body's exact bytes, and
// chain is the issuer chain as Intel's headers carry it (URL-encoded PEM).
type intelSigner struct {
	key   *ecdsa.PrivateKey
	cert  *x509.Certificate
	chain string
}

func (ca *CA) newIntelSigner(now time.Time) (*intelSigner, error) {
	signKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	sn, err := serial(rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := create(rand.Reader, &x509.Certificate{
		SerialNumber:          sn,
		Subject:               intelName("Intel SGX TCB Signing"),
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(2 * collateralValidity),
		SignatureAlgorithm:    x509.ECDSAWithSHA256,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
		BasicConstraintsValid: true,
		SubjectKeyId:          skid(signKey.Public()),
	}, ca.tdxRoot, signKey.Public(), ca.tdxRootKey)
	if err != nil {
		return nil, err
	}
	return &intelSigner{key: signKey, cert: signer, chain: issuerChain(signer, ca.tdxRoot)}, nil
}

func issuerChain(certs ...*x509.Certificate) string {
	var b bytes.Buffer
	for _, c := range certs {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return url.QueryEscape(b.String())
}

func (s *intelSigner) sign(name string, v any) ([]byte, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	h := sha256.Sum256(body)
	sig, err := rawSig(s.key, h[:])
	if err != nil {
		return nil, err
	}
	return []byte(`{"` + name + `":` + string(body) + `,"signature":"` + hex.EncodeToString(sig) + `"}`), nil
}

// put signs v and stores it at url with the issuer chain in header.
func (s *intelSigner) put(m collateral.Map, url, name, header string, v any, now time.Time) error {
	b, err := s.sign(name, v)
	if err != nil {
		return err
	}
	m[url] = &collateral.Response{Body: b, Fetched: now, Header: http.Header{header: {s.chain}}}
	return nil
}

// intelCRLs adds the PCK CRL (signed by the platform CA) and the root CA
// CRL (signed by the root) that TDX and SGX quotes share, valid from
// thisUpdate to nextUpdate; revokePCK lists the PCK certificate,
// revokePCA the platform CA.
func (ca *CA) intelCRLs(m collateral.Map, now, thisUpdate, nextUpdate time.Time, revokePCK, revokePCA bool) error {
	crl := func(issuer *x509.Certificate, key *ecdsa.PrivateKey, revoked *x509.Certificate, revoke bool, n int64) ([]byte, error) {
		t := &x509.RevocationList{Number: big.NewInt(now.Unix()*4 + n), ThisUpdate: thisUpdate, NextUpdate: nextUpdate}
		if revoke {
			t.RevokedCertificateEntries = []x509.RevocationListEntry{{SerialNumber: revoked.SerialNumber, RevocationTime: now.Add(-time.Minute)}}
		}
		return x509.CreateRevocationList(rand.Reader, t, issuer, key)
	}
	pckCRL, err := crl(ca.tdxPCA, ca.pcaKey, ca.tdxPCK, revokePCK, 2)
	if err != nil {
		return err
	}
	rootCRL, err := crl(ca.tdxRoot, ca.tdxRootKey, ca.tdxPCA, revokePCA, 3)
	if err != nil {
		return err
	}
	m[pcs.PckCrlURL("platform")] = &collateral.Response{Body: pckCRL, Fetched: now, Header: http.Header{"Sgx-Pck-Crl-Issuer-Chain": {issuerChain(ca.tdxPCA, ca.tdxRoot)}}}
	m[tdxRootCRLURL] = &collateral.Response{Body: rootCRL, Fetched: now}
	return nil
}

// tdxCollateral adds the simulated Intel collateral for TDX to m: the
// documents a verifier fetches for a simulated quote, at the URLs it
// fetches them from, signed like Intel's (TCB info and QE identity by s, a
// "TCB Signing" certificate under the root).
func (ca *CA) tdxCollateral(m collateral.Map, s *intelSigner, now time.Time) error {
	issue, next := now.Add(-time.Hour).Format(time.RFC3339), now.Add(collateralValidity).Format(time.RFC3339)
	date := now.Add(-24 * time.Hour).Format(time.RFC3339)
	zeros := func(n int) string { return strings.Repeat("00", n) }
	var moduleLevels []jsonTcbLevel
	for _, l := range simModuleLevels {
		moduleLevels = append(moduleLevels, jsonTcbLevel{Tcb: jsonTcb{Isvsvn: l.isvsvn}, TcbDate: date, TcbStatus: string(l.status)})
	}
	err := s.put(m, pcs.TcbInfoURL(simFMSPC), "tcbInfo", "Tcb-Info-Issuer-Chain", jsonTcbInfo{
		ID: "TDX", Version: 3, IssueDate: issue, NextUpdate: next,
		Fmspc: simFMSPC, PceID: "0000", TcbType: 0, TcbEvaluationDataNumber: 1,
		// MRSIGNERSEAM and SEAMATTRIBUTES of the simulated module are zero.
		TdxModule: &jsonModule{Mrsigner: zeros(48), Attributes: zeros(8), AttributesMask: strings.Repeat("ff", 8)},
		TdxModuleIdentities: []jsonModule{{
			ID: "TDX_" + hex.EncodeToString(DefaultTeeTCBSVN[1:2]), Mrsigner: zeros(48), Attributes: zeros(8), AttributesMask: strings.Repeat("ff", 8),
			TcbLevels: moduleLevels,
		}},
		TcbLevels: []jsonTcbLevel{
			{Tcb: jsonTcb{SgxTcbcomponents: svns(DefaultTeeTCBSVN[:]), Pcesvn: DefaultPCESVN, TdxTcbcomponents: svns(DefaultTeeTCBSVN[:])}, TcbDate: date, TcbStatus: string(pcs.TcbComponentStatusUpToDate)},
			{Tcb: jsonTcb{SgxTcbcomponents: svns(nil), TdxTcbcomponents: svns(nil)}, TcbDate: date, TcbStatus: string(pcs.TcbComponentStatusOutOfDate)},
		},
	}, now)
	if err != nil {
		return err
	}
	return s.put(m, pcs.QeIdentityURL(), "enclaveIdentity", "Sgx-Enclave-Identity-Issuer-Chain", jsonEnclaveIdentity{
		ID: "TD_QE", Version: 2, IssueDate: issue, NextUpdate: next, TcbEvaluationDataNumber: 1,
		// The simulated QE report: MISCSELECT, ATTRIBUTES and MRSIGNER zero, ISVPRODID 1.
		Miscselect: zeros(4), MiscselectMask: strings.Repeat("ff", 4),
		Attributes: zeros(16), AttributesMask: "fbffffffffffffff" + zeros(8),
		Mrsigner: zeros(32), IsvProdID: 1,
		TcbLevels: []jsonTcbLevel{
			{Tcb: jsonTcb{Isvsvn: uint32(DefaultQESVN)}, TcbDate: date, TcbStatus: string(pcs.TcbComponentStatusUpToDate)},
			{Tcb: jsonTcb{Isvsvn: 0}, TcbDate: date, TcbStatus: string(pcs.TcbComponentStatusOutOfDate)},
		},
	}, now)
}
