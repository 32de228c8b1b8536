package delivery

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/policy"
	"github.com/castellan-dev/castellan/internal/attest/service"
	"github.com/castellan-dev/castellan/internal/attest/verify"
	"github.com/castellan-dev/castellan/keepcert"
)

// Verified is what the client learned from a keep's hello that checked
// out: the claims, and the key to pin when opening TLS to the keep.
type Verified struct {
	Claims *evidence.Claims
	SPKI   []byte // the keep's public key, SPKI DER
	// CertChain is the keep certificate (DER, leaf first) the attestation
	// service issued, for the keep to present; nil with local verification.
	CertChain [][]byte
	// CertClaims are the claims in CertChain's leaf.
	CertClaims *keepcert.Claims
	// By names who decided: "policy FILE", "attestation service URL" or
	// "insecure".
	By string
}

// Verifier decides whether a keep's hello is good enough to deliver to.
type Verifier interface {
	// Nonce returns the nonce the keep must bind.
	Nonce(ctx context.Context) ([]byte, error)
	// Verify checks hello against the nonce and the digest the client will
	// deliver.
	Verify(ctx context.Context, hello *Hello, nonce []byte, digest string) (*Verified, error)
}

var (
	_ Verifier = (*PolicyVerifier)(nil)
	_ Verifier = (*ServiceVerifier)(nil)
)

// VerificationError is a hello the client refused; Check names the step.
type VerificationError struct {
	Check  string
	Reason string
}

func (e *VerificationError) Error() string {
	return "keep evidence refused (" + e.Check + "): " + e.Reason
}

func refusedf(check, format string, a ...any) error {
	return &VerificationError{Check: check, Reason: fmt.Sprintf(format, a...)}
}

// PolicyVerifier verifies evidence on the client with the owner's policy
// and measurement database (the files the attestation service reads):
// signature chain to AMD/Intel roots or to the simulation roots that the
// policy names, report-data binding, then the policy's platform, debug,
// TCB, measurement and workload checks.
type PolicyVerifier struct {
	Policy *policy.Snapshot
	Name   string // for messages, e.g. the policy file
	Now    func() time.Time
	// Collateral is where vendor collateral for real evidence comes from
	// (verify.Options.Collateral); nil: none, which the policy refuses for
	// real evidence unless it sets require_collateral = false.
	Collateral collateral.Source
}

// Nonce returns 32 fresh random bytes.
func (p *PolicyVerifier) Nonce(context.Context) ([]byte, error) { return randomNonce() }

// Verify implements Verifier.
func (p *PolicyVerifier) Verify(_ context.Context, hello *Hello, nonce []byte, digest string) (*Verified, error) {
	env, err := evidence.Parse(hello.Evidence)
	if err != nil {
		return nil, refusedf(verify.CheckFormat, "%v", err)
	}
	opts := p.Policy.VerifyOptions(env.Platform)
	opts.Collateral = p.Collateral
	if p.Now != nil {
		opts.Now = p.Now()
	}
	claims, err := verify.Envelope(env, opts)
	if err != nil {
		var ve *verify.Error
		if errors.As(err, &ve) {
			return nil, refusedf(ve.Check, "%v", ve.Err)
		}
		return nil, refusedf(verify.CheckFormat, "%v", err)
	}
	if err := bindings(claims, nonce, digest); err != nil {
		return nil, err
	}
	if r := p.Policy.Check(claims); r != nil {
		return nil, refusedf(r.Check, "%s", r.Reason)
	}
	return &Verified{Claims: claims, SPKI: claims.Key, By: "policy " + p.Name}, nil
}

// bindings checks that verified claims are for this nonce and digest and
// carry a usable key.
func bindings(c *evidence.Claims, nonce []byte, digest string) error {
	if subtle.ConstantTimeCompare(c.Nonce, nonce) != 1 {
		return refusedf("nonce", "the evidence answers another nonce (a replayed or substituted keep)")
	}
	if c.WorkloadDigest != digest {
		return refusedf("workload", "the keep attested to package %s, not %s", c.WorkloadDigest, digest)
	}
	if _, err := x509.ParsePKIXPublicKey(c.Key); err != nil {
		return refusedf("key", "the keep's key does not parse: %v", err)
	}
	return nil
}

// ServiceVerifier has the attestation service decide: the nonce comes
// from the service's challenge, and the keep's evidence and CSR are
// traded for a keep certificate whose chain and claims the client checks.
// The certificate then goes into the keep, so that relying parties can
// verify the running workload with `castellan verify`.
type ServiceVerifier struct {
	URL string
	// Roots are trusted for the service's TLS certificate; nil: system roots.
	Roots *x509.CertPool
	// Package is copied into the certificate as information.
	Package string
	// AllowInsecure accepts a certificate whose claims say insecure
	// (simulated hardware or no TEE), when the service's policy issued one.
	AllowInsecure bool

	ca *x509.Certificate
}

func (s *ServiceVerifier) client() *http.Client {
	return &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.Roots, MinVersion: tls.VersionTLS12}},
	}
}

func (s *ServiceVerifier) base() (string, error) {
	b := strings.TrimSuffix(s.URL, "/")
	if !strings.HasPrefix(b, "https://") {
		return "", fmt.Errorf("attestation service %q: want an https:// URL", s.URL)
	}
	return b, nil
}

// Nonce asks the service for a challenge.
func (s *ServiceVerifier) Nonce(ctx context.Context) ([]byte, error) {
	base, err := s.base()
	if err != nil {
		return nil, err
	}
	var ch service.ChallengeResponse
	if err := post(ctx, s.client(), base+"/v1/challenge", nil, &ch); err != nil {
		return nil, err
	}
	if len(ch.Nonce) == 0 || len(ch.Nonce) > evidence.MaxNonceSize {
		return nil, fmt.Errorf("attestation service: challenge nonce of %d bytes", len(ch.Nonce))
	}
	return ch.Nonce, nil
}

// Verify implements Verifier.
func (s *ServiceVerifier) Verify(ctx context.Context, hello *Hello, nonce []byte, digest string) (*Verified, error) {
	base, err := s.base()
	if err != nil {
		return nil, err
	}
	env, err := evidence.Parse(hello.Evidence)
	if err != nil {
		return nil, refusedf(verify.CheckFormat, "%v", err)
	}
	// The service checks the binding too; checking here first means a
	// substituted hello never reaches it under our name.
	if subtle.ConstantTimeCompare(env.Nonce, nonce) != 1 {
		return nil, refusedf("nonce", "the evidence answers another nonce (a replayed or substituted keep)")
	}
	if env.WorkloadDigest != digest {
		return nil, refusedf("workload", "the keep attested to package %s, not %s", env.WorkloadDigest, digest)
	}
	hc := s.client()
	if s.ca == nil {
		if s.ca, err = fetchCA(ctx, hc, base+"/v1/ca"); err != nil {
			return nil, err
		}
	}
	body, err := json.Marshal(service.CertificateRequest{CSR: hello.CSR, Evidence: hello.Evidence, Package: s.Package})
	if err != nil {
		return nil, err
	}
	var cr service.CertificateResponse
	if err := post(ctx, hc, base+"/v1/certificate", body, &cr); err != nil {
		var se *serviceError
		if errors.As(err, &se) && se.check != "" {
			return nil, refusedf(se.check, "attestation service: %s", se.reason)
		}
		return nil, err
	}
	var certs []*x509.Certificate
	var ders [][]byte
	for i, p := range cr.Chain {
		blk, _ := pem.Decode([]byte(p))
		if blk == nil || blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("attestation service answer: chain entry %d is not a PEM certificate", i)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("attestation service answer: chain entry %d: %w", i, err)
		}
		certs = append(certs, c)
		ders = append(ders, blk.Bytes)
	}
	roots := x509.NewCertPool()
	roots.AddCert(s.ca)
	cc, err := keepcert.VerifyChain(certs, keepcert.Expect{Roots: roots, Digest: digest, AllowInsecure: s.AllowInsecure})
	if err != nil {
		var ke *keepcert.Error
		if errors.As(err, &ke) {
			return nil, refusedf(ke.Check, "keep certificate: %v", ke.Err)
		}
		return nil, refusedf("chain", "keep certificate: %v", err)
	}
	if !bytes.Equal(certs[0].RawSubjectPublicKeyInfo, env.Key) {
		return nil, refusedf("key", "the service's certificate is for another key than the evidence's")
	}
	claims := &evidence.Claims{
		Platform: cc.Platform, Simulated: cc.Simulated, Measurement: cc.Measurement, TCB: cc.TCB, Debug: cc.Debug, Details: cc.Details,
		Key: bytes.Clone(env.Key), Nonce: bytes.Clone(env.Nonce), WorkloadDigest: env.WorkloadDigest,
	}
	return &Verified{Claims: claims, SPKI: claims.Key, CertChain: ders, CertClaims: cc, By: "attestation service " + s.URL}, nil
}

type serviceError struct {
	status        int
	check, reason string
}

func (e *serviceError) Error() string {
	if e.check != "" {
		return fmt.Sprintf("attestation service refused (%s): %s", e.check, e.reason)
	}
	return fmt.Sprintf("attestation service: %s (HTTP %d)", e.reason, e.status)
}

func post(ctx context.Context, hc *http.Client, url string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("attestation service: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	return do(hc, req, out)
}

func do(hc *http.Client, req *http.Request, out any) error {
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("attestation service: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("attestation service: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e service.ErrorResponse
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = truncate(strings.TrimSpace(string(b)))
		}
		return &serviceError{status: resp.StatusCode, check: e.Check, reason: e.Error}
	}
	if out == nil {
		return nil
	}
	if p, ok := out.(*[]byte); ok {
		*p = b
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("attestation service: %s: %w", req.URL, err)
	}
	return nil
}

func fetchCA(ctx context.Context, hc *http.Client, url string) (*x509.Certificate, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	var b []byte
	if err := do(hc, req, &b); err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("attestation service: /v1/ca is not a PEM certificate")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("attestation service: CA certificate: %w", err)
	}
	return c, nil
}

// InsecureVerifier accepts any evidence whose signatures check out,
// including platform none and simulated evidence signed by SimRoots, with
// no measurement, TCB or debug check. It is for development only: the
// client still checks the nonce, digest and key bindings, so the channel
// goes to the keep that answered, but nothing says that keep is safe.
type InsecureVerifier struct {
	SimRoots []*x509.Certificate
}

var _ Verifier = (*InsecureVerifier)(nil)

// Nonce returns 32 fresh random bytes.
func (v *InsecureVerifier) Nonce(context.Context) ([]byte, error) { return randomNonce() }

// Verify implements Verifier.
func (v *InsecureVerifier) Verify(_ context.Context, hello *Hello, nonce []byte, digest string) (*Verified, error) {
	env, err := evidence.Parse(hello.Evidence)
	if err != nil {
		return nil, refusedf(verify.CheckFormat, "%v", err)
	}
	claims, err := verify.Envelope(env, verify.Options{SimRoots: v.SimRoots})
	if err != nil {
		var ve *verify.Error
		if errors.As(err, &ve) {
			return nil, refusedf(ve.Check, "%v", ve.Err)
		}
		return nil, refusedf(verify.CheckFormat, "%v", err)
	}
	if err := bindings(claims, nonce, digest); err != nil {
		return nil, err
	}
	return &Verified{Claims: claims, SPKI: claims.Key, By: "insecure (no policy)"}, nil
}
