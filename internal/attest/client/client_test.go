package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/attest/ca"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/service"
	"github.com/castellan-dev/castellan/internal/attest/service/servicetest"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/tee/sim"
	"github.com/castellan-dev/castellan/keepcert"
)

var digest = "sha256:" + strings.Repeat("5e", 32)

// startService runs an attestation service over TLS on loopback, trusting
// simCA's roots, with the measurement of this test binary listed.
func startService(t *testing.T, simCA *sim.CA, allowInsecure bool, opts ...func(*service.Config)) (url string, caCert *ca.CA) {
	t.Helper()
	dir := t.TempDir()
	m, err := sim.Measurement()
	if err != nil {
		t.Fatal(err)
	}
	roots := filepath.Join(dir, "roots.pem")
	pol := filepath.Join(dir, "policy.toml")
	meas := filepath.Join(dir, "measurements.toml")
	write(t, roots, string(simCA.RootsPEM()))
	write(t, pol, fmt.Sprintf(`
workloads = [%q]
allow_insecure = %v
[platforms.snp]
sim_roots = ["roots.pem"]
[platforms.tdx]
sim_roots = ["roots.pem"]
`, digest, allowInsecure))
	write(t, meas, fmt.Sprintf(`
[[measurement]]
platform = "snp"
value = %[1]q
name = "this test binary"
[[measurement]]
platform = "tdx"
value = %[1]q
name = "this test binary"
`, hex.EncodeToString(m)))
	return servicetest.Start(t, pol, meas, opts...)
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestObtain(t *testing.T) {
	simCA, err := sim.New()
	if err != nil {
		t.Fatal(err)
	}
	url, c := startService(t, simCA, false)
	for _, p := range []string{evidence.PlatformSNP, evidence.PlatformTDX} {
		t.Run(p, func(t *testing.T) {
			cert, claims, err := Obtain(context.Background(), url, c.Pool(), tee.NewSim(p, simCA), digest, "oci.example/app@"+digest)
			if err != nil {
				t.Fatal(err)
			}
			if claims.Platform != p || !claims.Simulated || !claims.Insecure || claims.WorkloadDigest != digest {
				t.Errorf("claims %+v", claims)
			}
			// A relying party checks the keep as it would over TLS.
			var chain []*x509.Certificate
			for _, raw := range cert.Certificate {
				x, err := x509.ParseCertificate(raw)
				if err != nil {
					t.Fatal(err)
				}
				chain = append(chain, x)
			}
			got, err := keepcert.VerifyChain(chain, keepcert.Expect{Roots: c.Pool(), Digest: digest, Platforms: []string{p}, AllowInsecure: true})
			if err != nil {
				t.Fatal(err)
			}
			if got.Package != "oci.example/app@"+digest {
				t.Errorf("package %q", got.Package)
			}
			if _, err := keepcert.VerifyChain(chain, keepcert.Expect{Roots: c.Pool(), Digest: digest}); !keepcert.IsCheck(err, keepcert.CheckInsecure) {
				t.Errorf("simulated keep without AllowInsecure: %v", err)
			}
			// The certificate works for TLS.
			if _, err := tls.X509KeyPair(pemChain(cert), pemKey(t, cert)); err != nil {
				t.Errorf("tls key pair: %v", err)
			}
		})
	}
}

// TestObtainWaitsOutRateLimit: a service that allows one request a second
// from an address answers a keep's second request (the certificate, right
// after the challenge) 429 with Retry-After; the keep waits and gets its
// certificate.
func TestObtainWaitsOutRateLimit(t *testing.T) {
	simCA, err := sim.New()
	if err != nil {
		t.Fatal(err)
	}
	url, c := startService(t, simCA, false, func(cfg *service.Config) { cfg.ClientRate, cfg.ClientBurst = 1, 1 })
	if _, _, err := Obtain(context.Background(), url, c.Pool(), tee.NewSim(evidence.PlatformSNP, simCA), digest, ""); err != nil {
		t.Fatalf("behind a rate limit: %v", err)
	}
}

func TestObtainRefused(t *testing.T) {
	simCA, err := sim.New()
	if err != nil {
		t.Fatal(err)
	}
	url, c := startService(t, simCA, false)
	_, _, err = Obtain(context.Background(), url, c.Pool(), tee.Nil{}, digest, "")
	var re *RefusedError
	if !errors.As(err, &re) || re.Check != "insecure" || re.Status != 403 {
		t.Fatalf("nil backend under a strict policy: %v", err)
	}
	// The service's TLS certificate is checked.
	if _, _, err := Obtain(context.Background(), url, x509.NewCertPool(), tee.NewSim(evidence.PlatformSNP, simCA), digest, ""); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusted service: %v", err)
	}
	if _, _, err := Obtain(context.Background(), strings.Replace(url, "https", "http", 1), c.Pool(), tee.Nil{}, digest, ""); err == nil {
		t.Errorf("http URL accepted")
	}
}

func TestObtainNilInsecure(t *testing.T) {
	simCA, err := sim.New()
	if err != nil {
		t.Fatal(err)
	}
	url, c := startService(t, simCA, true)
	_, claims, err := Obtain(context.Background(), url, c.Pool(), tee.Nil{}, digest, "")
	if err != nil {
		t.Fatal(err)
	}
	if claims.Platform != keepcert.PlatformNone || !claims.Insecure || !claims.Attested {
		t.Errorf("claims %+v", claims)
	}
}

func TestSelfSigned(t *testing.T) {
	cert, err := SelfSigned(digest)
	if err != nil {
		t.Fatal(err)
	}
	chain := []*x509.Certificate{cert.Leaf}
	c, err := keepcert.VerifyChain(chain, keepcert.Expect{AllowInsecure: true, Digest: digest})
	if err != nil {
		t.Fatal(err)
	}
	if c.Attested || !c.Insecure || c.Platform != keepcert.PlatformNone {
		t.Errorf("claims %+v", c)
	}
	if _, err := keepcert.VerifyChain(chain, keepcert.Expect{Digest: digest}); !keepcert.IsCheck(err, keepcert.CheckChain) {
		t.Errorf("self-signed without AllowInsecure or roots: %v", err)
	}
	other, _ := ca.New("other")
	if _, err := keepcert.VerifyChain(chain, keepcert.Expect{Roots: other.Pool(), AllowInsecure: true}); !keepcert.IsCheck(err, keepcert.CheckChain) {
		t.Errorf("self-signed against a service CA: %v", err)
	}
}
