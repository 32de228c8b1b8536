// Package service is the attestation service's HTTP API. A keep asks for a
// challenge nonce, binds it with its fresh key and workload digest into its
// hardware evidence, and sends the evidence with a CSR for that key; the
// service verifies the evidence (internal/attest/verify), applies the
// owner's policy and measurement database (internal/attest/policy), issues a
// short-lived certificate carrying the claims (internal/attest/ca, keepcert)
// and records the decision (internal/attest/audit).
//
//	POST /v1/challenge    → {"nonce": b64, "expires": RFC 3339}
//	POST /v1/certificate  {"csr": b64 DER, "evidence": b64 CBOR, "package": ref, "ear": bool}
//	                      → {"chain": [leaf PEM, CA PEM], "ear": JWT}
//	                      or 4xx {"error": "...", "check": "...", "ear": JWT}
//	GET  /v1/ca           → the CA certificate, PEM
//	GET  /v1/jwks         → the CA key as a JSON Web Key Set (verifies EARs)
//	/kbs/v0/...           Trustee's KBS protocol: secrets the policy binds to
//	                      workloads, released to keeps that attested (kbs.go)
//
// Challenges store nothing (nonce.go: nonces are sealed by a key replicas
// share); redeemed nonces go to a bounded ledger (audit.NonceLedger) in the
// audit database, which replicas share through PostgreSQL. Certificates
// carry the SPIFFE ID and names the policy gives the workload; on request
// the result is also an EAR (internal/attest/eartoken).
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
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/castellan-dev/castellan/internal/attest/audit"
	"github.com/castellan-dev/castellan/internal/attest/ca"
	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/castellan-dev/castellan/internal/attest/eartoken"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/policy"
	"github.com/castellan-dev/castellan/internal/attest/verify"
	"github.com/castellan-dev/castellan/internal/kbs"
	"github.com/castellan-dev/castellan/keepcert"
)

// MaxBodyBytes bounds a certificate request; evidence with its
// endorsements is a few kilobytes.
const MaxBodyBytes = 128 << 10

// maxPackageRef bounds the package reference a keep may send.
const maxPackageRef = 512

// Checks named in refusals, besides those of package policy.
const (
	CheckFormat     = "format"      // the request is not well formed
	CheckCSR        = "csr"         // the CSR is malformed, badly signed, or asks for names the policy does not list
	CheckKey        = "key"         // the CSR's key is not the key in the evidence, or not an accepted kind
	CheckNonce      = "nonce"       // unknown, used or expired nonce
	CheckChain      = "chain"       // the vendor certificate chain does not verify to a trusted root
	CheckSignature  = "signature"   // the report or quote signature does not verify
	CheckReportData = "report_data" // the report data does not bind key, nonce and workload digest
	CheckEAR        = "ear"         // the EAR asked for could not be signed (500)
	CheckRate       = "rate"        // the client's address sent more requests than its rate limit (429, not audited)
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
	// EAR asks for the result as an EAR too (also on a refusal, once the
	// evidence went through verification).
	EAR bool `json:"ear,omitempty"`
}

// CertificateResponse is the answer to an accepted certificate request.
type CertificateResponse struct {
	Chain []string `json:"chain"`         // PEM: leaf, CA
	EAR   string   `json:"ear,omitempty"` // a signed EAR (JWT), when asked for
}

// ErrorResponse is the answer to a refused or failed request.
type ErrorResponse struct {
	Error string `json:"error"`
	Check string `json:"check,omitempty"`
	EAR   string `json:"ear,omitempty"` // a signed EAR (JWT) saying contraindicated, when asked for
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
	// Report checks a raw report for the KBS endpoints (kbs.go), which
	// bind their own report data; nil means verify.Report.
	Report func(platform string, raw []byte, endorsements [][]byte, opts verify.Options) (*evidence.Claims, error)
	// Collateral is where vendor collateral for real evidence comes from
	// (verify.Options.Collateral): VCEKs, AMD's CRLs, Intel's TCB info,
	// QE identity and CRLs; nil fetches none (then the policy refuses
	// real evidence unless it sets require_collateral = false).
	Collateral collateral.Source
	// Logf reports what the service cannot answer with (audit failures);
	// nil discards.
	Logf func(format string, a ...any)
	// Decided, if set, is called with each decision after it is recorded
	// (for an operator's log).
	Decided func(d audit.Decision)
	// NonceKey seals challenge nonces; replicas share it. nil makes a
	// random key, good for one process's life.
	NonceKey *NonceKey
	// UsedNonces is the ledger of redeemed nonces; replicas share it (the
	// audit log's database). nil keeps it in memory.
	UsedNonces audit.NonceLedger
	// MaxInFlight bounds the certificate requests handled at once (body
	// read, parsing, verification); others wait up to InFlightWait, then
	// get 503. Zero means DefaultMaxInFlight.
	MaxInFlight int
	// InFlightWait is how long a request waits for a slot; zero means
	// DefaultInFlightWait.
	InFlightWait time.Duration
	// Build names the service's build in EARs (ear.verifier-id).
	Build string
	// ClientRate and ClientBurst limit the requests of each client address
	// (IPv4 address, IPv6 /64) to ClientRate a second with bursts of
	// ClientBurst; beyond, 429 with Retry-After, not audited (a flood would
	// otherwise fill the audit log). The CA and JWKS downloads are not
	// limited. Zero means the default; a negative ClientRate turns the
	// limit off (a service behind a proxy that hides client addresses).
	ClientRate  float64
	ClientBurst int
}

// Defaults for Config.
const (
	DefaultMaxInFlight  = 64
	DefaultInFlightWait = 5 * time.Second
)

// Service answers the attestation API.
type Service struct {
	cfg      Config
	inFlight chan struct{}  // a semaphore of MaxInFlight slots
	limiter  *clientLimiter // nil: no per-client limit
	jwks     []byte         // the CA key as a JWK set
	mux      *http.ServeMux
	timing   *stageTiming // set by benchmarks only
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
	if cfg.Report == nil {
		cfg.Report = verify.Report
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.NonceKey == nil {
		cfg.NonceKey = NewNonceKey()
	}
	if cfg.UsedNonces == nil {
		cfg.UsedNonces = &audit.MemoryNonces{}
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.InFlightWait <= 0 {
		cfg.InFlightWait = DefaultInFlightWait
	}
	jwks, err := eartoken.JWKS(cfg.CA.Key.Public())
	if err != nil {
		return nil, fmt.Errorf("attestation service: CA key: %w", err)
	}
	if cfg.ClientRate == 0 {
		cfg.ClientRate = DefaultClientRate
	}
	if cfg.ClientBurst <= 0 {
		cfg.ClientBurst = DefaultClientBurst
	}
	s := &Service{cfg: cfg, inFlight: make(chan struct{}, cfg.MaxInFlight), jwks: jwks, mux: http.NewServeMux()}
	if cfg.ClientRate > 0 {
		s.limiter = newClientLimiter(cfg.ClientRate, cfg.ClientBurst, cfg.Now())
	}
	s.mux.HandleFunc("POST /v1/challenge", s.challenge)
	s.mux.HandleFunc("POST /v1/certificate", s.certificate)
	s.mux.HandleFunc("GET /v1/ca", s.caCert)
	s.mux.HandleFunc("GET /v1/jwks", s.caJWKS)
	s.mux.HandleFunc("POST "+kbs.PathAuth, s.kbsAuth)
	s.mux.HandleFunc("POST "+kbs.PathAttest, s.kbsAttest)
	s.mux.HandleFunc("GET "+kbs.PathResource+"{repo}/{type}/{tag}", s.kbsResource)
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.limiter != nil && !(r.Method == http.MethodGet && (r.URL.Path == "/v1/ca" || r.URL.Path == "/v1/jwks")) {
		if !s.admit(w, r) {
			return
		}
	}
	s.mux.ServeHTTP(w, r)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// challenge issues a sealed nonce: it stores nothing, so it always answers.
func (s *Service) challenge(w http.ResponseWriter, r *http.Request) {
	life := time.Duration(s.cfg.Policy.Current().Policy.NonceLifetime)
	now := s.cfg.Now()
	writeJSON(w, http.StatusOK, ChallengeResponse{Nonce: s.cfg.NonceKey.seal(now, life), Expires: now.Add(life).UTC()})
}

func (s *Service) caJWKS(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Write(s.jwks)
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
	EAR    string // the signed EAR, when the request asked for one
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
	if !s.acquire(r.Context()) {
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, ErrorResponse{Error: "the service is busy; try again shortly"})
		return
	}
	defer func() { <-s.inFlight }()
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
		if ref.Status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		d.Accepted, d.Check, d.Reason = false, ref.Check, ref.Reason
		if err := s.cfg.Audit.Record(r.Context(), d); err != nil {
			s.cfg.Logf("audit log: recording a refusal (%s: %s): %v", ref.Check, ref.Reason, err)
		}
		if s.cfg.Decided != nil {
			s.cfg.Decided(d)
		}
		writeJSON(w, ref.Status, ErrorResponse{Error: ref.Reason, Check: ref.Check, EAR: ref.EAR})
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
	var o outcome
	resp, ref := s.issue(ctx, body, now, d, &o)
	if !o.wantEAR || !o.verified {
		return resp, ref
	}
	tok, err := s.result(now, &o, ref)
	switch {
	case err != nil && ref == nil:
		s.cfg.Logf("%v", err)
		return nil, refuse(http.StatusInternalServerError, CheckEAR, "signing the EAR failed; no certificate issued")
	case err != nil:
		s.cfg.Logf("%v", err)
	case ref != nil:
		ref.EAR = tok
	default:
		resp.EAR = tok
	}
	return resp, ref
}

// outcome is what issue learnt that an EAR reports.
type outcome struct {
	wantEAR     bool
	nonce       []byte
	key         crypto.PublicKey
	verified    bool             // the evidence went through the verifier
	claims      *evidence.Claims // nil if the verifier refused it
	verifyCheck string
	snap        *policy.Snapshot
	spiffeID    string
}

// result signs the EAR of a request whose evidence was verified.
func (s *Service) result(now time.Time, o *outcome, ref *Refusal) (string, error) {
	in := eartoken.Input{Now: now, Build: s.cfg.Build, Nonce: o.nonce, Key: o.key, Claims: o.claims,
		VerifyCheck: o.verifyCheck, SPIFFEID: o.spiffeID, Refused: ref != nil}
	if ref != nil {
		in.Check = ref.Check
	}
	if o.claims != nil {
		in.Facets = o.snap.Facets(o.claims)
	}
	ar, err := eartoken.Appraise(in)
	if err != nil {
		return "", err
	}
	tok, err := eartoken.Sign(ar, s.cfg.CA.Key, now.Add(time.Duration(o.snap.Policy.CertificateLifetime)))
	return string(tok), err
}

func (s *Service) issue(ctx context.Context, body []byte, now time.Time, d *audit.Decision, o *outcome) (*CertificateResponse, *Refusal) {
	req, ref := parseRequest(body)
	if ref != nil {
		return nil, ref
	}
	o.wantEAR = req.EAR
	d.Package = clip(req.Package)
	env, err := evidence.Parse(req.Evidence)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, CheckFormat, "evidence: %v", err)
	}
	// What the envelope claims, recorded even if it is refused; clipped,
	// since nothing vouches for it yet.
	d.Platform, d.WorkloadDigest = clip(env.Platform), clip(env.WorkloadDigest)
	snap := s.cfg.Policy.Current()
	// The nonce is redeemed first: from here on every refusal has used it,
	// so a request cannot be retried to probe the checks that follow.
	if ref := s.redeem(ctx, env.Nonce, now, &snap.Policy); ref != nil {
		return nil, ref
	}
	csr, ref := parseCSR(req.CSR)
	if ref != nil {
		return nil, ref
	}
	if ref := checkKey(csr, env.Key); ref != nil {
		return nil, ref
	}
	o.nonce, o.key, o.snap = env.Nonce, csr.PublicKey, snap
	t0 := time.Now()
	opts := snap.VerifyOptions(env.Platform)
	opts.Now, opts.Collateral = now, s.cfg.Collateral
	claims, err := s.cfg.Verify(env, opts)
	if s.timing != nil {
		s.timing.verify.Add(int64(time.Since(t0)))
	}
	o.verified = true
	if err != nil {
		o.verifyCheck = verifyCheck(err)
		return nil, refuse(http.StatusForbidden, o.verifyCheck, "%v", err)
	}
	o.claims = claims
	summarise(d, claims)
	if pr := snap.Check(claims); pr != nil {
		return nil, refuse(http.StatusForbidden, pr.Check, "%s", pr.Reason)
	}
	p := &snap.Policy
	if len(csr.EmailAddresses) > 0 {
		return nil, refuse(http.StatusForbidden, CheckCSR, "the CSR asks for e-mail address %q, which keep certificates do not carry", csr.EmailAddresses[0])
	}
	if len(csr.URIs) > 0 {
		return nil, refuse(http.StatusForbidden, CheckCSR, "the CSR asks for URI %q: the only URI of a keep certificate is its SPIFFE ID, which the policy sets", csr.URIs[0].String())
	}
	if err := snap.CheckNames(claims.WorkloadDigest, csr.DNSNames, csr.IPAddresses); err != nil {
		return nil, refuse(http.StatusForbidden, CheckCSR, "%v", err)
	}
	spiffeID, err := snap.SPIFFEID(claims.WorkloadDigest)
	if err != nil {
		return nil, refuse(http.StatusForbidden, policy.CheckWorkload, "%v", err)
	}
	o.spiffeID = spiffeID.String()
	dnsNames := make([]string, len(csr.DNSNames))
	for i, n := range csr.DNSNames {
		dnsNames[i] = strings.ToLower(n)
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
		Details:        claims.Details,
	}
	leaf := ca.Leaf{
		PublicKey:   csr.PublicKey,
		Claims:      kc,
		DNSNames:    dnsNames,
		IPAddresses: csr.IPAddresses,
		URIs:        []*url.URL{spiffeID},
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

// acquire takes an in-flight slot, waiting up to InFlightWait.
func (s *Service) acquire(ctx context.Context) bool {
	select {
	case s.inFlight <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(s.cfg.InFlightWait)
	defer t.Stop()
	select {
	case s.inFlight <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// redeem checks a nonce's seal and lifetime and records it in the used-nonce
// ledger. A full ledger refuses with 503: the redeem, never the challenge.
func (s *Service) redeem(ctx context.Context, nonce []byte, now time.Time, p *policy.Policy) *Refusal {
	id, exp, err := s.cfg.NonceKey.open(nonce, now, time.Duration(p.NonceLifetime))
	if err != nil {
		return refuse(http.StatusForbidden, CheckNonce, "%v", err)
	}
	switch err := s.cfg.UsedNonces.UseNonce(ctx, id, exp, now, p.MaxNonces); {
	case err == nil:
		return nil
	case errors.Is(err, audit.ErrNonceUsed):
		return refuse(http.StatusForbidden, CheckNonce, "%v", err)
	case errors.Is(err, audit.ErrNoncesFull):
		return refuse(http.StatusServiceUnavailable, CheckNonce, "%v", err)
	default:
		s.cfg.Logf("%v", err)
		return refuse(http.StatusServiceUnavailable, CheckNonce, "the used-nonce ledger is unavailable; try again shortly")
	}
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

// maxRSABits bounds the RSA keys accepted, so that checking a CSR's
// signature costs little whatever an anonymous caller sends.
const maxRSABits = 8192

// parseCSR parses a DER CSR, checks that its key is of an accepted kind and
// size (before any signature work), and checks its self-signature (proof
// that the requester holds the key).
func parseCSR(der []byte) (*x509.CertificateRequest, *Refusal) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, CheckCSR, "csr: %v", err)
	}
	if ref := acceptKey(csr.PublicKey); ref != nil {
		return nil, ref
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, refuse(http.StatusBadRequest, CheckCSR, "csr: signature: %v", err)
	}
	return csr, nil
}

// acceptKey accepts ECDSA P-256/P-384, Ed25519 and RSA of 2048 to 8192 bits.
func acceptKey(pub crypto.PublicKey) *Refusal {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return refuse(http.StatusBadRequest, CheckKey, "csr: ECDSA curve %s is not accepted (P-256 or P-384)", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > maxRSABits {
			return refuse(http.StatusBadRequest, CheckKey, "csr: RSA key of %d bits is not accepted (2048 to %d)", n, maxRSABits)
		}
	default:
		return refuse(http.StatusBadRequest, CheckKey, "csr: key type %T is not accepted", pub)
	}
	return nil
}

// checkKey requires the CSR's key to be the key the evidence binds.
func checkKey(csr *x509.CertificateRequest, spki []byte) *Refusal {
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
			policy.CheckTCB, policy.CheckDebug, policy.CheckMeasurement,
			verify.CheckVMPL, verify.CheckReportFields, verify.CheckTDFields, verify.CheckTCBStatus, verify.CheckCollateral:
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
