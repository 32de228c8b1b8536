package verify

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	tdxabi "github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	tdxverify "github.com/google/go-tdx-guest/verify"
)

// tdQuoteBody is what TDX v4 and v5 quote bodies share.
type tdQuoteBody interface {
	GetTeeTcbSvn() []byte
	GetTdAttributes() []byte
	GetMrTd() []byte
	GetReportData() []byte
}

func verifyTDX(raw []byte, opts *Options) (*evidence.Claims, error) {
	if len(raw) > evidence.MaxEvidenceSize {
		return nil, fail(CheckFormat, "TDX quote is %d bytes, more than the limit of %d", len(raw), evidence.MaxEvidenceSize)
	}
	q, err := parseTDXQuote(raw)
	if err != nil {
		return nil, fail(CheckFormat, "TDX quote: %v", err)
	}
	var (
		header *pb.Header
		body   tdBody
		extra  []byte
	)
	switch q := q.(type) {
	case *pb.QuoteV4:
		header, body, extra = q.GetHeader(), q.GetTdQuoteBody(), q.GetExtraBytes()
	case *pb.QuoteV5:
		header, body, extra = q.GetHeader(), q.GetTdQuoteBodyDescriptor().GetTdQuoteBodyV5(), q.GetExtraBytes()
	default:
		return nil, fail(CheckPlatform, "unsupported TDX quote type %T", q)
	}
	if body == nil || header == nil {
		return nil, fail(CheckFormat, "TDX quote: no header or body")
	}
	if len(extra) != 0 {
		return nil, fail(CheckFormat, "TDX quote: %d bytes after the signed data", len(extra))
	}
	chain, err := tdxverify.ExtractChainFromQuote(q)
	if err != nil {
		return nil, fail(CheckFormat, "TDX quote: PCK certificate chain: %v", err)
	}

	// Pick the roots: the simulation roots if the quote's chain ends at one
	// of them (by identity: the library verifies the chain below, so a
	// mismatch only means a refusal), else Intel's.
	now := opts.now()
	roots := x509.NewCertPool()
	simulated := false
	for _, r := range opts.SimRoots {
		if _, ok := r.PublicKey.(*ecdsa.PublicKey); ok && r.Equal(chain.RootCertificate) {
			simulated = true
		}
	}
	if simulated {
		for _, r := range opts.SimRoots {
			if _, ok := r.PublicKey.(*ecdsa.PublicKey); ok {
				roots.AddCert(r)
			}
		}
	} else {
		if isSimulated(chain.RootCertificate) {
			return nil, &Error{Check: CheckChain, Err: errSimNotTrusted()}
		}
		intel := opts.IntelRoots
		if intel == nil {
			intel = []*x509.Certificate{IntelRoot}
		}
		for _, r := range intel {
			roots.AddCert(r)
		}
	}

	// With collateral, one go-tdx-guest pass checks chain, signatures and
	// collateral; only a failure is checked again without collateral, to
	// tell a bad chain or signature from bad collateral.
	src := opts.Collateral
	if simulated {
		src = opts.SimCollateral
	}
	details := map[string]string{}
	if src != nil {
		err = checkTDXCollateral(q, roots, now, src, &opts.TDX, details)
	}
	if src == nil || err != nil {
		if berr := tdxverify.TdxQuote(q, &tdxverify.Options{TrustedRoots: roots, Now: tdxTimes(now)}); berr != nil {
			if isTDXSignatureError(berr) {
				return nil, fail(CheckSignature, "TDX quote: %v", berr)
			}
			return nil, fail(CheckChain, "TDX quote: %v", berr)
		}
		if err != nil {
			return nil, err
		}
		details["collateral"] = "none"
	}
	fields, err := checkTDFields(body, &opts.TDX)
	if err != nil {
		return nil, err
	}
	for k, v := range fields {
		details[k] = v
	}

	svn := body.GetTeeTcbSvn()
	tcb := make(map[string]uint64, len(svn)+2)
	for i, v := range svn {
		tcb[fmt.Sprintf("tee_tcb_svn.%d", i)] = uint64(v)
	}
	if b := header.GetQeSvn(); len(b) == 2 {
		tcb["qe_svn"] = uint64(binary.LittleEndian.Uint16(b))
	}
	if b := header.GetPceSvn(); len(b) == 2 {
		tcb["pce_svn"] = uint64(binary.LittleEndian.Uint16(b))
	}
	attrs := body.GetTdAttributes()
	c := &evidence.Claims{
		Platform:    evidence.PlatformTDX,
		Simulated:   simulated,
		Measurement: bytes.Clone(body.GetMrTd()),
		TCB:         tcb,
		// TDATTRIBUTES bits 7:0 are the TUD group (DEBUG and bits reserved
		// for debug features): any set means the TD is under debug.
		Debug:   len(attrs) > 0 && attrs[0] != 0,
		Details: details,
	}
	copy(c.ReportData[:], body.GetReportData())
	return c, nil
}

// parseTDXQuote is go-tdx-guest's QuoteToProto, which indexes past the end
// of a quote whose QE authentication data or PCK chain header runs beyond
// it (a size field from the untrusted, unsigned tail of the quote) and
// panics; its panic is turned into the error it should have been.
func parseTDXQuote(raw []byte) (q any, err error) {
	defer func() {
		if r := recover(); r != nil {
			q, err = nil, fmt.Errorf("malformed: a size field runs past the end of the quote (%v)", r)
		}
	}()
	return tdxabi.QuoteToProto(raw)
}

// isTDXSignatureError tells a bad quote or QE report signature (the
// quote's contents were changed) from a bad chain; go-tdx-guest reports
// both as plain errors.
func isTDXSignatureError(err error) bool {
	if errors.Is(err, tdxverify.ErrHashVerificationFail) || errors.Is(err, tdxverify.ErrSHA56VerificationFail) {
		return true
	}
	msg := err.Error()
	for _, s := range []string{"QE report", "attestation key in the quote", "Quote's signature"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
