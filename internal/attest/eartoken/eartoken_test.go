package eartoken

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/policy"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"github.com/veraison/ear"
)

var now = time.Now().Truncate(time.Second)

func claims() *evidence.Claims {
	return &evidence.Claims{Platform: "snp", Measurement: make([]byte, 48), WorkloadDigest: "sha256:" + strings.Repeat("ab", 32),
		TCB: map[string]uint64{"snp": 22}}
}

func good() Input {
	return Input{Now: now, Build: "castellan test", Nonce: make([]byte, 48), Claims: claims(),
		Facets: policy.Facets{MeasurementListed: true, WorkloadListed: true}, SPIFFEID: "spiffe://td/w"}
}

func sign(t *testing.T, in Input, key crypto.Signer, exp time.Time) []byte {
	t.Helper()
	ar, err := Appraise(in)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Sign(ar, key, exp)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Round trip through the library's own verifier, for each kind of CA key.
func TestRoundTrip(t *testing.T) {
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for _, key := range []crypto.Signer{newKey(t), p384, edKey} {
		tok := sign(t, good(), key, now.Add(time.Hour))
		// The library alone, as a relying party in Go would use it.
		alg, _ := Algorithm(key.Public())
		var ar ear.AttestationResult
		if err := ar.Verify(tok, alg, key.Public()); err != nil {
			t.Fatalf("%T: library verifier: %v", key, err)
		}
		if *ar.Submods[Submod].Status != ear.TrustTierAffirming || *ar.Nonce != base64.RawURLEncoding.EncodeToString(make([]byte, 48)) {
			t.Errorf("%T: %+v", key, ar)
		}
		r, err := Verify(tok, key.Public(), now)
		if err != nil {
			t.Fatalf("%T: %v", key, err)
		}
		if r.Status() != ear.TrustTierAffirming || r.Evidence()["workload_digest"] != good().Claims.WorkloadDigest || !r.Expires.Equal(now.Add(time.Hour)) {
			t.Errorf("%T: status %v, evidence %v, expires %v", key, r.Status(), r.Evidence(), r.Expires)
		}
		if pc := *r.AR.Submods[Submod].VeraisonPolicyClaims; pc["spiffe_id"] != "spiffe://td/w" {
			t.Errorf("policy claims %v", pc)
		}
	}
}

func TestTampered(t *testing.T) {
	key := newKey(t)
	tok := string(sign(t, good(), key, now.Add(time.Hour)))
	parts := strings.Split(tok, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	reencode := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	var m map[string]any
	json.Unmarshal(payload, &m)
	m["submods"].(map[string]any)[Submod].(map[string]any)["ear.status"] = "affirming"
	m["exp"] = now.Add(100 * time.Hour).Unix()
	forged, _ := json.Marshal(m)

	unsigned := jwt.New()
	unsigned.Set("eat_profile", ear.EatProfile)
	noneTok, _ := jwt.NewSerializer().Serialize(unsigned)
	hs, _ := jwt.Sign(unsigned, jwt.WithKey(jwa.HS256(), []byte("secret")))
	noExp := func() string {
		ar, _ := Appraise(good())
		b, _ := ar.Sign(jwa.ES256(), key) // the library's Sign sets no exp
		return string(b)
	}()
	noCPU := func() string {
		ar := ear.NewAttestationResult("gpu0", "b", "d")
		b, _ := Sign(ar, key, now.Add(time.Hour))
		return string(b)
	}()
	tests := []struct {
		name, token string
		at          time.Time
		want        string
	}{
		{"payload changed", parts[0] + "." + reencode(forged) + "." + parts[2], now, "failed verifying"},
		{"signature changed", parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2])), now, "failed verifying"},
		{"signature dropped", parts[0] + "." + parts[1] + ".", now, "failed verifying"},
		{"alg none", string(noneTok), now, "failed verifying"},
		{"HMAC", string(hs), now, "failed verifying"},
		{"another key", string(sign(t, good(), newKey(t), now.Add(time.Hour))), now, "failed verifying"},
		{"expired", tok, now.Add(time.Hour), "expired"},
		{"issued in the future", tok, now.Add(-time.Hour), "issued in the future"},
		{"no exp", noExp, now, "no exp"},
		{"no cpu0", noCPU, now, "no cpu0 submodule (has gpu0)"},
		{"not a token", "hello", now, "ear:"},
		{"too big", strings.Repeat("a", MaxTokenSize+1), now, "over"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Verify([]byte(tt.token), key.Public(), tt.at)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, %v; want an error with %q", r, err, tt.want)
			}
		})
	}
}

// The vector follows the checks (docs/attest.md has the table).
func TestVector(t *testing.T) {
	sim := claims()
	sim.Simulated = true
	debug := claims()
	debug.Debug = true
	none := claims()
	none.Platform, none.Measurement, none.TCB = "none", nil, nil
	tests := []struct {
		name   string
		edit   func(in *Input)
		want   ear.TrustVector
		status ear.TrustTier
	}{
		{"accepted, listed workload", func(in *Input) {}, ear.TrustVector{InstanceIdentity: 2, Configuration: 3, Executables: 2, Hardware: 2, RuntimeOpaque: 2}, ear.TrustTierAffirming},
		{"any workload", func(in *Input) { in.Facets.WorkloadListed, in.Facets.AnyWorkload = false, true },
			ear.TrustVector{InstanceIdentity: 2, Configuration: 3, Executables: 3, Hardware: 2, RuntimeOpaque: 2}, ear.TrustTierAffirming},
		{"simulated", func(in *Input) { in.Claims = sim }, ear.TrustVector{InstanceIdentity: 2, Configuration: 3, Executables: 2, Hardware: 32, RuntimeOpaque: 32}, ear.TrustTierWarning},
		{"none", func(in *Input) { in.Claims = none }, ear.TrustVector{InstanceIdentity: 2, Hardware: 97, RuntimeOpaque: 96}, ear.TrustTierContraindicated},
		{"chain", func(in *Input) { in.Claims, in.VerifyCheck, in.Refused, in.Check = nil, "chain", true, "chain" }, ear.TrustVector{Hardware: 99}, ear.TrustTierContraindicated},
		{"verifier: tcb", func(in *Input) { in.Claims, in.VerifyCheck, in.Refused, in.Check = nil, "tcb", true, "tcb" }, ear.TrustVector{Hardware: 32}, ear.TrustTierContraindicated},
		{"verifier: a guest setting", func(in *Input) { in.Claims, in.VerifyCheck, in.Refused, in.Check = nil, "debug", true, "debug" }, ear.TrustVector{Configuration: 96}, ear.TrustTierContraindicated},
		{"report data", func(in *Input) {
			in.Claims, in.VerifyCheck, in.Refused, in.Check = nil, "report_data", true, "report_data"
		}, ear.TrustVector{InstanceIdentity: 96}, ear.TrustTierContraindicated},
		{"debug", func(in *Input) { in.Claims, in.Refused, in.Check = debug, true, "debug" }, ear.TrustVector{InstanceIdentity: 2, Configuration: 96, Executables: 2, Hardware: 2, RuntimeOpaque: 2}, ear.TrustTierContraindicated},
		{"tcb low", func(in *Input) { in.Facets.TCBBelowMinimum, in.Refused, in.Check = true, true, "tcb" }, ear.TrustVector{InstanceIdentity: 2, Configuration: 3, Executables: 2, Hardware: 32, RuntimeOpaque: 2}, ear.TrustTierContraindicated},
		{"tcb revoked", func(in *Input) { in.Facets.TCBRevoked, in.Refused, in.Check = true, true, "revoked" }, ear.TrustVector{InstanceIdentity: 2, Configuration: 3, Executables: 2, Hardware: 96, RuntimeOpaque: 2}, ear.TrustTierContraindicated},
		{"platform revoked", func(in *Input) {
			in.Facets = policy.Facets{PlatformRevoked: true}
			in.Refused, in.Check = true, "revoked"
		}, ear.TrustVector{InstanceIdentity: 2, Configuration: 3, Hardware: 96, RuntimeOpaque: 2}, ear.TrustTierContraindicated},
		{"measurement unknown", func(in *Input) { in.Facets.MeasurementListed, in.Refused, in.Check = false, true, "measurement" }, ear.TrustVector{InstanceIdentity: 2, Configuration: 3, Executables: 33, Hardware: 2, RuntimeOpaque: 2}, ear.TrustTierContraindicated},
		{"measurement revoked", func(in *Input) { in.Facets.MeasurementRevoked, in.Refused, in.Check = true, true, "revoked" }, ear.TrustVector{InstanceIdentity: 2, Configuration: 3, Executables: 96, Hardware: 2, RuntimeOpaque: 2}, ear.TrustTierContraindicated},
		{"workload", func(in *Input) { in.Facets.WorkloadListed, in.Refused, in.Check = false, true, "workload" }, ear.TrustVector{InstanceIdentity: 2, Configuration: 3, Executables: 33, Hardware: 2, RuntimeOpaque: 2}, ear.TrustTierContraindicated},
		{"names", func(in *Input) { in.Refused, in.Check = true, "csr" }, ear.TrustVector{InstanceIdentity: 2, Configuration: 3, Executables: 2, Hardware: 2, RuntimeOpaque: 2}, ear.TrustTierContraindicated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := good()
			tt.edit(&in)
			ar, err := Appraise(in)
			if err != nil {
				t.Fatal(err)
			}
			a := ar.Submods[Submod]
			if *a.TrustVector != tt.want {
				t.Errorf("vector %+v, want %+v", *a.TrustVector, tt.want)
			}
			if *a.Status != tt.status {
				t.Errorf("status %v, want %v", *a.Status, tt.status)
			}
		})
	}
}

func TestCertificateStatus(t *testing.T) {
	for _, tt := range []struct {
		platform         string
		simulated, debug bool
		want             ear.TrustTier
	}{
		{"snp", false, false, ear.TrustTierAffirming},
		{"tdx", true, false, ear.TrustTierWarning},
		{"none", false, false, ear.TrustTierContraindicated},
		{"snp", false, true, ear.TrustTierContraindicated},
	} {
		if got := CertificateStatus(tt.platform, tt.simulated, tt.debug); got != tt.want {
			t.Errorf("%+v: %v", tt, got)
		}
	}
}

// FuzzVerify feeds arbitrary tokens (castellan verify --ear reads files
// anyone may hand over): no panic, and nothing verifies under a key that
// did not sign it.
func FuzzVerify(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ar, _ := Appraise(good())
	tok, _ := Sign(ar, key, now.Add(time.Hour))
	f.Add(tok)
	f.Add([]byte("a.b.c"))
	f.Add([]byte("eyJhbGciOiJub25lIn0.e30."))
	f.Add([]byte{})
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := Verify(b, other.Public(), now); err == nil {
			t.Fatalf("verified under a key that signed nothing: %+v", r)
		}
		if r, err := Verify(b, key.Public(), now); err == nil && (r.AR.Submods[Submod] == nil || r.Expires.Before(now)) {
			t.Fatalf("verified result %+v", r)
		}
	})
}

// A relying party with only the published JWKS verifies an EAR with the
// library: the token's kid names the key in the set.
func TestJWKS(t *testing.T) {
	key := newKey(t)
	tok := sign(t, good(), key, now.Add(time.Hour))
	b, err := JWKS(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	set, err := jwk.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := jws.Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	kid, _ := msg.Signatures()[0].ProtectedHeaders().KeyID()
	k, ok := set.LookupKeyID(kid)
	if !ok {
		t.Fatalf("kid %q not in %s", kid, b)
	}
	alg, _ := k.Algorithm()
	var ar ear.AttestationResult
	if err := ar.Verify(tok, alg, k); err != nil {
		t.Fatalf("verifying with the JWKS key: %v", err)
	}
	if !strings.Contains(string(b), `"use":"sig"`) || !strings.Contains(string(b), `"alg":"ES256"`) {
		t.Errorf("JWKS %s", b)
	}
}
