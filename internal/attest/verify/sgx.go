package verify

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"math/big"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/google/go-tdx-guest/pcs"
)

// Common names of Intel's PCK chain; the simulation uses the same ones.
const (
	cnPCKLeaf   = "Intel SGX PCK Certificate"
	cnRootCA    = "Intel SGX Root CA"
	cnTCBSigner = "Intel SGX TCB Signing"
)

// verifySGX checks an SGX quote: the PCK chain to a trusted root, the QE
// report's signature by the PCK key, the attestation key's binding into the
// QE report data, the quote's signature by the attestation key and, when
// the options give collateral, the TCB status (TCB info, QE identity,
// CRLs, through the same collateral source as TDX's). It returns the
// claims of the application enclave.
func verifySGX(raw []byte, opts *Options) (*evidence.Claims, error) {
	q, err := ParseSGXQuote(raw)
	if err != nil {
		return nil, fail(CheckFormat, "%v", err)
	}
	if q.QEVendorID != IntelQEVendorID {
		return nil, fail(CheckPlatform, "SGX quote from QE vendor %x, want Intel's quoting enclave", q.QEVendorID)
	}
	if q.Body.Flags()&sgxAttrInit == 0 {
		return nil, fail(CheckFormat, "SGX quote: the enclave's ATTRIBUTES.INIT is clear")
	}
	now := opts.now()
	leaf, root := q.PCKChain[0], q.PCKChain[len(q.PCKChain)-1]

	// The roots: the simulation roots if the chain ends at one of them (by
	// identity; the chain is verified below either way), else Intel's.
	roots := x509.NewCertPool()
	simulated := false
	for _, r := range opts.SimRoots {
		if r.Equal(root) {
			simulated = true
		}
	}
	trusted := opts.SimRoots
	if !simulated {
		if isSimulated(root) {
			return nil, &Error{Check: CheckChain, Err: errSimNotTrusted()}
		}
		trusted = opts.intelRoots()
	}
	for _, r := range trusted {
		roots.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range q.PCKChain[1:] {
		inter.AddCert(c)
	}
	if leaf.Subject.CommonName != cnPCKLeaf {
		return nil, fail(CheckChain, "SGX quote: the PCK certificate's subject is %q, want %q", leaf.Subject.CommonName, cnPCKLeaf)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fail(CheckChain, "SGX quote: PCK certificate: %v", err)
	}
	exts, err := pcs.PckCertificateExtensions(leaf)
	if err != nil {
		return nil, fail(CheckChain, "SGX quote: PCK certificate: %v", err)
	}
	pck, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || pck.Curve != elliptic.P256() {
		return nil, fail(CheckChain, "SGX quote: the PCK key is not an ECDSA P-256 key")
	}

	// The QE report is signed by the PCK key; its report data binds the
	// attestation key; the attestation key signs the quote.
	if !verifyRawSig(pck, q.qeReportRaw, q.QEReportSig[:]) {
		return nil, fail(CheckSignature, "SGX quote: the QE report's signature does not verify with the PCK key")
	}
	h := sha256.New()
	h.Write(q.AttestationKey[:])
	h.Write(q.QEAuthData)
	var want [64]byte
	copy(want[:], h.Sum(nil))
	if q.QEReport.ReportData != want {
		return nil, fail(CheckSignature, "SGX quote: the QE report data does not bind the attestation key (want SHA-256 of the key and the QE authentication data)")
	}
	ak, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append([]byte{4}, q.AttestationKey[:]...))
	if err != nil {
		return nil, fail(CheckFormat, "SGX quote: attestation key: %v", err)
	}
	if !verifyRawSig(ak, q.signed, q.Signature[:]) {
		return nil, fail(CheckSignature, "SGX quote: the quote's signature does not verify with the attestation key")
	}

	tcb := map[string]uint64{
		"pce_svn":     uint64(q.PCESVN),
		"qe_svn":      uint64(q.QESVN),
		"isv_svn":     uint64(q.Body.ISVSVN),
		"isv_prod_id": uint64(q.Body.ISVProdID),
	}
	for i, v := range exts.TCB.CPUSvnComponents {
		tcb[fmt.Sprintf("cpu_svn.%d", i)] = uint64(v)
	}
	if q.Body.ConfigSVN != 0 {
		tcb["config_svn"] = uint64(q.Body.ConfigSVN)
	}
	c := &evidence.Claims{
		Platform:    evidence.PlatformSGX,
		Simulated:   simulated,
		Measurement: bytes.Clone(q.Body.MREnclave[:]),
		Identity:    map[string][]byte{"mrsigner": bytes.Clone(q.Body.MRSigner[:])},
		TCB:         tcb,
		Debug:       q.Body.Debug(),
		ReportData:  q.Body.ReportData,
	}
	for name, v := range map[string][]byte{"config_id": q.Body.ConfigID[:], "isv_ext_prod_id": q.Body.ISVExtProdID[:], "isv_family_id": q.Body.ISVFamilyID[:]} {
		if !allZero(v) {
			c.Identity[name] = bytes.Clone(v)
		}
	}

	identityDetails(c)
	c.Details["attributes"] = hex.EncodeToString(q.Body.Attributes[:])
	c.Details["misc_select"] = fmt.Sprintf("%#08x", q.Body.MiscSelect)
	c.Details["collateral"] = "none"
	src := opts.Collateral
	if simulated {
		src = opts.SimCollateral
	}
	if src != nil {
		col, err := fetchSGXCollateral(context.Background(), src, q.PCKChain, exts.FMSPC)
		if err != nil {
			return nil, fail(CheckCollateral, "SGX collateral for FMSPC %s: %v", exts.FMSPC, err)
		}
		if err := col.evaluate(q, exts, roots, now, &opts.SGX, c.Details); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// identityDetails copies c.Identity into c.Details in hex, so that the
// certificate and the EAR show them.
func identityDetails(c *evidence.Claims) {
	if c.Details == nil {
		c.Details = map[string]string{}
	}
	for k, v := range c.Identity {
		c.Details[k] = hex.EncodeToString(v)
	}
}

func (o *Options) intelRoots() []*x509.Certificate {
	if o.IntelRoots != nil {
		return o.IntelRoots
	}
	return []*x509.Certificate{IntelRoot}
}

// verifyRawSig checks an ECDSA signature in the r || s form of SGX and TDX
// quotes over SHA-256(msg).
func verifyRawSig(pub *ecdsa.PublicKey, msg, sig []byte) bool {
	if len(sig) != 64 {
		return false
	}
	d := sha256.Sum256(msg)
	r := new(big.Int).SetBytes(sig[:32])
	s := new(big.Int).SetBytes(sig[32:])
	return ecdsa.Verify(pub, d[:], r, s)
}
