package service

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/policy"
)

// Defect 2 of issue 10: anonymous challenges exhausted a global nonce store
// and locked real keeps out. Challenges now store nothing: after 100 000 of
// them nothing is recorded, and a keep still gets a certificate.
func TestChallengeFloodDoesNotLockOut(t *testing.T) {
	h := newHarness(t) // max_nonces = 50
	const flood = 100_000
	for i := range flood {
		if w := h.do("POST", "/v1/challenge", nil); w.Code != http.StatusOK {
			t.Fatalf("challenge %d: %d %s", i, w.Code, w.Body)
		}
	}
	if n, err := h.log.UsedNonces(context.Background(), h.now); err != nil || n != 0 {
		t.Fatalf("%d nonces stored after %d challenges (%v), want 0", n, flood, err)
	}
	h.mustIssue(keepReq{})
}

func TestNonceRefusals(t *testing.T) {
	h := newHarness(t)
	tests := []struct {
		name   string
		nonce  func() []byte
		reason string
	}{
		{"sealed with another key", func() []byte { return NewNonceKey().seal(h.now, time.Minute) }, "not issued by this service"},
		{"seal tampered", func() []byte { n := h.challenge(); n[NonceSize-1] ^= 1; return n }, "not issued by this service"},
		{"issue time moved back", func() []byte { n := h.challenge(); n[5] ^= 1; return n }, "not issued by this service"},
		{"lifetime changed", func() []byte { n := h.challenge(); n[12] ^= 1; return n }, "not issued by this service"},
		{"random part changed", func() []byte { n := h.challenge(); n[20] ^= 1; return n }, "not issued by this service"},
		{"truncated", func() []byte { return h.challenge()[:NonceSize-1] }, "not issued by this service"},
		{"other version", func() []byte { n := h.challenge(); n[0] = 1; return n }, "not issued by this service"},
		{"expired", func() []byte { return h.nonceKey.seal(h.now.Add(-61*time.Second), time.Minute) }, "expired"},
		{"issued in the future", func() []byte { return h.nonceKey.seal(h.now.Add(time.Hour), time.Minute) }, "future"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			e := h.mustRefuse(h.body(keepReq{nonce: tt.nonce()}), CheckNonce)
			if !strings.Contains(e.Error, tt.reason) {
				t.Errorf("reason %q, want %q", e.Error, tt.reason)
			}
		})
	}
	// Within the allowed clock skew of replicas, a nonce from the near future is fine.
	h.t = t
	h.mustIssue(keepReq{nonce: h.nonceKey.seal(h.now.Add(10*time.Second), time.Minute)})
}

// The used-nonce ledger is bounded by max_nonces: beyond it a redeem gets
// 503 (and the nonce stays unused), while challenges are still answered;
// once the used nonces expire, there is room again.
func TestUsedNonceLedgerFull(t *testing.T) {
	h := newHarness(t) // max_nonces = 50
	for range 50 {
		h.mustRefuse(h.body(keepReq{digest: otherDigest}), "workload") // each uses its nonce
	}
	n := h.challenge()
	code, e, _ := h.post(h.body(keepReq{nonce: n}))
	if code != http.StatusServiceUnavailable || e.Check != CheckNonce {
		t.Fatalf("redeem with a full ledger: %d %+v, want 503 nonce", code, e)
	}
	if w := h.do("POST", "/v1/challenge", nil); w.Code != http.StatusOK {
		t.Fatalf("challenge with a full ledger: %d", w.Code)
	}
	h.now = h.now.Add(61 * time.Second)
	h.mustIssue(keepReq{})
}

func TestChallengeAnswer(t *testing.T) {
	h := newHarness(t)
	w := h.do("POST", "/v1/challenge", nil)
	var c ChallengeResponse
	if err := json.Unmarshal(w.Body.Bytes(), &c); err != nil {
		t.Fatal(err)
	}
	if len(c.Nonce) != NonceSize || !c.Expires.Equal(h.now.Add(time.Minute).UTC().Truncate(0)) {
		t.Errorf("challenge %+v", c)
	}
}

func TestNonceKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "nonce-key")
	k1, err := LoadOrCreateNonceKey(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", st, err)
	}
	k2, err := LoadOrCreateNonceKey(path)
	if err != nil || k2.k != k1.k {
		t.Fatalf("reloaded key differs (%v)", err)
	}
	// A nonce sealed by one replica opens at another with the same file.
	now := time.Now()
	if _, _, err := k2.open(k1.seal(now, time.Minute), now, time.Minute); err != nil {
		t.Errorf("nonce across replicas: %v", err)
	}
	for _, tt := range []struct{ name, content, want string }{
		{"short", "abcd\n", "hex digits"},
		{"not hex", strings.Repeat("zz", 32), "hex digits"},
	} {
		p := filepath.Join(dir, tt.name)
		os.WriteFile(p, []byte(tt.content), 0o600)
		if _, err := LoadOrCreateNonceKey(p); err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
	os.Chmod(path, 0o640)
	if _, err := LoadOrCreateNonceKey(path); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Errorf("group-readable key: %v", err)
	}
}

// Certificate requests handled at once are bounded: a caller holding every
// slot (here one, with a body that never ends) makes others wait, then get
// 503, instead of piling up bodies and verifications without limit.
func TestInFlightBound(t *testing.T) {
	h := newHarness(t)
	svc, err := New(Config{Policy: h.store, CA: h.ca, Audit: h.log, MaxInFlight: 1, InFlightWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		svc.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/v1/certificate", pr))
	}()
	pw.Write([]byte(`{"csr":`)) // the slot is taken once the handler reads
	w := httptest.NewRecorder()
	svc.ServeHTTP(w, httptest.NewRequest("POST", "/v1/certificate", strings.NewReader("{}")))
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Errorf("second request: %d %s, want 503 with Retry-After", w.Code, w.Body)
	}
	// Challenges are not bounded by it.
	w = httptest.NewRecorder()
	svc.ServeHTTP(w, httptest.NewRequest("POST", "/v1/challenge", nil))
	if w.Code != http.StatusOK {
		t.Errorf("challenge: %d", w.Code)
	}
	pw.Close()
	<-done
	w = httptest.NewRecorder()
	svc.ServeHTTP(w, httptest.NewRequest("POST", "/v1/certificate", strings.NewReader("{}")))
	if w.Code != http.StatusBadRequest {
		t.Errorf("after the slot is free: %d, want 400", w.Code)
	}
}

// hugeRSACSR builds, by hand, a CSR for a 16384-bit RSA key with a junk
// signature (Go refuses to sign one that does not verify).
func hugeRSACSR(t *testing.T) []byte {
	n := new(big.Int).Lsh(big.NewInt(1), 16383)
	n.Add(n, big.NewInt(1))
	spki, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: n, E: 65537})
	if err != nil {
		t.Fatal(err)
	}
	subject, _ := asn1.Marshal(pkix.RDNSequence{})
	info, err := asn1.Marshal(struct {
		Version    int
		Subject    asn1.RawValue
		PublicKey  asn1.RawValue
		Attributes []asn1.RawValue `asn1:"tag:0"`
	}{0, asn1.RawValue{FullBytes: subject}, asn1.RawValue{FullBytes: spki}, nil})
	if err != nil {
		t.Fatal(err)
	}
	der, err := asn1.Marshal(struct {
		Info      asn1.RawValue
		Algorithm pkix.AlgorithmIdentifier
		Signature asn1.BitString
	}{asn1.RawValue{FullBytes: info}, pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}, Parameters: asn1.NullRawValue},
		asn1.BitString{Bytes: make([]byte, 2048), BitLength: 2048 * 8}})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// The CSR's key kind and size are checked before its signature: an
// anonymous caller cannot make the service verify a 16384-bit RSA signature.
func TestHugeRSAKeyRefusedBeforeSignature(t *testing.T) {
	csr := hugeRSACSR(t)
	if _, err := x509.ParseCertificateRequest(csr); err != nil {
		t.Fatalf("the hand-made CSR does not parse: %v", err)
	}
	h := newHarness(t)
	e := h.mustRefuse(h.body(keepReq{csr: csr}), CheckKey)
	if !strings.Contains(e.Error, "16384 bits") {
		t.Errorf("reason %q", e.Error)
	}
}

// A nonce serves once even when the owner raises nonce_lifetime after it
// was used: the ledger kept it only until its expiry under the old
// lifetime, and the seal alone said nothing of that lifetime, so once that
// expiry passed the same nonce (and the evidence that binds it) redeemed
// again under the new one.
func TestNonceReplayAfterLifetimeRaised(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	minute := &policy.Policy{NonceLifetime: policy.Duration(time.Minute), MaxNonces: 50}
	hour := &policy.Policy{NonceLifetime: policy.Duration(time.Hour), MaxNonces: 50}
	n := h.challenge() // issued under the harness policy's 60 s
	if r := h.svc.redeem(ctx, n, h.now, minute); r != nil {
		t.Fatalf("first redeem: %v", r)
	}
	for _, later := range []time.Duration{30 * time.Second, 2 * time.Minute, 30 * time.Minute} {
		if r := h.svc.redeem(ctx, n, h.now.Add(later), hour); r == nil || r.Check != CheckNonce {
			t.Errorf("redeemed again %v later under a lifetime raised to an hour: %v", later, r)
		}
	}
	// A nonce issued under the hour lives its hour; one issued under a
	// minute, not yet used, still dies at its minute.
	if r := h.svc.redeem(ctx, h.challenge(), h.now.Add(2*time.Minute), hour); r == nil || !strings.Contains(r.Reason, "expired") {
		t.Errorf("unused 60 s nonce redeemed 2 min later under an hour's lifetime: %v", r)
	}
	// Lowering the lifetime still shortens nonces already issued.
	if r := h.svc.redeem(ctx, h.challenge(), h.now.Add(30*time.Second), &policy.Policy{NonceLifetime: policy.Duration(10 * time.Second), MaxNonces: 50}); r == nil || !strings.Contains(r.Reason, "expired") {
		t.Errorf("nonce redeemed after a lowered lifetime passed: %v", r)
	}
}
