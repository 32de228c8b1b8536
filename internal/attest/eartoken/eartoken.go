// Package eartoken writes and checks the attestation service's results in
// the IETF RATS form: an EAR (Entity Attestation Result,
// draft-ietf-rats-ear, through github.com/veraison/ear), a JWT signed with
// the service's CA key, beside the X.509 certificate. One submodule per
// attested device ("cpu0": the TEE the keep runs in; room for "gpu0"), each
// with an ear.status and an AR4SI trustworthiness vector filled only from
// the checks that ran, the way Trustee's attestation service shapes its
// tokens. docs/attest.md explains the mapping.
package eartoken

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/policy"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"github.com/veraison/ear"
)

// Submod is the submodule of the keep's TEE.
const Submod = "cpu0"

// Developer names Castellan in ear.verifier-id.
const Developer = "https://github.com/castellan-dev/castellan"

// Input is what the service knows about one request when it writes its
// result.
type Input struct {
	Now   time.Time
	Build string // the verifier's build, e.g. "castellan 1.2.0"
	Nonce []byte // the challenge nonce the evidence binds (eat_nonce)
	Key   crypto.PublicKey
	// Claims are the verified claims; nil when the verifier refused the
	// evidence, with VerifyCheck the check it failed.
	Claims      *evidence.Claims
	VerifyCheck string
	Facets      policy.Facets // the policy's view of Claims
	SPIFFEID    string
	Refused     bool   // the request was refused
	Check       string // by this check
}

// Appraise builds the result for in: the trustworthiness vector from the
// checks that ran, the status the worst of its claims, and contraindicated
// for any refusal.
func Appraise(in Input) (*ear.AttestationResult, error) {
	ar := ear.NewAttestationResult(Submod, in.Build, Developer)
	iat := in.Now.Unix()
	ar.IssuedAt = &iat
	if len(in.Nonce) > 0 {
		n := base64.RawURLEncoding.EncodeToString(in.Nonce)
		ar.Nonce = &n
	}
	a := ar.Submods[Submod]
	Vector(in, a.TrustVector)
	affirming := ear.TrustTierAffirming
	a.Status = &affirming
	a.UpdateStatusFromTrustVector()
	if in.Refused {
		c := ear.TrustTierContraindicated
		a.Status = &c
	}
	if in.Key != nil {
		if err := a.SetKeyAttestation(in.Key); err != nil {
			return nil, fmt.Errorf("ear: %w", err)
		}
	}
	if c := in.Claims; c != nil {
		ev := map[string]any{
			"platform":        c.Platform,
			"simulated":       c.Simulated,
			"debug":           c.Debug,
			"workload_digest": c.WorkloadDigest,
		}
		if len(c.Measurement) > 0 {
			ev["measurement"] = hex.EncodeToString(c.Measurement)
		}
		if len(c.TCB) > 0 {
			tcb := map[string]any{}
			for k, v := range c.TCB {
				tcb[k] = v
			}
			ev["tcb"] = tcb
		}
		a.VeraisonAnnotatedEvidence = &ev
	}
	pc := map[string]any{}
	if in.SPIFFEID != "" {
		pc["spiffe_id"] = in.SPIFFEID
	}
	if in.Refused {
		pc["refused_by"] = in.Check
	}
	if len(pc) > 0 {
		a.VeraisonPolicyClaims = &pc
	}
	return ar, nil
}

// Vector fills the AR4SI trustworthiness vector of one request (the table
// in docs/attest.md). Claims not checked stay 0 (no claim).
func Vector(in Input, tv *ear.TrustVector) {
	c := in.Claims
	if c == nil {
		// The verifier refused the evidence: the one facet its check names.
		switch in.VerifyCheck {
		case "report_data":
			tv.InstanceIdentity = ear.UntrustworthyInstanceClaim
		case "chain", "signature", "format":
			tv.Hardware = ear.CryptoValidationFailedClaim
		case "tcb":
			tv.Hardware = ear.UnsafeHardwareClaim
		case "measurement":
			tv.Executables = ear.UnrecognizedRuntimeClaim
		default: // debug and the other guest settings it checks
			tv.Configuration = ear.UnsupportableConfigClaim
		}
		return
	}
	f := in.Facets
	// Past the verifier: the evidence is genuine (or simulated, or none)
	// and binds the keep's key, nonce and workload.
	tv.InstanceIdentity = ear.TrustworthyInstanceClaim
	workload := ear.UnrecognizedRuntimeClaim
	switch {
	case f.WorkloadListed:
		workload = ear.ApprovedRuntimeClaim
	case f.AnyWorkload:
		workload = ear.ApprovedBootClaim
	}
	if c.Platform == evidence.PlatformNone {
		tv.RuntimeOpaque = ear.VisibleMemoryRuntimeClaim
		tv.Hardware = ear.UnrecognizedHardwareClaim
		if workload == ear.UnrecognizedRuntimeClaim {
			tv.Executables = workload
		}
		return
	}
	switch {
	case f.PlatformRevoked || f.TCBRevoked:
		tv.Hardware = ear.ContraindicatedHardwareClaim
	case c.Simulated || f.TCBBelowMinimum:
		tv.Hardware = ear.UnsafeHardwareClaim
	default:
		tv.Hardware = ear.GenuineHardwareClaim
	}
	if c.Simulated {
		tv.RuntimeOpaque = ear.IsolatedMemoryRuntimeClaim
	} else {
		tv.RuntimeOpaque = ear.EncryptedMemoryRuntimeClaim
	}
	if c.Debug {
		tv.Configuration = ear.UnsupportableConfigClaim
	} else {
		tv.Configuration = ear.NoConfigVulnsClaim
	}
	switch {
	case f.PlatformRevoked:
		// the platform's measurements are not looked at
	case f.MeasurementRevoked:
		tv.Executables = ear.ContraindicatedRuntimeClaim
	case !f.MeasurementListed:
		tv.Executables = ear.UnrecognizedRuntimeClaim
	default:
		tv.Executables = workload
	}
}

// Sign signs ar with key (the CA key) as a JWT that expires at exp.
func Sign(ar *ear.AttestationResult, key crypto.Signer, exp time.Time) ([]byte, error) {
	alg, err := Algorithm(key.Public())
	if err != nil {
		return nil, err
	}
	if _, err := ar.MarshalJSON(); err != nil { // validates
		return nil, fmt.Errorf("ear: %w", err)
	}
	tok := jwt.New()
	for k, v := range ar.AsMap() {
		if err := tok.Set(k, v); err != nil {
			return nil, fmt.Errorf("ear: claim %s: %w", k, err)
		}
	}
	if err := tok.Set(jwt.ExpirationKey, exp); err != nil {
		return nil, fmt.Errorf("ear: %w", err)
	}
	kid, err := KeyID(key.Public())
	if err != nil {
		return nil, err
	}
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.KeyIDKey, kid); err != nil {
		return nil, fmt.Errorf("ear: %w", err)
	}
	b, err := jwt.Sign(tok, jwt.WithKey(alg, key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return nil, fmt.Errorf("ear: signing: %w", err)
	}
	return b, nil
}

// Algorithm is the JWS algorithm for a key of the CA's kind.
func Algorithm(pub crypto.PublicKey) (jwa.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return jwa.ES256(), nil
		case elliptic.P384():
			return jwa.ES384(), nil
		case elliptic.P521():
			return jwa.ES512(), nil
		}
	case ed25519.PublicKey:
		return jwa.EdDSA(), nil
	case *rsa.PublicKey:
		return jwa.PS256(), nil
	}
	return jwa.SignatureAlgorithm{}, fmt.Errorf("ear: no JWS algorithm for a %T key", pub)
}

// publicJWK is pub as a JWK with its algorithm, use and key id (the RFC
// 7638 thumbprint).
func publicJWK(pub crypto.PublicKey) (jwk.Key, error) {
	alg, err := Algorithm(pub)
	if err != nil {
		return nil, err
	}
	k, err := jwk.Import(pub)
	if err != nil {
		return nil, fmt.Errorf("ear: key: %w", err)
	}
	if err := jwk.AssignKeyID(k); err != nil {
		return nil, fmt.Errorf("ear: key id: %w", err)
	}
	if err := k.Set(jwk.AlgorithmKey, alg); err != nil {
		return nil, fmt.Errorf("ear: key: %w", err)
	}
	if err := k.Set(jwk.KeyUsageKey, jwk.ForSignature); err != nil {
		return nil, fmt.Errorf("ear: key: %w", err)
	}
	return k, nil
}

// KeyID is the key id EARs signed with the key of pub carry: its JWK
// thumbprint (RFC 7638, SHA-256).
func KeyID(pub crypto.PublicKey) (string, error) {
	k, err := publicJWK(pub)
	if err != nil {
		return "", err
	}
	kid, _ := k.KeyID()
	return kid, nil
}

// JWKS is the JSON Web Key Set that verifies EARs signed with the key of
// pub, as served on GET /v1/jwks.
func JWKS(pub crypto.PublicKey) ([]byte, error) {
	k, err := publicJWK(pub)
	if err != nil {
		return nil, err
	}
	set := jwk.NewSet()
	if err := set.AddKey(k); err != nil {
		return nil, fmt.Errorf("ear: key set: %w", err)
	}
	return json.Marshal(set)
}

// MaxTokenSize bounds a token read from a file or a network answer.
const MaxTokenSize = 64 << 10

// Result is a checked EAR.
type Result struct {
	AR      *ear.AttestationResult
	Expires time.Time
}

// Status is the status of the cpu0 submodule.
func (r *Result) Status() ear.TrustTier { return *r.AR.Submods[Submod].Status }

// Evidence returns the cpu0 submodule's annotated evidence (the claims).
func (r *Result) Evidence() map[string]any {
	if e := r.AR.Submods[Submod].VeraisonAnnotatedEvidence; e != nil {
		return *e
	}
	return nil
}

// Verify checks token's signature with pub (the attestation service's CA
// key: the algorithm follows from it, whatever the token's header says),
// that it has not expired at now and was not issued after it (with a
// minute of clock skew), and that it has a cpu0 submodule; it returns the
// result with the library's own parser.
func Verify(token []byte, pub crypto.PublicKey, now time.Time) (*Result, error) {
	if len(token) > MaxTokenSize {
		return nil, fmt.Errorf("ear: token is over %d bytes", MaxTokenSize)
	}
	alg, err := Algorithm(pub)
	if err != nil {
		return nil, err
	}
	var ar ear.AttestationResult
	if err := ar.Verify(token, alg, pub); err != nil {
		return nil, fmt.Errorf("ear: %w", err)
	}
	exp, err := expiry(token)
	if err != nil {
		return nil, err
	}
	const skew = time.Minute
	switch {
	case !now.Before(exp):
		return nil, fmt.Errorf("ear: expired at %s", exp.UTC().Format(time.RFC3339))
	case time.Unix(*ar.IssuedAt, 0).After(now.Add(skew)):
		return nil, fmt.Errorf("ear: issued in the future (%s)", time.Unix(*ar.IssuedAt, 0).UTC().Format(time.RFC3339))
	}
	a := ar.Submods[Submod]
	if a == nil || a.Status == nil {
		names := make([]string, 0, len(ar.Submods))
		for n := range ar.Submods {
			names = append(names, n)
		}
		sort.Strings(names)
		return nil, fmt.Errorf("ear: no %s submodule (has %s)", Submod, strings.Join(names, ", "))
	}
	return &Result{AR: &ar, Expires: exp}, nil
}

// expiry reads the exp claim of a token whose signature was checked.
func expiry(token []byte) (time.Time, error) {
	parts := strings.Split(string(token), ".")
	if len(parts) != 3 {
		return time.Time{}, errors.New("ear: not a compact JWS")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, fmt.Errorf("ear: payload: %w", err)
	}
	var c struct {
		Exp *json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return time.Time{}, fmt.Errorf("ear: payload: %w", err)
	}
	if c.Exp == nil {
		return time.Time{}, errors.New("ear: no exp claim")
	}
	v, err := c.Exp.Int64()
	if err != nil {
		return time.Time{}, fmt.Errorf("ear: exp %s is not whole seconds", c.Exp)
	}
	return time.Unix(v, 0), nil
}

// CertificateStatus is the ear.status an EAR would have given the claims of
// a keep certificate the service issued: every check passed, so only the
// platform, simulation and debug facets can lower it (simulated: warning;
// none: contraindicated). castellan verify prints it beside the claims.
func CertificateStatus(platform string, simulated, debug bool) ear.TrustTier {
	var tv ear.TrustVector
	Vector(Input{Claims: &evidence.Claims{Platform: platform, Simulated: simulated, Debug: debug},
		Facets: policy.Facets{MeasurementListed: true, WorkloadListed: true}}, &tv)
	st := ear.TrustTierAffirming
	a := ear.Appraisal{TrustVector: &tv, Status: &st}
	a.UpdateStatusFromTrustVector()
	return *a.Status
}
