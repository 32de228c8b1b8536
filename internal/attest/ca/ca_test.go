package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/keepcert"
)

func TestLoadOrCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	a, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("state directory mode %v, want 0700", st.Mode().Perm())
	}
	b, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.PEM, b.PEM) {
		t.Error("second start made a new CA")
	}
	// A key readable by others is refused.
	os.Chmod(filepath.Join(dir, KeyFile), 0o644)
	if _, err := LoadOrCreate(dir); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Errorf("world-readable key: %v", err)
	}
	// Half a CA is an error, not a silent new CA.
	os.Remove(filepath.Join(dir, KeyFile))
	if _, err := LoadOrCreate(dir); err == nil || !strings.Contains(err.Error(), "only one") {
		t.Errorf("missing key: %v", err)
	}
}

func TestLoadNotCA(t *testing.T) {
	dir := t.TempDir()
	c, _ := New("x")
	leaf, err := c.ServerCertificate([]string{"localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Store the service's leaf as if it were a CA.
	cp, kp := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(cp, pemCert(leaf.Certificate[0]), 0o644)
	os.WriteFile(kp, pemKey(t, leaf.PrivateKey), 0o600)
	if _, err := Load(cp, kp); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Errorf("leaf as CA: %v", err)
	}
}

func TestIssue(t *testing.T) {
	c, err := New("test")
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	claims := &keepcert.Claims{Attested: true, Platform: "snp", WorkloadDigest: "sha256:" + strings.Repeat("0", 64)}
	der, serial, err := c.Issue(Leaf{PublicKey: k.Public(), Claims: claims, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if leaf.SerialNumber.Cmp(serial) != 0 || serial.BitLen() < 120 {
		t.Errorf("serial %x", serial)
	}
	got, err := keepcert.VerifyChain([]*x509.Certificate{leaf}, keepcert.Expect{Roots: c.Pool()})
	if err != nil || got.Platform != "snp" {
		t.Fatalf("claims %+v, %v", got, err)
	}
	// The service's TLS certificate verifies to the same CA.
	sc, err := c.ServerCertificate([]string{"127.0.0.1", "attest.example"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Leaf.Verify(x509.VerifyOptions{Roots: c.Pool(), DNSName: "attest.example"}); err != nil {
		t.Error(err)
	}
}
