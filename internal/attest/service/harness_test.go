package service

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/audit"
	"github.com/castellan-dev/castellan/internal/attest/ca"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/policy"
	"github.com/castellan-dev/castellan/internal/tee/sim"
	"github.com/castellan-dev/castellan/keepcert"
)

// Simulation CAs are slow to make (RSA keys); the tests share two: the
// trusted one and a stranger whose roots no policy names.
var (
	simOnce              sync.Once
	simTrusted, simOther *sim.CA
	simErr               error
)

func simCAs(t testing.TB) (*sim.CA, *sim.CA) {
	simOnce.Do(func() {
		if simTrusted, simErr = sim.New(); simErr != nil {
			return
		}
		simOther, simErr = sim.New()
	})
	if simErr != nil {
		t.Fatal(simErr)
	}
	return simTrusted, simOther
}

var (
	goodMeasurement = bytes.Repeat([]byte{0x11}, 48)
	goodDigest      = "sha256:" + strings.Repeat("ab", 32)
	otherDigest     = "sha256:" + strings.Repeat("cd", 32)
)

// policyTOML is the test policy; %s is the sim roots file.
const policyTOML = `
nonce_lifetime = "60s"
max_nonces = 50
certificate_lifetime = "10m"
allow_sans = false
allow_insecure = false
workloads = ["%s"]

[platforms.snp]
sim_roots = ["%s"]
[platforms.snp.min_tcb]
bootloader = 3
snp = 20
microcode = 200

[platforms.tdx]
sim_roots = ["%s"]
[platforms.tdx.min_tcb]
"tee_tcb_svn.0" = 5
qe_svn = 8
`

func measurementsTOML(revoked bool) string {
	return fmt.Sprintf(`
[[measurement]]
platform = "snp"
value = "%[1]s"
name = "castellan test runtime"
revoked = %[2]v

[[measurement]]
platform = "tdx"
value = "%[1]s"
name = "castellan test runtime"
revoked = %[2]v
`, hex.EncodeToString(goodMeasurement), revoked)
}

type harness struct {
	t          testing.TB
	dir        string
	sim        *sim.CA
	other      *sim.CA
	ca         *ca.CA
	store      *policy.Store
	log        *audit.DB
	svc        *Service
	now        time.Time
	policyFile string
	measFile   string
	rootsFile  string
	nonceKey   *NonceKey
}

func newHarness(t testing.TB) *harness {
	trusted, other := simCAs(t)
	dir := t.TempDir()
	h := &harness{t: t, dir: dir, sim: trusted, other: other, now: time.Now()}
	h.rootsFile = filepath.Join(dir, "sim-roots.pem")
	h.policyFile = filepath.Join(dir, "policy.toml")
	h.measFile = filepath.Join(dir, "measurements.toml")
	h.write(h.rootsFile, string(trusted.RootsPEM()))
	h.writePolicy(goodDigest)
	h.write(h.measFile, measurementsTOML(false))
	var err error
	if h.store, err = policy.Open(h.policyFile, h.measFile); err != nil {
		t.Fatal(err)
	}
	if h.ca, err = ca.New("test CA"); err != nil {
		t.Fatal(err)
	}
	if h.log, err = audit.Open(context.Background(), "sqlite:"+filepath.Join(dir, "audit.db")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.log.Close() })
	h.nonceKey = NewNonceKey()
	// The per-client limit is off: every request comes from one address
	// here, and the tests of other checks send many (ratelimit_test.go
	// turns it on).
	h.svc, err = New(Config{Policy: h.store, CA: h.ca, Audit: h.log, Now: func() time.Time { return h.now },
		NonceKey: h.nonceKey, UsedNonces: h.log, ClientRate: -1})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *harness) write(path, s string) {
	h.t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) writePolicy(workloads string, extra ...string) {
	h.write(h.policyFile, fmt.Sprintf(policyTOML, workloads, h.rootsFile, h.rootsFile)+strings.Join(extra, "\n"))
}

// setPolicy rewrites the policy with edit applied to the text and reloads.
func (h *harness) setPolicy(edit func(string) string) {
	h.t.Helper()
	h.write(h.policyFile, edit(fmt.Sprintf(policyTOML, goodDigest, h.rootsFile, h.rootsFile)))
	if _, err := h.store.Reload(); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) do(method, path string, body []byte) *httptest.ResponseRecorder {
	return h.doFrom("127.0.0.1:4444", method, path, body)
}

// doFrom is do from another client address.
func (h *harness) doFrom(remote, method, path string, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	req.RemoteAddr = remote
	w := httptest.NewRecorder()
	h.svc.ServeHTTP(w, req)
	return w
}

func (h *harness) challenge() []byte {
	h.t.Helper()
	w := h.do("POST", "/v1/challenge", nil)
	if w.Code != http.StatusOK {
		h.t.Fatalf("challenge: %d %s", w.Code, w.Body)
	}
	var c ChallengeResponse
	if err := json.Unmarshal(w.Body.Bytes(), &c); err != nil {
		h.t.Fatal(err)
	}
	if len(c.Nonce) != NonceSize {
		h.t.Fatalf("nonce of %d bytes", len(c.Nonce))
	}
	return c.Nonce
}

// keepReq describes one keep's request; zero fields take good defaults.
type keepReq struct {
	platform string
	snp      sim.SNPOptions
	tdx      sim.TDXOptions
	sgx      sim.SGXOptions
	cca      sim.CCAOptions
	signer   *sim.CA           // default: the trusted simulation CA
	key      *ecdsa.PrivateKey // the keep's key: in the envelope and the CSR
	csrKey   *ecdsa.PrivateKey // CSR for another key
	bindKey  *ecdsa.PrivateKey // report data bound to another key
	nonce    []byte            // default: a fresh challenge
	digest   string
	tamper   func(report []byte)
	csr      []byte // replaces the CSR DER
	evidence []byte // replaces the envelope CBOR
	csrTpl   *x509.CertificateRequest
	pkg      string
	ear      bool
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func spki(t testing.TB, k *ecdsa.PrivateKey) []byte {
	b, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// body builds the JSON body of a certificate request.
func (h *harness) body(r keepReq) []byte {
	t := h.t
	t.Helper()
	if r.platform == "" {
		r.platform = evidence.PlatformSNP
	}
	if r.signer == nil {
		r.signer = h.sim
	}
	if r.key == nil {
		r.key = newKey(t)
	}
	if r.csrKey == nil {
		r.csrKey = r.key
	}
	if r.bindKey == nil {
		r.bindKey = r.key
	}
	if r.nonce == nil {
		r.nonce = h.challenge()
	}
	if r.digest == "" {
		r.digest = goodDigest
	}
	if r.snp.Measurement == nil {
		r.snp.Measurement = goodMeasurement
	}
	if r.tdx.Measurement == nil {
		r.tdx.Measurement = goodMeasurement
	}
	env := &evidence.Envelope{Platform: r.platform, Key: spki(t, r.key), Nonce: r.nonce, WorkloadDigest: r.digest}
	rd := evidence.ReportData(spki(t, r.bindKey), r.nonce, r.digest)
	var err error
	switch r.platform {
	case evidence.PlatformSNP:
		env.Evidence, env.Endorsements, err = r.signer.SignSNP(rd, r.snp)
	case evidence.PlatformTDX:
		env.Evidence, err = r.signer.SignTDX(rd, r.tdx)
	case evidence.PlatformSGX:
		env.Evidence, err = r.signer.SignSGX(rd, r.sgx)
	case evidence.PlatformCCA:
		env.Evidence, err = r.signer.SignCCA(rd, r.cca)
	}
	if err != nil {
		t.Fatal(err)
	}
	if r.tamper != nil {
		r.tamper(env.Evidence)
	}
	evb := r.evidence
	if evb == nil {
		if evb, err = env.Marshal(); err != nil {
			t.Fatal(err)
		}
	}
	csr := r.csr
	if csr == nil {
		tpl := r.csrTpl
		if tpl == nil {
			tpl = &x509.CertificateRequest{Subject: pkix.Name{CommonName: "keep"}}
		}
		if csr, err = x509.CreateCertificateRequest(rand.Reader, tpl, r.csrKey); err != nil {
			t.Fatal(err)
		}
	}
	b, err := json.Marshal(CertificateRequest{CSR: csr, Evidence: evb, Package: r.pkg, EAR: r.ear})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// post sends a certificate request and decodes the answer.
func (h *harness) post(body []byte) (int, ErrorResponse, *CertificateResponse) {
	w := h.do("POST", "/v1/certificate", body)
	var e ErrorResponse
	if w.Code != http.StatusOK {
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
			h.t.Fatalf("refusal %d is not JSON: %q", w.Code, w.Body)
		}
		return w.Code, e, nil
	}
	var cr CertificateResponse
	if err := json.Unmarshal(w.Body.Bytes(), &cr); err != nil {
		h.t.Fatal(err)
	}
	return w.Code, e, &cr
}

// mustIssue sends r and returns the claims of the issued certificate,
// checked as a relying party would.
func (h *harness) mustIssue(r keepReq) *keepcert.Claims {
	h.t.Helper()
	code, e, cr := h.post(h.body(r))
	if code != http.StatusOK {
		h.t.Fatalf("refused: %d %s: %s", code, e.Check, e.Error)
	}
	var chain []*x509.Certificate
	for _, p := range cr.Chain {
		blk, _ := pem.Decode([]byte(p))
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			h.t.Fatal(err)
		}
		chain = append(chain, c)
	}
	c, err := keepcert.VerifyChain(chain, keepcert.Expect{Roots: h.ca.Pool(), Digest: goodDigest, AllowInsecure: true, Now: h.now})
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

// mustRefuse sends r and asserts the refusal's check.
func (h *harness) mustRefuse(body []byte, check string) ErrorResponse {
	h.t.Helper()
	code, e, _ := h.post(body)
	if code == http.StatusOK {
		h.t.Fatalf("accepted, want refusal by %s", check)
	}
	if code < 400 || code > 499 {
		h.t.Errorf("status %d, want 4xx", code)
	}
	if e.Check != check {
		h.t.Fatalf("refused by %q (%s), want %q", e.Check, e.Error, check)
	}
	if e.Error == "" || strings.Contains(e.Error, "\n") {
		h.t.Errorf("reason %q is not one line", e.Error)
	}
	// The refusal is in the audit log.
	recs, err := h.log.Recent(context.Background(), 1)
	if err != nil || len(recs) != 1 || recs[0].Accepted || recs[0].Check != check {
		h.t.Errorf("audit log: %+v, %v; want a refusal by %s", recs, err, check)
	}
	return e
}
