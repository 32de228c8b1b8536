package service

import (
	"net/http"
	"testing"

	"github.com/castellan-dev/castellan/internal/attest/eartoken"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/veraison/ear"
)

// An EAR is returned beside the certificate when asked for, signed with the
// CA key, with the cpu0 submodule's status and vector from the checks.
func TestEAR(t *testing.T) {
	h := newHarness(t)
	h.now = h.now.Truncate(1e9)
	for _, p := range []string{evidence.PlatformSNP, evidence.PlatformTDX} {
		n := h.challenge()
		code, e, cr := h.post(h.body(keepReq{platform: p, nonce: n, ear: true}))
		if code != http.StatusOK || cr.EAR == "" {
			t.Fatalf("%s: %d %+v, EAR %q", p, code, e, cr.EAR)
		}
		r, err := eartoken.Verify([]byte(cr.EAR), h.ca.Cert.PublicKey, h.now)
		if err != nil {
			t.Fatal(err)
		}
		a := r.AR.Submods[eartoken.Submod]
		// Simulated hardware: a warning, from the hardware and runtime-opaque claims.
		if r.Status() != ear.TrustTierWarning || a.TrustVector.Hardware != ear.UnsafeHardwareClaim || a.TrustVector.Executables != ear.ApprovedRuntimeClaim {
			t.Errorf("%s: status %v vector %+v", p, r.Status(), a.TrustVector)
		}
		if ev := r.Evidence(); ev["platform"] != p || ev["workload_digest"] != goodDigest || ev["simulated"] != true {
			t.Errorf("%s: evidence %v", p, ev)
		}
		if r.Expires.Sub(h.now) != 10*60*1e9 {
			t.Errorf("%s: expires %v after now, want the certificate lifetime", p, r.Expires.Sub(h.now))
		}
		if *r.AR.Nonce == "" {
			t.Errorf("%s: no eat_nonce", p)
		}
	}
	// Not asked for: none.
	if _, _, cr := h.post(h.body(keepReq{})); cr.EAR != "" {
		t.Errorf("EAR without asking")
	}
}

func TestEAROnRefusal(t *testing.T) {
	h := newHarness(t)
	h.now = h.now.Truncate(1e9)
	tests := []struct {
		name   string
		req    keepReq
		check  string
		ear    bool
		vector ear.TrustVector
	}{
		{"workload", keepReq{digest: otherDigest}, "workload", true,
			ear.TrustVector{InstanceIdentity: 2, Configuration: 3, Executables: 33, Hardware: 32, RuntimeOpaque: 32}},
		{"signature", keepReq{tamper: func(r []byte) { r[0x90] ^= 1 }}, CheckSignature, true, ear.TrustVector{Hardware: 99}},
		{"report data", keepReq{bindKey: newKey(t)}, CheckReportData, true, ear.TrustVector{InstanceIdentity: 96}},
		{"key, before verification", keepReq{csrKey: newKey(t)}, CheckKey, false, ear.TrustVector{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			tt.req.ear = true
			e := h.mustRefuse(h.body(tt.req), tt.check)
			if !tt.ear {
				if e.EAR != "" {
					t.Errorf("an EAR for a request refused before verification")
				}
				return
			}
			r, err := eartoken.Verify([]byte(e.EAR), h.ca.Cert.PublicKey, h.now)
			if err != nil {
				t.Fatal(err)
			}
			if a := r.AR.Submods[eartoken.Submod]; r.Status() != ear.TrustTierContraindicated || *a.TrustVector != tt.vector {
				t.Errorf("status %v vector %+v, want contraindicated %+v", r.Status(), *a.TrustVector, tt.vector)
			}
		})
	}
}

// GET /v1/jwks publishes the key EARs are signed with.
func TestJWKSEndpoint(t *testing.T) {
	h := newHarness(t)
	w := h.do("GET", "/v1/jwks", nil)
	set, err := jwk.Parse(w.Body.Bytes())
	if w.Code != http.StatusOK || err != nil || set.Len() != 1 {
		t.Fatalf("GET /v1/jwks: %d %v %s", w.Code, err, w.Body)
	}
	_, _, cr := h.post(h.body(keepReq{ear: true}))
	k, _ := set.Key(0)
	alg, _ := k.Algorithm()
	var ar ear.AttestationResult
	if err := ar.Verify([]byte(cr.EAR), alg, k); err != nil {
		t.Errorf("EAR with the published JWK: %v", err)
	}
}
