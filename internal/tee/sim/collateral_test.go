package sim

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	"github.com/google/go-tdx-guest/pcs"
)

// TestCollateralStored: a stored CA keeps the keys that sign collateral
// and writes its collateral beside roots.pem, where an offline collateral
// source finds each document at the URL a verifier asks for.
func TestCollateralStored(t *testing.T) {
	dir := t.TempDir()
	ca, err := loadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	back, err := decode(ca.encode())
	if err != nil {
		t.Fatal(err)
	}
	if back.arkKey == nil || back.tdxRootKey == nil || back.pcaKey == nil {
		t.Fatal("the keys that sign collateral were not stored")
	}
	src := collateral.Offline(CollateralPath(dir))
	for _, u := range []string{
		kds.CrlLinkByKey(SNPProductLine, abi.VcekReportSigner),
		kds.CrlLinkByKey(SNPProductLine, abi.VlekReportSigner),
		pcs.TcbInfoURL(simFMSPC), pcs.QeIdentityURL(), pcs.PckCrlURL("platform"), tdxRootCRLURL,
	} {
		r, err := src.Get(context.Background(), u)
		if err != nil {
			t.Errorf("%s: %v", u, err)
			continue
		}
		if len(r.Body) == 0 {
			t.Errorf("%s: empty", u)
		}
	}
	r, _ := src.Get(context.Background(), kds.CrlLinkByKey(SNPProductLine, abi.VcekReportSigner))
	crl, err := x509.ParseRevocationList(r.Body)
	if err != nil || crl.CheckSignatureFrom(ca.snpARK) != nil {
		t.Errorf("stored SEV-SNP CRL: %v", err)
	}
	// Loading again keeps fresh collateral as it is.
	r2, _ := collateral.Offline(CollateralPath(dir)).Get(context.Background(), pcs.QeIdentityURL())
	if _, err := loadOrCreate(dir); err != nil {
		t.Fatal(err)
	}
	r3, _ := collateral.Offline(CollateralPath(dir)).Get(context.Background(), pcs.QeIdentityURL())
	if string(r2.Body) != string(r3.Body) {
		t.Error("fresh collateral was made again on load")
	}
}

// TestCAWithoutCollateralKeys: a CA stored before collateral existed still
// signs evidence and loads; it publishes no collateral and says why.
func TestCAWithoutCollateralKeys(t *testing.T) {
	old, err := decode(testCA(t).encode())
	if err != nil {
		t.Fatal(err)
	}
	old.arkKey, old.tdxRootKey, old.pcaKey = nil, nil, nil
	back, err := decode(old.encode())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := back.Collateral(); !errors.Is(err, errNoCollateralKeys) {
		t.Errorf("collateral of an old CA: %v", err)
	}
	if _, _, err := back.SignSNP([64]byte{}, SNPOptions{}); err != nil {
		t.Error(err)
	}
	back.Dir = t.TempDir()
	if err := back.refreshCollateral(); err != nil {
		t.Errorf("refreshing an old CA's collateral: %v", err)
	}
}
