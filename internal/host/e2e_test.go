package host

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/ca"
	"github.com/castellan-dev/castellan/internal/attest/service/servicetest"
	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/keepcert"
)

// attestationService runs the attestation service on loopback with the
// owner's policy files.
func attestationService(t *testing.T, policyFile, measFile string) (url string, c *ca.CA) {
	t.Helper()
	return servicetest.Start(t, policyFile, measFile)
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestEndToEndSimSNP: agent, attestation service, client and a Go HTTPS
// workload on sim-snp. The service decides on the keep's evidence and
// issues its certificate; the client pins the keep's key, delivers the
// package with the certificate; a relying party then connects to the
// workload and verifies the keep certificate's chain and claims.
func TestEndToEndSimSNP(t *testing.T) {
	h := newHarness(t)
	port := freePort(t)
	cfg := fmt.Sprintf("%s[[files]]\nname = \"http\"\nkind = \"listen\"\nprot = \"tls\"\naddr = \"127.0.0.1\"\nport = %d\n", stdio, port)
	art := artifact(t, fixtures.Go(t, "httpserver"), []byte(cfg))
	policyFile, measFile, _ := ownerPolicy(t, art.Digest.String())
	url, attCA := attestationService(t, policyFile, measFile)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v := &delivery.ServiceVerifier{URL: url, Roots: attCA.Pool(), Package: "httpserver:test", AllowInsecure: true}
	var verified *delivery.Verified
	k, res, _, errOut, err := h.deploy(ctx, "sim-snp", art, v, func(o *DeployOptions) {
		o.Delivery.Detach = true
		o.OnVerified = func(v *delivery.Verified) { verified = v }
	})
	if err != nil {
		t.Fatalf("deploy: %v (%s)", err, errOut)
	}
	if res.Reason != "detached" || verified == nil || len(verified.CertChain) != 2 {
		t.Fatalf("result %+v, verified %+v", res, verified)
	}
	if verified.CertClaims.WorkloadDigest != art.Digest.String() || verified.CertClaims.Platform != "snp" || !verified.CertClaims.Simulated {
		t.Errorf("certificate claims %+v", verified.CertClaims)
	}

	// The relying party: TLS to the workload, keep certificate checked
	// against the attestation service's CA and the expected digest.
	exp := keepcert.Expect{Roots: attCA.Pool(), Digest: art.Digest.String(), Platforms: []string{"snp"}, AllowInsecure: true}
	var claims *keepcert.Claims
	hc := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		InsecureSkipVerify: true, // keepcert checks the chain to the service's CA
		VerifyConnection: func(cs tls.ConnectionState) error {
			c, err := keepcert.VerifyConnectionState(cs, exp)
			claims = c
			return err
		},
	}}}
	var body []byte
	deadline := time.Now().Add(2 * time.Minute) // a hang catcher: the workload compiles first, slowly on a loaded machine
	for {
		resp, err := hc.Get(fmt.Sprintf("https://127.0.0.1:%d/attested", port))
		if err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("relying party: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // the workload is still starting to listen
	}
	if string(body) != "hello from a keep: /attested\n" {
		t.Errorf("workload answered %q", body)
	}
	if claims == nil || claims.WorkloadDigest != art.Digest.String() || claims.Package != "httpserver:test" {
		t.Errorf("keep certificate claims %+v", claims)
	}
	// A relying party expecting another workload refuses the keep.
	exp.Digest = "sha256:" + strings.Repeat("9", 64)
	hc.CloseIdleConnections()
	if _, err := hc.Get(fmt.Sprintf("https://127.0.0.1:%d/", port)); err == nil || !strings.Contains(err.Error(), "workload") {
		t.Errorf("relying party expecting another digest: %v", err)
	}
	if end, err := h.client.Stop(ctx, k.ID); err != nil || end.State != StateStopped {
		t.Errorf("stop: %v %+v", err, end)
	}
}
