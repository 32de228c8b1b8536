package verify

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/pemcerts"
	"github.com/google/go-tdx-guest/pcs"
	"github.com/google/go-tdx-guest/verify/trust"
)

// SGXCollateral is Intel's collateral for the quotes of one SGX platform
// family (FMSPC): the TCB info and QE identity, each with its signature and
// issuer chain, and the CRLs of the PCK chain. Its JSON form is that of
// Intel's sgx_ql_qve_collateral_t as the DCAP quote verification library
// and other verifiers (dcap-qvl) write it: PEM chains, the signed JSON
// bodies as strings, hex signatures (r || s) and hex DER CRLs.
type SGXCollateral struct {
	PCKCRLIssuerChain     string `json:"pck_crl_issuer_chain"`
	RootCACRL             string `json:"root_ca_crl"`
	PCKCRL                string `json:"pck_crl"`
	TCBInfoIssuerChain    string `json:"tcb_info_issuer_chain"`
	TCBInfo               string `json:"tcb_info"`
	TCBInfoSignature      string `json:"tcb_info_signature"`
	QEIdentityIssuerChain string `json:"qe_identity_issuer_chain"`
	QEIdentity            string `json:"qe_identity"`
	QEIdentitySignature   string `json:"qe_identity_signature"`
}

// SGXCollateralGetter gives the collateral for a platform's FMSPC (12
// upper-case hex digits). Implementations: SGXCollateralDir (an offline
// folder) and PCSCollateral (Intel's Provisioning Certification Service or
// a PCCS); wrap either as the owner needs.
type SGXCollateralGetter interface {
	SGXCollateral(fmspc string) (*SGXCollateral, error)
}

// maxCollateralSize bounds a collateral file or response.
const maxCollateralSize = 1 << 20

var fmspcRE = regexp.MustCompile(`^[0-9A-F]{12}$`)

// SGXCollateralDir is a folder of collateral files, one per FMSPC, named
// sgx-<FMSPC>.json (upper-case hex) in the SGXCollateral JSON form: the
// collateral an owner fetched once, for verifiers without network.
type SGXCollateralDir string

var _ SGXCollateralGetter = SGXCollateralDir("")

// SGXCollateral reads the file for fmspc.
func (d SGXCollateralDir) SGXCollateral(fmspc string) (*SGXCollateral, error) {
	if !fmspcRE.MatchString(fmspc) {
		return nil, fmt.Errorf("FMSPC %q is not 12 upper-case hex digits", fmspc)
	}
	path := filepath.Join(string(d), "sgx-"+fmspc+".json")
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var c SGXCollateral
	dec := json.NewDecoder(&limitedReader{r: f, n: maxCollateralSize})
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

type limitedReader struct {
	r interface{ Read([]byte) (int, error) }
	n int
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("more than 1 MiB")
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= n
	return n, err
}

// PCSCollateral fetches SGX collateral from Intel's Provisioning
// Certification Service (v4 API) or a caching service with the same API,
// through go-tdx-guest's HTTPS getter interface.
type PCSCollateral struct {
	Getter trust.HTTPSGetter
	// BaseURL is the SGX API root; "" = pcs.SgxBaseURL.
	BaseURL string
	// RootCRLURL is where the root CA's CRL is; "" = Intel's.
	RootCRLURL string
	// CA names the PCK CA whose CRL is fetched: "platform" or "processor";
	// "" = "platform".
	CA string
}

var _ SGXCollateralGetter = (*PCSCollateral)(nil)

const intelRootCRLURL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"

// SGXCollateral fetches the TCB info for fmspc, the QE identity and both CRLs.
func (p *PCSCollateral) SGXCollateral(fmspc string) (*SGXCollateral, error) {
	if !fmspcRE.MatchString(fmspc) {
		return nil, fmt.Errorf("FMSPC %q is not 12 upper-case hex digits", fmspc)
	}
	base := p.BaseURL
	if base == "" {
		base = pcs.SgxBaseURL
	}
	ca := p.CA
	if ca == "" {
		ca = "platform"
	}
	rootCRL := p.RootCRLURL
	if rootCRL == "" {
		rootCRL = intelRootCRLURL
	}
	get := func(u string) (map[string][]string, []byte, error) {
		h, b, err := p.Getter.Get(u)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", u, err)
		}
		if len(b) > maxCollateralSize {
			return nil, nil, fmt.Errorf("%s: response of %d bytes", u, len(b))
		}
		return h, b, nil
	}
	chain := func(h map[string][]string, key, u string) (string, error) {
		v := h[key]
		if len(v) == 0 {
			return "", fmt.Errorf("%s: no %s header", u, key)
		}
		return url.QueryUnescape(v[0])
	}
	signed := func(body []byte, field, u string) (string, string, error) {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(body, &m); err != nil {
			return "", "", fmt.Errorf("%s: %w", u, err)
		}
		var sig string
		if err := json.Unmarshal(m["signature"], &sig); err != nil {
			return "", "", fmt.Errorf("%s: signature: %w", u, err)
		}
		if len(m[field]) == 0 {
			return "", "", fmt.Errorf("%s: no %s", u, field)
		}
		return string(m[field]), sig, nil
	}
	var c SGXCollateral
	var err error
	u := base + "/tcb?fmspc=" + fmspc
	h, b, err := get(u)
	if err != nil {
		return nil, err
	}
	if c.TCBInfoIssuerChain, err = chain(h, pcs.TcbInfoIssuerChainPhrase, u); err != nil {
		return nil, err
	}
	if c.TCBInfo, c.TCBInfoSignature, err = signed(b, "tcbInfo", u); err != nil {
		return nil, err
	}
	u = base + "/qe/identity"
	if h, b, err = get(u); err != nil {
		return nil, err
	}
	if c.QEIdentityIssuerChain, err = chain(h, pcs.SgxQeIdentityIssuerChainPhrase, u); err != nil {
		return nil, err
	}
	if c.QEIdentity, c.QEIdentitySignature, err = signed(b, "enclaveIdentity", u); err != nil {
		return nil, err
	}
	u = base + "/pckcrl?ca=" + ca + "&encoding=der"
	if h, b, err = get(u); err != nil {
		return nil, err
	}
	if c.PCKCRLIssuerChain, err = chain(h, pcs.SgxPckCrlIssuerChainPhrase, u); err != nil {
		return nil, err
	}
	c.PCKCRL = hex.EncodeToString(b)
	if _, b, err = get(rootCRL); err != nil {
		return nil, err
	}
	c.RootCACRL = hex.EncodeToString(b)
	return &c, nil
}

// Evaluate checks the collateral against a verified quote and its PCK
// certificate's extensions, with roots the quote's chain verified to, and
// returns Intel's TCB status of the platform and quoting enclave together.
// It refuses collateral that is not signed by an Intel SGX TCB Signing
// certificate under those roots, out of its validity at now, for another
// FMSPC or PCE, a QE that the QE identity does not describe, a PCK chain
// certificate on a CRL, and a TCB Intel has revoked.
func (c *SGXCollateral) Evaluate(q *SGXQuote, exts *pcs.PckExtensions, roots *x509.CertPool, now time.Time) (pcs.TcbComponentStatus, error) {
	var info pcs.TcbInfo
	if err := c.checkSigned("TCB info", c.TCBInfo, c.TCBInfoSignature, c.TCBInfoIssuerChain, roots, now, &info); err != nil {
		return "", err
	}
	var qe pcs.EnclaveIdentity
	if err := c.checkSigned("QE identity", c.QEIdentity, c.QEIdentitySignature, c.QEIdentityIssuerChain, roots, now, &qe); err != nil {
		return "", err
	}
	if err := c.checkCRLs(q.PCKChain, now); err != nil {
		return "", err
	}
	for _, t := range []struct {
		what      string
		at, until time.Time
	}{{"TCB info", info.IssueDate, info.NextUpdate}, {"QE identity", qe.IssueDate, qe.NextUpdate}} {
		if now.Before(t.at) || now.After(t.until) {
			return "", fail(CheckChain, "SGX %s is valid from %s to %s, not at %s: fetch it again", t.what, t.at.Format(time.RFC3339), t.until.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		}
	}
	if info.ID != "SGX" || info.Version != 3 {
		return "", fail(CheckChain, "SGX TCB info: id %q version %d, want SGX version 3", info.ID, info.Version)
	}
	if !strings.EqualFold(info.Fmspc, exts.FMSPC) || !strings.EqualFold(info.PceID, exts.PCEID) {
		return "", fail(CheckChain, "SGX TCB info is for FMSPC %s PCE %s, the PCK certificate for FMSPC %s PCE %s", info.Fmspc, info.PceID, exts.FMSPC, exts.PCEID)
	}
	if qe.ID != "QE" || qe.Version != 2 {
		return "", fail(CheckChain, "SGX QE identity: id %q version %d, want QE version 2", qe.ID, qe.Version)
	}

	// The QE must be the one the identity describes.
	r := &q.QEReport
	if !bytes.Equal(r.MRSigner[:], qe.Mrsigner.Bytes) || r.ISVProdID != qe.IsvProdID {
		return "", fail(CheckChain, "SGX quote: the quoting enclave (MRSIGNER %x, ISVPRODID %d) is not Intel's QE of the QE identity", r.MRSigner, r.ISVProdID)
	}
	if len(qe.MiscselectMask.Bytes) != 4 || len(qe.Miscselect.Bytes) != 4 || len(qe.AttributesMask.Bytes) != 16 || len(qe.Attributes.Bytes) != 16 {
		return "", fail(CheckChain, "SGX QE identity: miscselect or attributes of the wrong size")
	}
	var misc [4]byte
	misc[0], misc[1], misc[2], misc[3] = byte(r.MiscSelect), byte(r.MiscSelect>>8), byte(r.MiscSelect>>16), byte(r.MiscSelect>>24)
	for i := range 4 {
		// The identity writes MISCSELECT big-endian.
		if misc[3-i]&qe.MiscselectMask.Bytes[i] != qe.Miscselect.Bytes[i]&qe.MiscselectMask.Bytes[i] {
			return "", fail(CheckChain, "SGX quote: the QE's MISCSELECT does not match the QE identity")
		}
	}
	for i := range 16 {
		if r.Attributes[i]&qe.AttributesMask.Bytes[i] != qe.Attributes.Bytes[i]&qe.AttributesMask.Bytes[i] {
			return "", fail(CheckChain, "SGX quote: the QE's ATTRIBUTES do not match the QE identity")
		}
	}
	var qeStatus pcs.TcbComponentStatus
	for _, l := range qe.TcbLevels {
		if uint32(r.ISVSVN) >= l.Tcb.Isvsvn {
			qeStatus = l.TcbStatus
			break
		}
	}
	if qeStatus == "" {
		return "", fail(CheckChain, "SGX quote: the QE's ISVSVN %d is below every level of the QE identity", r.ISVSVN)
	}

	// The platform's TCB level: the first (highest) level that every
	// component of the PCK certificate's TCB and its PCESVN reach.
	var status pcs.TcbComponentStatus
	for _, l := range info.TcbLevels {
		if len(l.Tcb.SgxTcbcomponents) != len(exts.TCB.CPUSvnComponents) {
			return "", fail(CheckChain, "SGX TCB info: a level has %d components, the PCK certificate %d", len(l.Tcb.SgxTcbcomponents), len(exts.TCB.CPUSvnComponents))
		}
		ok := exts.TCB.PCESvn >= l.Tcb.Pcesvn
		for i, comp := range l.Tcb.SgxTcbcomponents {
			ok = ok && exts.TCB.CPUSvnComponents[i] >= comp.Svn
		}
		if ok {
			status = l.TcbStatus
			break
		}
	}
	if status == "" {
		return "", fail(CheckChain, "SGX quote: the platform's TCB is below every level of the TCB info")
	}
	status = convergeTCBStatus(status, qeStatus)
	if status == pcs.TcbComponentStatusRevoked {
		return "", fail(CheckChain, "SGX quote: Intel has revoked this platform's TCB (or its QE's)")
	}
	return status, nil
}

// convergeTCBStatus combines the platform's and the QE's status as Intel's
// quote verification library does: an out-of-date QE makes the whole TCB
// out of date, a revoked one revokes it.
func convergeTCBStatus(platform, qe pcs.TcbComponentStatus) pcs.TcbComponentStatus {
	switch qe {
	case pcs.TcbComponentStatusRevoked:
		return pcs.TcbComponentStatusRevoked
	case pcs.TcbComponentStatusOutOfDate:
		switch platform {
		case pcs.TcbComponentStatusUpToDate, pcs.TcbComponentStatusSwHardeningNeeded:
			return pcs.TcbComponentStatusOutOfDate
		case pcs.TcbComponentStatusConfigurationNeeded, pcs.TcbComponentStatusConfigurationAndSWHardeningNeeded:
			return pcs.TcbComponentStatusOutOfDateConfigurationNeeded
		}
	}
	return platform
}

// checkSigned verifies a signed collateral body: its issuer chain (an
// Intel SGX TCB Signing certificate) to roots, its signature, and decodes
// it into v.
func (c *SGXCollateral) checkSigned(what, body, sigHex, chainPEM string, roots *x509.CertPool, now time.Time, v any) error {
	certs, err := pemcerts.Parse([]byte(chainPEM))
	if err != nil || len(certs) == 0 {
		return fail(CheckChain, "SGX %s issuer chain: %v", what, err)
	}
	signer := certs[0]
	if signer.Subject.CommonName != cnTCBSigner {
		return fail(CheckChain, "SGX %s is signed by %q, want %q", what, signer.Subject.CommonName, cnTCBSigner)
	}
	inter := x509.NewCertPool()
	for _, ic := range certs[1:] {
		inter.AddCert(ic)
	}
	if _, err := signer.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fail(CheckChain, "SGX %s signer: %v", what, err)
	}
	pub, ok := signer.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return fail(CheckChain, "SGX %s signer has no ECDSA key", what)
	}
	sig, err := hex.DecodeString(sigHex)
	if err != nil || !verifyRawSig(pub, []byte(body), sig) {
		return fail(CheckSignature, "SGX %s: the signature does not verify", what)
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		return fail(CheckFormat, "SGX %s: %v", what, err)
	}
	return nil
}

// checkCRLs checks that the root CA's CRL (signed by the chain's root) does
// not list the PCK CA, and the PCK CA's CRL does not list the PCK
// certificate; both CRLs must be current.
func (c *SGXCollateral) checkCRLs(chain []*x509.Certificate, now time.Time) error {
	leaf, ca, root := chain[0], chain[1], chain[len(chain)-1]
	for _, t := range []struct {
		what    string
		hexDER  string
		issuer  *x509.Certificate
		subject *x509.Certificate
	}{{"root CA CRL", c.RootCACRL, root, ca}, {"PCK CRL", c.PCKCRL, ca, leaf}} {
		der, err := decodeCRL(t.hexDER)
		if err != nil {
			return fail(CheckChain, "SGX %s: %v", t.what, err)
		}
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			return fail(CheckChain, "SGX %s: %v", t.what, err)
		}
		if err := crl.CheckSignatureFrom(t.issuer); err != nil {
			return fail(CheckChain, "SGX %s is not signed by %q: %v", t.what, t.issuer.Subject.CommonName, err)
		}
		if now.After(crl.NextUpdate) {
			return fail(CheckChain, "SGX %s expired at %s: fetch it again", t.what, crl.NextUpdate.UTC().Format(time.RFC3339))
		}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(t.subject.SerialNumber) == 0 {
				return fail(CheckChain, "SGX quote: the %q certificate is revoked (%s)", t.subject.Subject.CommonName, t.what)
			}
		}
	}
	return nil
}

// decodeCRL accepts a CRL as hex DER (the collateral's form) or PEM.
func decodeCRL(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("missing")
	}
	if b, _ := pem.Decode([]byte(s)); b != nil {
		return b.Bytes, nil
	}
	return hex.DecodeString(s)
}
