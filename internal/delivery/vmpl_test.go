package delivery

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/policy"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

// TestPolicyVerifierVMPL is the client side of issue 10, defect 1: a keep's
// SEV-SNP evidence requested from VMPL 1 or 3, otherwise valid and signed
// under the simulation root the owner's policy trusts, is refused before
// anything is delivered, unless the policy lists that level.
func TestPolicyVerifierVMPL(t *testing.T) {
	dir := t.TempDir()
	ca, err := sim.Load(filepath.Join(dir, "sim"))
	if err != nil {
		t.Fatal(err)
	}
	m := bytes.Repeat([]byte{0x5a}, 48)
	load := func(extra string) *policy.Snapshot {
		pf, mf := filepath.Join(dir, "policy.toml"), filepath.Join(dir, "measurements.toml")
		p := fmt.Sprintf("workloads = [\"any\"]\n[platforms.snp]\nsim_roots = [%q]\n%s", sim.RootsPath(ca.Dir), extra)
		ms := fmt.Sprintf("[[measurement]]\nplatform = \"snp\"\nvalue = \"%x\"\nname = \"test\"\n", m)
		if err := os.WriteFile(pf, []byte(p), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(mf, []byte(ms), 0o600); err != nil {
			t.Fatal(err)
		}
		snap, err := policy.Load(pf, mf)
		if err != nil {
			t.Fatal(err)
		}
		return snap
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	nonce, digest := []byte("client nonce"), "sha256:"+strings.Repeat("ab", 32)
	hello := func(vmpl uint32) *Hello {
		env := &evidence.Envelope{Platform: evidence.PlatformSNP, Key: spki, Nonce: nonce, WorkloadDigest: digest}
		env.Evidence, env.Endorsements, err = ca.SignSNP(evidence.ReportData(spki, nonce, digest), sim.SNPOptions{Measurement: m, VMPL: vmpl})
		if err != nil {
			t.Fatal(err)
		}
		b, err := env.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return &Hello{Evidence: b}
	}
	strict := &PolicyVerifier{Policy: load(""), Name: "policy.toml"}
	v, err := strict.Verify(context.Background(), hello(0), nonce, digest)
	if err != nil {
		t.Fatalf("VMPL 0: %v", err)
	}
	// The simulation CA's collateral (its CRL, beside roots.pem) was checked.
	if d := v.Claims.Details; d["vmpl"] != "0" || d["collateral"] != "verified" {
		t.Errorf("details %v", d)
	}
	for _, vmpl := range []uint32{1, 3} {
		_, err := strict.Verify(context.Background(), hello(vmpl), nonce, digest)
		if !isCheck(err, "vmpl") || !strings.Contains(err.Error(), fmt.Sprintf("VMPL %d", vmpl)) {
			t.Errorf("VMPL %d: got %v, want a vmpl refusal naming it", vmpl, err)
		}
		// The insecure verifier (no policy) refuses it too.
		iv := &InsecureVerifier{SimRoots: ca.Roots()}
		if _, err := iv.Verify(context.Background(), hello(vmpl), nonce, digest); !isCheck(err, "vmpl") {
			t.Errorf("insecure verifier, VMPL %d: %v", vmpl, err)
		}
	}
	lenient := &PolicyVerifier{Policy: load("vmpl = [0, 3]\n"), Name: "policy.toml"}
	if _, err := lenient.Verify(context.Background(), hello(3), nonce, digest); err != nil {
		t.Errorf("VMPL 3 under vmpl = [0, 3]: %v", err)
	}
	if _, err := lenient.Verify(context.Background(), hello(1), nonce, digest); !isCheck(err, "vmpl") {
		t.Errorf("VMPL 1 under vmpl = [0, 3]: %v", err)
	}
}
