// Package service is the attestation service's HTTP API. A keep asks for a
// challenge nonce, binds it with its fresh key and workload digest into its
// hardware evidence, and sends the evidence with a CSR for that key; the
// service verifies the evidence (internal/attest/verify), applies the
// owner's policy and measurement database (internal/attest/policy), issues a
// short-lived certificate carrying the claims (internal/attest/ca, keepcert)
// and records the decision (internal/attest/audit).
//
//	POST /v1/challenge    → {"nonce": b64, "expires": RFC 3339}
//	POST /v1/certificate  {"csr": b64 DER, "evidence": b64 CBOR, "package": ref}
//	                      → {"chain": [leaf PEM, CA PEM]}
//	                      or 4xx {"error": "...", "check": "..."}
//	GET  /v1/ca           → the CA certificate, PEM
package service

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/castellan-dev/castellan/internal/attest/audit"
	"github.com/castellan-dev/castellan/internal/attest/ca"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/policy"
	"github.com/castellan-dev/castellan/internal/attest/verify"
	"github.com/castellan-dev/castellan/keepcert"
	"github.com/google/go-sev-guest/verify/trust"
)

// MaxBodyBytes bounds a certificate request; evidence with its
// endorsements is a few kilobytes.
const MaxBodyBytes = 128 << 10

// maxPackageRef bounds the package reference a keep may send.
const maxPackageRef = 512

// Checks named in refusals, besides those of package policy.
const (
	CheckFormat     = "format"      // the request is not well formed
	CheckCSR        = "csr"         // the CSR is malformed, badly signed, or asks for names the policy does not allow
	CheckKey        = "key"         // the CSR's key is not the key in the evidence, or not an accepted kind
	CheckNonce      = "nonce"       // unknown, used or expired nonce
	CheckChain      = "chain"       // the vendor certificate chain does not verify to a trusted root
	CheckSignature  = "signature"   // the report or quote signature does not verify
	CheckReportData = "report_data" // the report data does not bind key, nonce and workload digest
)

// ChallengeResponse is the answer to POST /v1/challenge.
type ChallengeResponse struct {
	Nonce   []byte    `json:"nonce"`
	Expires time.Time `json:"expires"`
}

// CertificateRequest is the body of POST /v1/certificate.
type CertificateRequest struct {
	CSR      []byte `json:"csr"`               // DER
	Evidence []byte `json:"evidence"`          // CBOR envelope
	Package  string `json:"package,omitempty"` // package reference, informative
}

// CertificateResponse is the answer to an accepted certificate request.
type CertificateResponse struct {
	Chain []string `json:"chain"` // PEM: leaf, CA
}

// ErrorResponse is the answer to a refused or failed request.
type ErrorResponse struct {
	Error string `json:"error"`
	Check string `json:"check,omitempty"`
}

// Config is what a Service is built from.
type Config struct {
	Policy *policy.Store
	CA     *ca.CA
	Audit  audit.Log
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Verify checks evidence and returns its claims; nil means
	// verify.Envelope. Tests substitute it.
	Verify func(env *evidence.Envelope, opts verify.Options) (*evidence.Claims, error)
	// VCEKGetter fetches VCEK certificates from AMD's key distribution
	// service for SEV-SNP evidence that does not carry them; nil refuses
	// such evidence. Wrap it in verify.NewCachingGetter.
	VCEKGetter trust.HTTPSGetter
	// Logf reports what the service cannot answer with (audit failures);
	// nil discards.
	Logf func(format string, a ...any)
	// Decided, if set, is called with each decision after it is recorded
	// (for an operator's log).
	Decided func(d audit.Decision)
}

// Service answers the attestation API.
type Service struct {
	cfg    Config
	nonces *nonces
	mux    *http.ServeMux
	timing *stageTiming // set by benchmarks only
}

// stageTiming accumulates the time spent verifying evidence and issuing
// certificates, for the benchmarks' split.
type stageTiming struct {
	verify, issue atomic.Int64 // nanoseconds
}

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Policy == nil || cfg.CA == nil || cfg.Audit == nil {
		return nil, errors.New("attestation service: policy, CA and audit log are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Verify == nil {
		cfg.Verify = verify.Envelope
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	s := &Service{cfg: cfg, nonces: newNonces(), mux: http.NewServeMux()}
	s.mux.HandleFunc("POST /v1/challenge", s.challenge)
	s.mux.HandleFunc("POST /v1/certificate", s.certificate)
	s.mux.HandleFunc("GET /v1/ca", s.caCert)
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// OutstandingNonces is the number of challenges not yet used or swept.
func (s *Service) OutstandingNonces() int { return s.nonces.len() }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (s *Service) challenge(w http.ResponseWriter, r *http.Request) {
	p := s.cfg.Policy.Current().Policy
	n, exp, err := s.nonces.issue(s.cfg.Now(), time.Duration(p.NonceLifetime), p.MaxNonces)
	if err != nil {
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, ErrorResponse{Error: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, ChallengeResponse{Nonce: n[:], Expires: exp.UTC()})
}

func (s *Service) caCert(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Write(s.cfg.CA.PEM)
}

// Refusal is a decision against a certificate request: the HTTP status,
// the check that failed and a one-line reason.
type Refusal struct {
	Status int
	Check  string
	Reason string
}

func (r *Refusal) Error() string { return r.Check + ": " + r.Reason }

func refuse(status int, check, format string, a ...any) *Refusal {
	return &Refusal{Status: status, Check: check, Reason: clip(strings.Join(strings.Fields(fmt.Sprintf(format, a...)), " "))}
}

// maxRecorded bounds strings from requests that reach answers and the
// audit log.
const maxRecorded = 512

func clip(s string) string {
	if len(s) <= maxRecorded {
		return s
	}
	return strings.ToValidUTF8(s[:maxRecorded], "") + "..."
}

func (s *Service) certificate(w http.ResponseWriter, r *http.Request) {
	now := s.cfg.Now()
	d := audit.Decision{Time: now, Remote: r.RemoteAddr}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	var resp *CertificateResponse
	var ref *Refusal
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			ref = refuse(http.StatusRequestEntityTooLarge, CheckFormat, "request body is over %d bytes", MaxBodyBytes)
		} else {
			ref = refuse(http.StatusBadRequest, CheckFormat, "reading request: %v", err)
		}
	} else {
		resp, ref = s.Issue(r.Context(), body, now, &d)
	}
	if ref != nil {
		d.Accepted, d.Check, d.Reason = false, ref.Check, ref.Reason
		if err := s.cfg.Audit.Record(r.Context(), d); err != nil {
			s.cfg.Logf("audit log: recording a refusal (%s: %s): %v", ref.Check, ref.Reason, err)
		}
		if s.cfg.Decided != nil {
			s.cfg.Decided(d)
		}
		writeJSON(w, ref.Status, ErrorResponse{Error: ref.Reason, Check: ref.Check})
		return
	}
	d.Accepted = true
	if err := s.cfg.Audit.Record(r.Context(), d); err != nil {
		s.cfg.Logf("audit log: recording certificate %s: %v", d.Serial, err)
		writeJSON(w, http.StatusInternalServerError, ErrorResponse{Error: "the audit log is unavailable; no certificate issued"})
		return
	}
	if s.cfg.Decided != nil {
		s.cfg.Decided(d)
	}
	writeJSON(w, http.StatusOK, resp)
}

// Issue decides on one certificate request body, as POST /v1/certificate
// does, filling d with what the audit log records; it neither records nor
// writes a response: it is the endpoint without HTTP.
func (s *Service) Issue(ctx context.Context, body []byte, now time.Time, d *audit.Decision) (*CertificateResponse, *Refusal) {
	req, ref := parseRequest(body)
	if ref != nil {
		return nil, ref
	}
	d.Package = clip(req.Package)
	env, err := evidence.Parse(req.Evidence)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, CheckFormat, "evidence: %v", err)
	}
	// What the envelope claims, recorded even if it is refused; clipped,
	// since nothing vouches for it yet.
	d.Platform, d.WorkloadDigest = clip(env.Platform), clip(env.WorkloadDigest)
	csr, ref := parseCSR(req.CSR)
	if ref != nil {
		return nil, ref
	}
	if ref := checkKey(csr, env.Key); ref != nil {
		return nil, ref
	}
	if err := s.nonces.consume(env.Nonce, now); err != nil {
		return nil, refuse(http.StatusForbidden, CheckNonce, "%v", err)
	}
	snap := s.cfg.Policy.Current()
	t0 := time.Now()
	vopts := snap.VerifyOptions(env.Platform, now)
	vopts.VCEKGetter = s.cfg.VCEKGetter
	claims, err := s.cfg.Verify(env, vopts)
	if s.timing != nil {
		s.timing.verify.Add(int64(time.Since(t0)))
	}
	if err != nil {
		return nil, refuse(http.StatusForbidden, verifyCheck(err), "%v", err)
	}
	summarise(d, claims)
	if pr := snap.Check(claims); pr != nil {
		return nil, refuse(http.StatusForbidden, pr.Check, "%s", pr.Reason)
	}
	p := &snap.Policy
	if !p.AllowSANs && (len(csr.DNSNames) > 0 || len(csr.IPAddresses) > 0 || len(csr.URIs) > 0 || len(csr.EmailAddresses) > 0) {
		return nil, refuse(http.StatusForbidden, CheckCSR, "the CSR asks for subject alternative names and the policy does not allow them (allow_sans)")
	}
	if len(csr.EmailAddresses) > 0 {
		return nil, refuse(http.StatusForbidden, CheckCSR, "the CSR asks for e-mail addresses, which keep certificates do not carry")
	}
	kc := &keepcert.Claims{
		Attested:       true,
		Platform:       claims.Platform,
		Simulated:      claims.Simulated,
		Insecure:       claims.Insecure(),
		Debug:          claims.Debug,
		TCB:            claims.TCB,
		Measurement:    claims.Measurement,
		WorkloadDigest: claims.WorkloadDigest,
		Package:        req.Package,
		Identity:       claims.Identity,
		TCBStatus:      claims.TCBStatus,
	}
	leaf := ca.Leaf{
		PublicKey:   csr.PublicKey,
		Claims:      kc,
		DNSNames:    csr.DNSNames,
		IPAddresses: csr.IPAddresses,
		URIs:        csr.URIs,
		NotBefore:   now.Add(-time.Minute), // tolerate relying parties' clock skew
		NotAfter:    now.Add(time.Duration(p.CertificateLifetime)),
	}
	t1 := time.Now()
	der, serial, err := s.cfg.CA.Issue(leaf)
	if s.timing != nil {
		s.timing.issue.Add(int64(time.Since(t1)))
	}
	if err != nil {
		return nil, refuse(http.StatusForbidden, CheckCSR, "%v", err)
	}
	d.Serial = hex.EncodeToString(serial.Bytes())
	d.NotAfter = leaf.NotAfter
	return &CertificateResponse{Chain: []string{
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(s.cfg.CA.PEM),
	}}, nil
}

// parseRequest decodes a certificate request body strictly.
func parseRequest(body []byte) (*CertificateRequest, *Refusal) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var req CertificateRequest
	if err := dec.Decode(&req); err != nil {
		return nil, refuse(http.StatusBadRequest, CheckFormat, "request: %v", err)
	}
	if dec.More() {
		return nil, refuse(http.StatusBadRequest, CheckFormat, "request: data after the JSON object")
	}
	if len(req.CSR) == 0 {
		return nil, refuse(http.StatusBadRequest, CheckCSR, "request: no csr")
	}
	if len(req.Evidence) == 0 {
		return nil, refuse(http.StatusBadRequest, CheckFormat, "request: no evidence")
	}
	if len(req.Package) > maxPackageRef {
		return nil, refuse(http.StatusBadRequest, CheckFormat, "request: package reference is over %d bytes", maxPackageRef)
	}
	for _, r := range req.Package {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return nil, refuse(http.StatusBadRequest, CheckFormat, "request: package reference %q holds a space or control character", req.Package)
		}
	}
	return &req, nil
}

// parseCSR parses a DER CSR and checks its self-signature (proof that the
// requester holds the key).
func parseCSR(der []byte) (*x509.CertificateRequest, *Refusal) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, CheckCSR, "csr: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, refuse(http.StatusBadRequest, CheckCSR, "csr: signature: %v", err)
	}
	return csr, nil
}

// checkKey accepts ECDSA P-256/P-384, Ed25519 and RSA of 2048 bits or more,
// and requires the CSR's key to be the key the evidence binds.
func checkKey(csr *x509.CertificateRequest, spki []byte) *Refusal {
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return refuse(http.StatusBadRequest, CheckKey, "csr: ECDSA curve %s is not accepted (P-256 or P-384)", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return refuse(http.StatusBadRequest, CheckKey, "csr: RSA key of %d bits is too short", k.N.BitLen())
		}
	default:
		return refuse(http.StatusBadRequest, CheckKey, "csr: key type %T is not accepted", csr.PublicKey)
	}
	envKey, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		return refuse(http.StatusBadRequest, CheckKey, "evidence key: %v", err)
	}
	eq, ok := csr.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !eq.Equal(envKey) || !bytes.Equal(csr.RawSubjectPublicKeyInfo, spki) {
		return refuse(http.StatusForbidden, CheckKey, "the CSR's public key is not the key bound into the evidence")
	}
	return nil
}

// verifyCheck names the check a verifier error failed.
func verifyCheck(err error) string {
	var ve *verify.Error
	if errors.As(err, &ve) {
		switch ve.Check {
		case CheckChain, CheckSignature, CheckReportData, CheckFormat,
			policy.CheckTCB, policy.CheckDebug, policy.CheckMeasurement:
			return ve.Check
		}
		if ve.Check == verify.CheckPlatform {
			return CheckFormat
		}
	}
	return CheckChain
}

func summarise(d *audit.Decision, c *evidence.Claims) {
	d.Platform = c.Platform
	d.Simulated = c.Simulated
	d.Measurement = hex.EncodeToString(c.Measurement)
	d.WorkloadDigest = c.WorkloadDigest
	keys := make([]string, 0, len(c.TCB))
	for k := range c.TCB {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + "=" + strconv.FormatUint(c.TCB[k], 10))
	}
	d.TCB = b.String()
}

var _ http.Handler = (*Service)(nil)
