package verify

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/castellan-dev/castellan/internal/pemcerts"
	"github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"
)

// SGXCollateral is Intel's collateral for the quotes of one SGX platform
// family (FMSPC): the TCB info and QE identity, each with its signature and
// issuer chain, and the CRLs of the PCK chain. It is fetched through a
// collateral.Source from Intel's PCS v4 URLs (the same source, cache and
// offline folder as TDX collateral). Its JSON form is that of Intel's
// sgx_ql_qve_collateral_t as the DCAP quote verification library and
// other verifiers (dcap-qvl) write it: PEM chains, the signed JSON bodies
// as strings, hex signatures (r || s) and hex DER CRLs.
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

// pckCAKind is the PCK CA whose CRL Intel serves for chain: "processor"
// or "platform", from the intermediate's name as go-tdx-guest decides it.
func pckCAKind(chain []*x509.Certificate) string {
	if len(chain) > 1 && chain[1].Subject.CommonName == "Intel SGX PCK Processor CA" {
		return "processor"
	}
	return "platform"
}

// fetchSGXCollateral gets the collateral for a quote's PCK chain and FMSPC
// from src: the TCB info and QE identity from Intel's PCS URLs (issuer
// chains in the response headers, as Intel sends them), the PCK CRL of
// the chain's CA, and the root CA CRL from the distribution point the
// chain's root names (Intel's by default).
func fetchSGXCollateral(ctx context.Context, src collateral.Source, chain []*x509.Certificate, fmspc string) (*SGXCollateral, error) {
	get := func(u string) (*collateral.Response, error) {
		r, err := src.Get(ctx, u)
		if err != nil {
			return nil, err
		}
		return r, nil
	}
	issuer := func(r *collateral.Response, key, u string) (string, error) {
		v := r.Header.Get(key)
		if v == "" {
			return "", fmt.Errorf("%s: no %s header", u, key)
		}
		return url.QueryUnescape(v)
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
	u := collateral.SGXTCBInfoURL(fmspc)
	r, err := get(u)
	if err != nil {
		return nil, err
	}
	if c.TCBInfoIssuerChain, err = issuer(r, pcs.TcbInfoIssuerChainPhrase, u); err != nil {
		return nil, err
	}
	if c.TCBInfo, c.TCBInfoSignature, err = signed(r.Body, "tcbInfo", u); err != nil {
		return nil, err
	}
	u = collateral.SGXQEIdentityURL()
	if r, err = get(u); err != nil {
		return nil, err
	}
	if c.QEIdentityIssuerChain, err = issuer(r, pcs.SgxQeIdentityIssuerChainPhrase, u); err != nil {
		return nil, err
	}
	if c.QEIdentity, c.QEIdentitySignature, err = signed(r.Body, "enclaveIdentity", u); err != nil {
		return nil, err
	}
	u = pcs.PckCrlURL(pckCAKind(chain))
	if r, err = get(u); err != nil {
		return nil, err
	}
	c.PCKCRL = hex.EncodeToString(r.Body)
	rootURL := collateral.IntelRootCRLURL
	if points := chain[len(chain)-1].CRLDistributionPoints; len(points) > 0 {
		rootURL = points[0]
	}
	if r, err = get(rootURL); err != nil {
		return nil, err
	}
	c.RootCACRL = hex.EncodeToString(r.Body)
	return &c, nil
}

// evaluate checks the collateral against a verified quote and its PCK
// certificate's extensions, with roots the quote's chain verified to, and
// decides on Intel's TCB statuses of the platform and quoting enclave with
// p (as TDX's are). It refuses collateral that is not signed by an Intel
// SGX TCB Signing certificate under those roots, out of its validity at
// now, for another FMSPC or PCE, a QE that the QE identity does not
// describe, and a PCK chain certificate on a CRL. It records what it used
// in details, under the names TDX uses.
func (c *SGXCollateral) evaluate(q *SGXQuote, exts *pcs.PckExtensions, roots *x509.CertPool, now time.Time, p *SGXPolicy, details map[string]string) error {
	var info pcs.TcbInfo
	infoSigner, err := c.checkSigned("TCB info", c.TCBInfo, c.TCBInfoSignature, c.TCBInfoIssuerChain, roots, now, &info)
	if err != nil {
		return err
	}
	var qe pcs.EnclaveIdentity
	qeSigner, err := c.checkSigned("QE identity", c.QEIdentity, c.QEIdentitySignature, c.QEIdentityIssuerChain, roots, now, &qe)
	if err != nil {
		return err
	}
	if err := c.checkCRLs(q.PCKChain, [][2]*x509.Certificate{infoSigner, qeSigner}, now); err != nil {
		return err
	}
	for _, t := range []struct {
		what      string
		at, until time.Time
	}{{"TCB info", info.IssueDate, info.NextUpdate}, {"QE identity", qe.IssueDate, qe.NextUpdate}} {
		if now.Before(t.at) || now.After(t.until) {
			return fail(CheckCollateral, "SGX %s is valid from %s to %s, not at %s: fetch it again", t.what, t.at.Format(time.RFC3339), t.until.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		}
	}
	if info.ID != "SGX" || info.Version != 3 {
		return fail(CheckCollateral, "SGX TCB info: id %q version %d, want SGX version 3", info.ID, info.Version)
	}
	if !strings.EqualFold(info.Fmspc, exts.FMSPC) || !strings.EqualFold(info.PceID, exts.PCEID) {
		return fail(CheckCollateral, "SGX TCB info is for FMSPC %s PCE %s, the PCK certificate for FMSPC %s PCE %s", info.Fmspc, info.PceID, exts.FMSPC, exts.PCEID)
	}
	if qe.ID != "QE" || qe.Version != 2 {
		return fail(CheckCollateral, "SGX QE identity: id %q version %d, want QE version 2", qe.ID, qe.Version)
	}

	// The QE must be the one the identity describes (the check TDX's QE
	// report goes through).
	r := &q.QEReport
	qr := &pb.EnclaveReport{MiscSelect: r.MiscSelect, Attributes: r.Attributes[:], MrSigner: r.MRSigner[:], IsvProdId: uint32(r.ISVProdID)}
	if err := qeReportMatches(qr, &qe); err != nil {
		return fail(CheckCollateral, "SGX quote: QE report against Intel's QE identity: %v", err)
	}
	var qeLevel *pcs.TcbLevel
	for i, l := range qe.TcbLevels {
		if uint32(r.ISVSVN) >= l.Tcb.Isvsvn {
			qeLevel = &qe.TcbLevels[i]
			break
		}
	}
	if qeLevel == nil {
		return fail(CheckTCBStatus, "SGX quote: the QE's ISVSVN %d is below every level of Intel's QE identity", r.ISVSVN)
	}

	// The platform's TCB level: the first (highest) level that every
	// component of the PCK certificate's TCB and its PCESVN reach. This
	// matching is SGX's own; the rest is shared with TDX.
	var level *pcs.TcbLevel
	for i, l := range info.TcbLevels {
		if len(l.Tcb.SgxTcbcomponents) != len(exts.TCB.CPUSvnComponents) {
			return fail(CheckCollateral, "SGX TCB info: a level has %d components, the PCK certificate %d", len(l.Tcb.SgxTcbcomponents), len(exts.TCB.CPUSvnComponents))
		}
		ok := exts.TCB.PCESvn >= l.Tcb.Pcesvn
		for i, comp := range l.Tcb.SgxTcbcomponents {
			ok = ok && exts.TCB.CPUSvnComponents[i] >= comp.Svn
		}
		if ok {
			level = &info.TcbLevels[i]
			break
		}
	}
	if level == nil {
		return fail(CheckTCBStatus, "SGX quote: the platform's TCB is below every level in Intel's collateral")
	}
	if err := acceptTCBStatus(p.TCBStatuses, "TCB info", string(level.TcbStatus)); err != nil {
		return err
	}
	if err := acceptTCBStatus(p.TCBStatuses, "QE identity", string(qeLevel.TcbStatus)); err != nil {
		return err
	}
	intelCollateralDetails(details, string(level.TcbStatus), string(qeLevel.TcbStatus), level.TcbDate, level.AdvisoryIDs, info.NextUpdate, qe.NextUpdate)
	return nil
}

// checkSigned verifies a signed collateral body: its issuer chain (an
// Intel SGX TCB Signing certificate) to roots, its signature, and decodes
// it into v. It returns the signing certificate and the root it chains to,
// for the root CA CRL (checkCRLs).
func (c *SGXCollateral) checkSigned(what, body, sigHex, chainPEM string, roots *x509.CertPool, now time.Time, v any) ([2]*x509.Certificate, error) {
	var none [2]*x509.Certificate
	certs, err := pemcerts.Parse([]byte(chainPEM))
	if err != nil || len(certs) == 0 {
		return none, fail(CheckCollateral, "SGX %s issuer chain: %v", what, err)
	}
	signer := certs[0]
	if signer.Subject.CommonName != cnTCBSigner {
		return none, fail(CheckCollateral, "SGX %s is signed by %q, want %q", what, signer.Subject.CommonName, cnTCBSigner)
	}
	inter := x509.NewCertPool()
	for _, ic := range certs[1:] {
		inter.AddCert(ic)
	}
	chains, err := signer.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return none, fail(CheckCollateral, "SGX %s signer: %v", what, err)
	}
	if len(chains[0]) != 2 {
		return none, fail(CheckCollateral, "SGX %s signer: issued by an intermediate, want the root CA", what)
	}
	pub, ok := signer.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return none, fail(CheckCollateral, "SGX %s signer has no ECDSA key", what)
	}
	sig, err := hex.DecodeString(sigHex)
	if err != nil || !verifyRawSig(pub, []byte(body), sig) {
		return none, fail(CheckCollateral, "SGX %s: the signature does not verify", what)
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		return none, fail(CheckCollateral, "SGX %s: %v", what, err)
	}
	return [2]*x509.Certificate{signer, chains[0][1]}, nil
}

// checkCRLs checks that the root CA's CRL (signed by the chain's root) does
// not list the PCK CA, and the PCK CA's CRL does not list the PCK
// certificate; both CRLs must be current (checkCRL, shared with SEV-SNP).
// The root CA CRL must not list the TCB signing certificates either
// (signers: each with the root it chains to), or a leaked TCB signing key
// could vouch for any platform's TCB.
func (c *SGXCollateral) checkCRLs(chain []*x509.Certificate, signers [][2]*x509.Certificate, now time.Time) error {
	leaf, ca, root := chain[0], chain[1], chain[len(chain)-1]
	type check struct {
		what    string
		hexDER  string
		issuer  *x509.Certificate
		subject *x509.Certificate
	}
	checks := []check{{"Intel root CA CRL", c.RootCACRL, root, ca}, {"Intel PCK CRL", c.PCKCRL, ca, leaf}}
	for _, s := range signers {
		checks = append(checks, check{"Intel root CA CRL", c.RootCACRL, s[1], s[0]})
	}
	for _, t := range checks {
		der, err := hex.DecodeString(strings.TrimSpace(t.hexDER))
		if err == nil && len(der) == 0 {
			err = errors.New("missing")
		}
		if err != nil {
			return fail(CheckCollateral, "SGX quote: %s: %v", t.what, err)
		}
		if _, err := checkCRL(t.what, der, t.issuer, t.subject, now); err != nil {
			return err
		}
	}
	return nil
}
