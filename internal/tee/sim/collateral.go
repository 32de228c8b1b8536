package sim

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
)

// CollateralDir is the folder, beside roots.pem, where a stored CA keeps
// its collateral in the layout of package collateral, so that a verifier
// trusting the roots reads it as an offline collateral folder.
const CollateralDir = "collateral"

// CollateralPath returns the collateral folder of the CA stored in dir.
func CollateralPath(dir string) string { return filepath.Join(dir, CollateralDir) }

// collateralValidity is how long simulated collateral is valid; Load makes
// it again when less than half is left.
const collateralValidity = 365 * 24 * time.Hour

// errNoCollateralKeys: the CA was stored before it kept the keys that sign
// collateral.
var errNoCollateralKeys = errors.New("this simulation CA was made before simulated collateral existed and cannot sign it (delete its folder to have a new one made)")

// Collateral returns the collateral the simulation publishes, by the URL a
// verifier asks for it, as the vendors' servers would serve it: AMD's CRLs
// for the simulated product line (VCEK and VLEK chains), signed by the
// simulated ARK; and Intel's TCB info for the simulated FMSPC, TD QE
// identity, PCK CRL and root CA CRL, signed under the simulated TDX root
// (tdx_collateral.go). It is made once per CA and process.
func (ca *CA) Collateral() (collateral.Map, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if ca.collateral != nil {
		return ca.collateral, nil
	}
	m, err := ca.makeCollateral(false)
	if err != nil {
		return nil, err
	}
	ca.collateral = m
	return m, nil
}

// RevokingCollateral is Collateral as it would be after AMD revoked the
// simulated ASK and ASVK: for tests of revocation.
func (ca *CA) RevokingCollateral() (collateral.Map, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return ca.makeCollateral(true)
}

func (ca *CA) makeCollateral(revoke bool) (collateral.Map, error) {
	if ca.arkKey == nil {
		return nil, errNoCollateralKeys
	}
	now := time.Now().UTC().Truncate(time.Second)
	m := collateral.Map{}
	for i, signer := range []abi.ReportSigner{abi.VcekReportSigner, abi.VlekReportSigner} {
		tmpl := &x509.RevocationList{
			Number:             big.NewInt(now.Unix()*2 + int64(i)),
			ThisUpdate:         now.Add(-time.Hour),
			NextUpdate:         now.Add(collateralValidity),
			SignatureAlgorithm: x509.SHA384WithRSAPSS,
		}
		if ica := map[abi.ReportSigner]*x509.Certificate{abi.VcekReportSigner: ca.snpASK, abi.VlekReportSigner: ca.snpASVK}[signer]; revoke && ica != nil {
			tmpl.RevokedCertificateEntries = []x509.RevocationListEntry{{SerialNumber: ica.SerialNumber, RevocationTime: now.Add(-time.Minute)}}
		}
		der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.snpARK, ca.arkKey)
		if err != nil {
			return nil, fmt.Errorf("simulated AMD CRL: %w", err)
		}
		m[kds.CrlLinkByKey(SNPProductLine, signer)] = &collateral.Response{Body: der, Fetched: now}
	}
	if ca.tdxRootKey != nil {
		if err := ca.tdxCollateral(m, now, revoke); err != nil {
			return nil, fmt.Errorf("simulated Intel collateral: %w", err)
		}
	}
	return m, nil
}

// refreshCollateral writes the collateral of a stored CA into its folder
// when it is missing or has less than half its validity left. A CA without
// the keys to sign collateral keeps working without it.
func (ca *CA) refreshCollateral() error {
	dir := CollateralPath(ca.Dir)
	crlURL := kds.CrlLinkByKey(SNPProductLine, abi.VcekReportSigner)
	if r, err := collateral.Offline(dir).Get(context.Background(), crlURL); err == nil {
		if crl, err := x509.ParseRevocationList(r.Body); err == nil && time.Until(crl.NextUpdate) > collateralValidity/2 && crl.CheckSignatureFrom(ca.snpARK) == nil {
			return nil
		}
	}
	m, err := ca.Collateral()
	if errors.Is(err, errNoCollateralKeys) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for url, r := range m {
		if err := collateral.Put(dir, url, r); err != nil {
			return fmt.Errorf("collateral: %w", err)
		}
	}
	return nil
}
