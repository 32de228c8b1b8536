package tdx

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/keepimage"
	"github.com/castellan-dev/castellan/internal/measure/measuretest"
	"github.com/castellan-dev/castellan/internal/testvectors"
)

// The Authenticode oracles are Debian's tools (scripts/test installs
// pesign, sbsigntool and osslsigncode): pesign -h prints the image hash of
// any PE file, osslsigncode verify the hash it recomputes for a signed one,
// sbsign and sbattach add and remove signatures.

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian packages pesign, sbsigntool, osslsigncode; scripts/test installs them)", tool)
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

var (
	pesignHash = regexp.MustCompile(`(?m)^hash: ([0-9a-f]{64})$`)
	ossslHash  = regexp.MustCompile(`(?m)^Calculated message digest\s*: ([0-9A-F]{64})\s*$`)
)

// pesignDigest is pesign's Authenticode SHA-256 of the file.
func pesignDigest(t *testing.T, file string) string {
	t.Helper()
	m := pesignHash.FindStringSubmatch(run(t, "pesign", "-h", "-i", file))
	if m == nil {
		t.Fatalf("pesign -h -i %s printed no hash", file)
	}
	return m[1]
}

// osslsigncodeDigest is the Authenticode SHA-256 osslsigncode recomputes
// for a signed file (its signature need not be trusted: the self-signed
// throwaway signer is not, so verify exits non-zero).
func osslsigncodeDigest(t *testing.T, file string) string {
	t.Helper()
	out, _ := exec.Command("osslsigncode", "verify", "-in", file).CombinedOutput()
	m := ossslHash.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("osslsigncode verify -in %s printed no calculated digest:\n%s", file, out)
	}
	return strings.ToLower(m[1])
}

// throwawaySigner writes a fresh self-signed ECDSA P-256 key and
// certificate (PEM) for sbsign, valid for an hour.
func throwawaySigner(t *testing.T) (keyFile, certFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "castellan throwaway test signer"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyFile, certFile = filepath.Join(dir, "key.pem"), filepath.Join(dir, "cert.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return keyFile, certFile
}

// sbsign signs in with the throwaway signer and returns the signed file.
func sbsign(t *testing.T, in string) string {
	t.Helper()
	key, cert := throwawaySigner(t)
	out := in + ".signed"
	run(t, "sbsign", "--key", key, "--cert", cert, "--output", out, in)
	return out
}

func ours(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	d, err := authenticode(b, sha256.New())
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return hex.EncodeToString(d)
}

// TestAuthenticodeDebianKernel compares the image hash of the Debian cloud
// kernel the VM tests use ($CASTELLAN_KERNEL_DIR, Debian-signed) with
// pesign's, as shipped, with its signature removed (sbattach) and signed
// again with a throwaway key (sbsign, then also osslsigncode's digest).
// Removing or adding a signature must not change the hash.
func TestAuthenticodeDebianKernel(t *testing.T) {
	needTools(t, "pesign", "sbsign", "sbattach", "osslsigncode")
	if os.Getenv(keepimage.KernelDirEnv) == "" {
		t.Skipf("%s is not set (scripts/test fetches a Debian cloud kernel)", keepimage.KernelDirEnv)
	}
	kernel, _, err := keepimage.FindKernel()
	if err != nil {
		t.Skip(err)
	}
	b, err := os.ReadFile(kernel)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	shipped := filepath.Join(dir, "vmlinuz")
	unsigned := filepath.Join(dir, "vmlinuz.unsigned")
	for _, f := range []string{shipped, unsigned} {
		if err := os.WriteFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// sbattach --remove fails on an image without a signature: then the
	// copy is already unsigned.
	if out, err := exec.Command("sbattach", "--remove", unsigned).CombinedOutput(); err != nil && !strings.Contains(string(out), "No signature") {
		t.Fatalf("sbattach --remove: %v\n%s", err, out)
	}
	resigned := sbsign(t, unsigned)
	want := pesignDigest(t, unsigned)
	for _, f := range []string{shipped, unsigned, resigned} {
		if got := ours(t, f); got != want {
			t.Errorf("%s: %s, pesign says %s (of the unsigned image)", filepath.Base(f), got, want)
		}
		if got := pesignDigest(t, f); got != want {
			t.Errorf("%s: pesign says %s, and %s for the unsigned image", filepath.Base(f), got, want)
		}
	}
	if got := osslsigncodeDigest(t, resigned); got != want {
		t.Errorf("osslsigncode says %s for the re-signed image, pesign %s", got, want)
	}
}

// TestAuthenticodeSignedPE: a small PE made here (measuretest.BzImage),
// signed with sbsign and a throwaway key, has the image hash osslsigncode
// recomputes, before and after signing.
func TestAuthenticodeSignedPE(t *testing.T) {
	needTools(t, "sbsign", "osslsigncode")
	for seed := byte(0); seed < 3; seed++ {
		in := filepath.Join(t.TempDir(), "bz.efi")
		if err := os.WriteFile(in, measuretest.BzImage(seed), 0o644); err != nil {
			t.Fatal(err)
		}
		signed := sbsign(t, in)
		want := osslsigncodeDigest(t, signed)
		if got := ours(t, signed); got != want {
			t.Errorf("seed %d signed: %s, osslsigncode says %s", seed, got, want)
		}
		if got := ours(t, in); got != want {
			t.Errorf("seed %d unsigned: %s, osslsigncode says %s for the signed copy", seed, got, want)
		}
	}
}

// TestAuthenticodeTDPayload checks td-shim's td-payload.efi (an outside
// vector, internal/testvectors) against pesign 0.112's hash of it.
func TestAuthenticodeTDPayload(t *testing.T) {
	b := testvectors.Read(t, "td-payload.efi")
	const want = "1b15a9a6c72b7aaaebbb32be5834d197e4c2cda2bb8a58f95b1bab8e9466474d"
	got, err := authenticode(b, sha256.New())
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(got) != want {
		t.Errorf("%x, want %s", got, want)
	}
}

func TestAuthenticodeNotPE(t *testing.T) {
	if _, err := authenticode([]byte("not a PE file, just text that is long enough to have a DOS header...."), sha256.New()); !errors.Is(err, ErrNotPE) {
		t.Fatalf("text: %v", err)
	}
}
