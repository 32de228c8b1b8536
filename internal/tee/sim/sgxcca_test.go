package sim

import (
	"bytes"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The CCA keys and the keys that sign SGX collateral survive a reload.
func TestSGXAndCCAKeysStored(t *testing.T) {
	dir := t.TempDir()
	a, err := loadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := loadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !a.CCAPlatformKey().Equal(b.CCAPlatformKey()) || !b.ccaRAKKey.Equal(a.ccaRAKKey) || !b.tdxRootKey.Equal(a.tdxRootKey) {
		t.Error("reloading changed the CCA or root keys")
	}
	if _, err := b.SignCCA([64]byte{}, CCAOptions{RIM: make([]byte, 64)}); err != nil {
		t.Error(err)
	}
	if _, err := b.SignSGXCollateral(SGXCollateralOptions{}); err != nil {
		t.Error(err)
	}
	if a.CCAPlatformKey().IsCA {
		t.Error("the CPAK certificate is a CA: verifiers would not tell it from the roots")
	}
}

// A CA stored before SGX collateral and CCA simulation existed loads, and
// says what to do when asked for them.
func TestOldCAWithoutCCAKeys(t *testing.T) {
	ca, err := New()
	if err != nil {
		t.Fatal(err)
	}
	var old bytes.Buffer
	rest := ca.encode()
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if r := blk.Headers[roleHeader]; strings.HasPrefix(r, "cca-") || r == roleTDXRK || r == roleTDXPCAK {
			continue
		}
		pem.Encode(&old, blk)
	}
	o, err := decode(old.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Roots()) != 2 {
		t.Errorf("%d roots, want the two of an old CA", len(o.Roots()))
	}
	if _, err := o.SignCCA([64]byte{}, CCAOptions{}); err == nil || !strings.Contains(err.Error(), "no CCA keys") {
		t.Errorf("SignCCA = %v", err)
	}
	if _, err := o.SignSGXCollateral(SGXCollateralOptions{}); err == nil || !strings.Contains(err.Error(), "before simulated collateral existed") {
		t.Errorf("SignSGXCollateral = %v", err)
	}
	if _, err := o.SignSGX([64]byte{}, SGXOptions{MREnclave: make([]byte, 32)}); err != nil {
		t.Errorf("SignSGX with an old CA: %v", err)
	}
}

// A CA stored before CCA simulation gets its CCA keys in cca.pem on first
// load, the same ones on every later load, and its roots file gains the
// CPAK certificate.
func TestOldCAGetsCCAKeys(t *testing.T) {
	dir := t.TempDir()
	ca, err := New()
	if err != nil {
		t.Fatal(err)
	}
	ca.ccaCPAK, ca.ccaCPAKKey, ca.ccaRAKKey = nil, nil, nil
	if err := os.WriteFile(filepath.Join(dir, caFile), ca.encode(), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := loadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := loadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if a.CCAPlatformKey() == nil || !a.CCAPlatformKey().Equal(b.CCAPlatformKey()) || !a.ccaRAKKey.Equal(b.ccaRAKKey) {
		t.Fatal("the CCA keys differ between loads")
	}
	roots, err := LoadRoots(RootsPath(dir))
	if err != nil || len(roots) != 3 || !roots[2].Equal(a.CCAPlatformKey()) {
		t.Errorf("roots.pem: %d certificates, %v; want the CPAK's third", len(roots), err)
	}
	if old, _ := os.ReadFile(filepath.Join(dir, caFile)); !bytes.Equal(old, ca.encode()) {
		t.Error("ca.pem was rewritten")
	}
}
