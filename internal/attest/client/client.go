// Package client is the keep's side of attestation: before the workload
// starts, the keep makes a fresh key, asks the attestation service for a
// challenge, has its TEE backend bind key, nonce and workload digest into
// hardware evidence, and trades the evidence and a CSR for a certificate
// that its TLS listeners present and its TLS connections use as client
// certificate. Without a service, SelfSigned makes a certificate that says
// it is not attested.
package client

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/service"
	"github.com/castellan-dev/castellan/internal/retryhttp"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/keepcert"
)

// RefusedError is the service's refusal of a request.
type RefusedError struct {
	Status int    // HTTP status
	Check  string // the failed check ("nonce", "measurement", ...)
	Reason string
}

func (e *RefusedError) Error() string {
	if e.Check != "" {
		return fmt.Sprintf("attestation service refused the keep (%s): %s", e.Check, e.Reason)
	}
	return fmt.Sprintf("attestation service: %s (HTTP %d)", e.Reason, e.Status)
}

// maxResponse bounds what the client reads from the service.
const maxResponse = 1 << 20

// Obtain gets a certificate for a keep running workloadDigest on backend b
// from the attestation service at serviceURL (https://host:port). roots are
// trusted for the service's TLS certificate; nil means the system roots.
// packageRef, if not empty, is copied into the certificate as information.
// The returned certificate holds the fresh private key and the chain (leaf,
// CA); the claims are those the service put in it.
func Obtain(ctx context.Context, serviceURL string, roots *x509.CertPool, b tee.Backend, workloadDigest, packageRef string) (*tls.Certificate, *keepcert.Claims, error) {
	base := strings.TrimSuffix(serviceURL, "/")
	if !strings.HasPrefix(base, "https://") {
		return nil, nil, fmt.Errorf("attestation service %q: want an https:// URL", serviceURL)
	}
	hc := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			ForceAttemptHTTP2: true,
		},
	}
	defer hc.CloseIdleConnections()

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("keep key: %w", err)
	}
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, nil, fmt.Errorf("keep key: %w", err)
	}

	var ch service.ChallengeResponse
	if err := post(ctx, hc, base+"/v1/challenge", nil, &ch); err != nil {
		return nil, nil, err
	}
	if len(ch.Nonce) == 0 {
		return nil, nil, errors.New("attestation service: challenge without a nonce")
	}
	env, err := tee.Attest(ctx, b, spki, ch.Nonce, workloadDigest)
	if err != nil {
		return nil, nil, fmt.Errorf("evidence from backend %s: %w", b.Name(), err)
	}
	evb, err := env.Marshal()
	if err != nil {
		return nil, nil, fmt.Errorf("evidence: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "castellan keep"},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("csr: %w", err)
	}
	body, err := json.Marshal(service.CertificateRequest{CSR: csr, Evidence: evb, Package: packageRef})
	if err != nil {
		return nil, nil, err
	}
	var cr service.CertificateResponse
	if err := post(ctx, hc, base+"/v1/certificate", body, &cr); err != nil {
		return nil, nil, err
	}
	cert, claims, err := parseChain(cr.Chain, key)
	if err != nil {
		return nil, nil, fmt.Errorf("attestation service answer: %w", err)
	}
	if claims.WorkloadDigest != workloadDigest {
		return nil, nil, fmt.Errorf("attestation service answer: certificate names workload %s, not %s", claims.WorkloadDigest, workloadDigest)
	}
	return cert, claims, nil
}

// post sends body (nil: none) and decodes a 200 answer into out, or returns
// a *RefusedError. A busy service's answer (429, 503 with Retry-After) is
// waited out within ctx.
func post(ctx context.Context, hc *http.Client, url string, body []byte, out any) error {
	resp, err := retryhttp.Do(ctx, hc, func() (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err == nil {
			req.Header.Set("Content-Type", "application/json")
		}
		return req, err
	})
	if err != nil {
		return fmt.Errorf("attestation service: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("attestation service: %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e service.ErrorResponse
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
			if len(e.Error) > 200 {
				e.Error = e.Error[:200]
			}
		}
		return &RefusedError{Status: resp.StatusCode, Check: e.Check, Reason: e.Error}
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("attestation service: %s: %w", url, err)
	}
	return nil
}

// parseChain checks that the PEM chain's leaf is for key and chains to the
// CA after it, and reads the claims.
func parseChain(chain []string, key *ecdsa.PrivateKey) (*tls.Certificate, *keepcert.Claims, error) {
	var certs []*x509.Certificate
	for i, p := range chain {
		blk, rest := pem.Decode([]byte(p))
		if blk == nil || blk.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
			return nil, nil, fmt.Errorf("chain entry %d: not one PEM certificate", i)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("chain entry %d: %w", i, err)
		}
		certs = append(certs, c)
	}
	if len(certs) < 2 {
		return nil, nil, fmt.Errorf("chain of %d certificates, want leaf and CA", len(certs))
	}
	leaf := certs[0]
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, nil, errors.New("the certificate is for another key")
	}
	roots := x509.NewCertPool()
	roots.AddCert(certs[len(certs)-1])
	claims, err := keepcert.VerifyChain(certs, keepcert.Expect{Roots: roots, AllowInsecure: true})
	if err != nil {
		return nil, nil, err
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range certs {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc, claims, nil
}

// SelfSignedLifetime is how long a self-signed keep certificate is valid.
const SelfSignedLifetime = 24 * time.Hour

// SelfSigned makes a certificate for a keep without an attestation
// service. Its claims say platform none, not attested and insecure; a
// relying party accepts it only with keepcert.Expect.AllowInsecure.
func SelfSigned(digest string) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("keep key: %w", err)
	}
	ext, err := keepcert.Extension(&keepcert.Claims{
		Attested:       false,
		Platform:       keepcert.PlatformNone,
		Insecure:       true,
		WorkloadDigest: digest,
	})
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tpl := &x509.Certificate{
		SerialNumber:    serial,
		Subject:         pkix.Name{CommonName: "castellan keep (self-signed, not attested) " + digest},
		NotBefore:       now.Add(-time.Minute),
		NotAfter:        now.Add(SelfSignedLifetime),
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtKeyUsage:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		ExtraExtensions: []pkix.Extension{ext},
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-signed keep certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}
