package verify

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"sync"
	"time"

	"github.com/google/go-sev-guest/kds"
)

// checkSNPRevocation checks that AMD's CRL for the chain's product line,
// fetched through the caller's collateral source (the simulation CA's for
// simulated evidence), is signed by the ARK the chain ends at, is not past
// its next update, and does not revoke the ASK (or ASVK). AMD revokes
// intermediates, never VCEKs (a TCB update supersedes those). It records
// what it used in details.
//
// The CRL is the one at AMD's KDS URL for the product line and key kind
// (kds.CrlLinkByKey), the URL AMD's ASKs name as their distribution point;
// go-sev-guest's CheckRevocations reads the point from the ASK instead and
// keeps the CRL on shared root objects, which a simulation chain (whose
// ASK names no point) and a per-request time cannot use.
func checkSNPRevocation(c *snpChain, opts *Options, now time.Time, details map[string]string) error {
	src := opts.Collateral
	if c.simulated {
		src = opts.SimCollateral
	}
	if src == nil {
		details["collateral"] = "none"
		return nil
	}
	url := kds.CrlLinkByKey(c.productLine, c.key)
	r, err := src.Get(context.Background(), url)
	if err != nil {
		return fail(CheckCollateral, "AMD CRL for %s: %v", c.productLine, err)
	}
	crl, err := verifiedCRL(r.Body, c.ark)
	if err != nil {
		return fail(CheckCollateral, "AMD CRL %s: %v", url, err)
	}
	if now.After(crl.NextUpdate) {
		return fail(CheckCollateral, "AMD CRL %s: stale: its next update was %s", url, crl.NextUpdate.UTC().Format(time.RFC3339))
	}
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(c.ica.SerialNumber) == 0 {
			return fail(CheckCollateral, "the %s certificate (serial %x) is revoked by AMD's CRL since %s", c.ica.Subject.CommonName, c.ica.SerialNumber, e.RevocationTime.UTC().Format(time.RFC3339))
		}
	}
	details["collateral"] = "verified"
	details["crl_this_update"] = crl.ThisUpdate.UTC().Format(time.RFC3339)
	details["crl_next_update"] = crl.NextUpdate.UTC().Format(time.RFC3339)
	return nil
}

// verifiedCRLs remembers CRLs whose signature checked out, by their bytes
// and the issuer that signed them, so that each request does not redo the
// RSA check: a CRL changes at most a few times a day.
var verifiedCRLs = struct {
	sync.Mutex
	m map[[sha256.Size]byte]*x509.RevocationList
}{m: map[[sha256.Size]byte]*x509.RevocationList{}}

const maxVerifiedCRLs = 64

func verifiedCRL(der []byte, issuer *x509.Certificate) (*x509.RevocationList, error) {
	h := sha256.New()
	field(h, der)
	field(h, issuer.Raw)
	var k [sha256.Size]byte
	h.Sum(k[:0])
	verifiedCRLs.Lock()
	crl, ok := verifiedCRLs.m[k]
	verifiedCRLs.Unlock()
	if ok {
		return crl, nil
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, err
	}
	if err := crl.CheckSignatureFrom(issuer); err != nil {
		return nil, err
	}
	verifiedCRLs.Lock()
	if len(verifiedCRLs.m) >= maxVerifiedCRLs {
		clear(verifiedCRLs.m)
	}
	verifiedCRLs.m[k] = crl
	verifiedCRLs.Unlock()
	return crl, nil
}
