package service

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/tee/sim"
	"github.com/castellan-dev/castellan/keepcert"
)

func TestIssue(t *testing.T) {
	h := newHarness(t)
	for _, p := range []string{evidence.PlatformSNP, evidence.PlatformTDX} {
		t.Run(p, func(t *testing.T) {
			c := h.mustIssue(keepReq{platform: p, pkg: "registry.example/app:1"})
			if c.Platform != p || !c.Attested || !c.Simulated || !c.Insecure || c.Debug {
				t.Errorf("claims %+v", c)
			}
			if c.WorkloadDigest != goodDigest || c.Package != "registry.example/app:1" || !bytes.Equal(c.Measurement, goodMeasurement) {
				t.Errorf("claims %+v", c)
			}
			if len(c.TCB) == 0 {
				t.Errorf("no TCB in claims")
			}
			recs, err := h.log.Recent(context.Background(), 1)
			if err != nil || len(recs) != 1 || !recs[0].Accepted || recs[0].Serial == "" || recs[0].Platform != p || !recs[0].Simulated {
				t.Errorf("audit log: %+v, %v", recs, err)
			}
		})
	}
	// A relying party that does not allow insecure keeps refuses simulated ones.
	if _, err := keepcert.VerifyChain(nil, keepcert.Expect{}); !keepcert.IsCheck(err, keepcert.CheckChain) {
		t.Errorf("empty chain: %v", err)
	}
}

func TestCertificateLifetime(t *testing.T) {
	h := newHarness(t)
	code, e, cr := h.post(h.body(keepReq{}))
	if code != http.StatusOK {
		t.Fatalf("%d %+v", code, e)
	}
	leaf := parsePEM(t, cr.Chain[0])
	// X.509 times have whole seconds.
	if got := leaf.NotAfter.Sub(h.now); got <= 10*time.Minute-time.Second || got > 10*time.Minute {
		t.Errorf("certificate valid for %v after now, want the policy's 10m", got)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses) != 0 {
		t.Errorf("SANs in a certificate: %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
}

func parsePEM(t *testing.T, s string) *x509.Certificate {
	t.Helper()
	c, err := readPEM(s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRefusals(t *testing.T) {
	h := newHarness(t)
	low := sim.SNPTCB{Bootloader: 4, TEE: 0, SNP: 19, Microcode: 213}
	lowTDX := [16]byte{4}
	tests := []struct {
		name  string
		req   func() []byte
		check string
	}{
		{"tampered snp report byte", func() []byte {
			return h.body(keepReq{tamper: func(r []byte) { r[0x90] ^= 1 }}) // a measurement byte
		}, CheckSignature},
		{"tampered tdx quote byte", func() []byte {
			return h.body(keepReq{platform: evidence.PlatformTDX, tamper: func(r []byte) { r[0x30+0x88] ^= 1 }}) // MRTD
		}, CheckSignature},
		{"snp report from an unknown root", func() []byte { return h.body(keepReq{signer: h.other}) }, CheckChain},
		{"tdx quote from an unknown root", func() []byte {
			return h.body(keepReq{platform: evidence.PlatformTDX, signer: h.other})
		}, CheckChain},
		{"report data bound to another key", func() []byte { return h.body(keepReq{bindKey: newKey(t)}) }, CheckReportData},
		{"csr for another key", func() []byte { return h.body(keepReq{csrKey: newKey(t)}) }, CheckKey},
		{"nonce never issued", func() []byte {
			n := make([]byte, NonceSize)
			rand.Read(n)
			return h.body(keepReq{nonce: n})
		}, CheckNonce},
		{"csr with a P-224 key", func() []byte {
			k, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
			der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
			return h.body(keepReq{csr: der})
		}, CheckKey},
		{"snp tcb below minimum", func() []byte { return h.body(keepReq{snp: sim.SNPOptions{TCB: &low}}) }, "tcb"},
		{"tdx tcb below minimum", func() []byte {
			return h.body(keepReq{platform: evidence.PlatformTDX, tdx: sim.TDXOptions{TeeTCBSVN: &lowTDX}})
		}, "tcb"},
		{"snp debug", func() []byte { return h.body(keepReq{snp: sim.SNPOptions{Debug: true}}) }, "debug"},
		{"tdx debug", func() []byte {
			return h.body(keepReq{platform: evidence.PlatformTDX, tdx: sim.TDXOptions{Debug: true}})
		}, "debug"},
		{"measurement not listed", func() []byte {
			return h.body(keepReq{snp: sim.SNPOptions{Measurement: bytes.Repeat([]byte{0x22}, 48)}})
		}, "measurement"},
		{"workload not allowed", func() []byte { return h.body(keepReq{digest: otherDigest}) }, "workload"},
		{"malformed cbor", func() []byte { return h.body(keepReq{evidence: []byte{0xa1, 0x01, 0xff, 0x00}}) }, CheckFormat},
		{"malformed csr", func() []byte { return h.body(keepReq{csr: []byte{0x30, 0x03, 0x02, 0x01, 0x01}}) }, CheckCSR},
		{"csr with a bad signature", func() []byte {
			k := newKey(t)
			der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "k"}}, k)
			der[len(der)-3] ^= 0xff
			return h.body(keepReq{key: k, csr: der})
		}, CheckCSR},
		{"csr asking for names", func() []byte {
			return h.body(keepReq{csrTpl: &x509.CertificateRequest{DNSNames: []string{"bank.example"}}})
		}, CheckCSR},
		{"not json", func() []byte { return []byte("{") }, CheckFormat},
		{"unknown json field", func() []byte { return []byte(`{"csr":"AA==","evidence":"AA==","extra":1}`) }, CheckFormat},
		{"package with a newline", func() []byte { return h.body(keepReq{pkg: "a\nb"}) }, CheckFormat},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			h.mustRefuse(tt.req(), tt.check)
		})
	}
}

func TestRefuseReusedNonce(t *testing.T) {
	h := newHarness(t)
	n := h.challenge()
	h.mustIssue(keepReq{nonce: n})
	e := h.mustRefuse(h.body(keepReq{nonce: n}), CheckNonce)
	if !strings.Contains(e.Error, "already used") {
		t.Errorf("reason %q", e.Error)
	}
}

func TestRefuseExpiredNonce(t *testing.T) {
	h := newHarness(t)
	n := h.challenge()
	body := h.body(keepReq{nonce: n})
	h.now = h.now.Add(61 * time.Second)
	e := h.mustRefuse(body, CheckNonce)
	if !strings.Contains(e.Error, "expired") {
		t.Errorf("reason %q", e.Error)
	}
}

// A refused request burns its nonce, whatever check refused it once the
// envelope parsed (defect 5 of issue 10: a refusal at the key check left the
// nonce usable): it cannot be retried to probe the checks.
func TestRefusalConsumesNonce(t *testing.T) {
	tests := []struct {
		name  string
		req   func(h *harness, n []byte) keepReq
		check string
	}{
		{"workload", func(h *harness, n []byte) keepReq { return keepReq{nonce: n, digest: otherDigest} }, "workload"},
		{"key", func(h *harness, n []byte) keepReq { return keepReq{nonce: n, csrKey: newKey(t)} }, CheckKey},
		{"csr", func(h *harness, n []byte) keepReq { return keepReq{nonce: n, csr: []byte{0x30, 0x00}} }, CheckCSR},
		{"report data", func(h *harness, n []byte) keepReq { return keepReq{nonce: n, bindKey: newKey(t)} }, CheckReportData},
		{"signature", func(h *harness, n []byte) keepReq {
			return keepReq{nonce: n, tamper: func(r []byte) { r[0x90] ^= 1 }}
		}, CheckSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			n := h.challenge()
			h.mustRefuse(h.body(tt.req(h, n)), tt.check)
			e := h.mustRefuse(h.body(keepReq{nonce: n}), CheckNonce)
			if !strings.Contains(e.Error, "already used") {
				t.Errorf("reason %q", e.Error)
			}
		})
	}
	// Before the envelope parses, nothing names a nonce: it stays usable.
	h := newHarness(t)
	n := h.challenge()
	h.mustRefuse(h.body(keepReq{nonce: n, evidence: []byte{0xa1, 0x01, 0xff, 0x00}}), CheckFormat)
	h.mustIssue(keepReq{nonce: n})
}

func TestRefuseSimWithoutSimRootInPolicy(t *testing.T) {
	h := newHarness(t)
	h.setPolicy(func(s string) string {
		return strings.Replace(s, `[platforms.tdx]
sim_roots = ["`+h.rootsFile+`"]`, `[platforms.tdx]`, 1)
	})
	h.mustIssue(keepReq{platform: evidence.PlatformSNP})
	h.mustRefuse(h.body(keepReq{platform: evidence.PlatformTDX}), CheckChain)
}

func TestNoneEvidence(t *testing.T) {
	h := newHarness(t)
	h.mustRefuse(h.body(keepReq{platform: evidence.PlatformNone}), "insecure")
	h.setPolicy(func(s string) string { return strings.Replace(s, "allow_insecure = false", "allow_insecure = true", 1) })
	c := h.mustIssue(keepReq{platform: evidence.PlatformNone})
	if c.Platform != keepcert.PlatformNone || !c.Insecure || !c.Attested {
		t.Errorf("claims %+v", c)
	}
	// Still bound: a none envelope whose key differs from the CSR is refused.
	h.mustRefuse(h.body(keepReq{platform: evidence.PlatformNone, csrKey: newKey(t)}), CheckKey)
}

// Revocations take effect on the very next request after a reload.
func TestRevocationAfterReload(t *testing.T) {
	tests := []struct {
		name   string
		revoke func(h *harness)
		check  string
	}{
		{"measurement", func(h *harness) {
			h.write(h.measFile, measurementsTOML(true))
			if _, err := h.store.Reload(); err != nil {
				h.t.Fatal(err)
			}
		}, "revoked"},
		{"platform", func(h *harness) {
			h.setPolicy(func(s string) string {
				return strings.Replace(s, "[platforms.snp]\n", "[platforms.snp]\nrevoked = true\n", 1)
			})
		}, "revoked"},
		{"tcb minimum raised", func(h *harness) {
			h.setPolicy(func(s string) string { return strings.Replace(s, "snp = 20", "snp = 23", 1) })
		}, "tcb"},
		{"tcb revoked", func(h *harness) {
			h.setPolicy(func(s string) string {
				return s + "\n[[platforms.snp.revoked_tcb]]\nbootloader = 4\nsnp = 22\n"
			})
		}, "revoked"},
		{"workload dropped", func(h *harness) {
			h.writePolicy(otherDigest)
			if _, err := h.store.Reload(); err != nil {
				h.t.Fatal(err)
			}
		}, "workload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.mustIssue(keepReq{})
			tt.revoke(h)
			h.mustRefuse(h.body(keepReq{}), tt.check)
		})
	}
}

func TestBadReloadKeepsPolicy(t *testing.T) {
	h := newHarness(t)
	h.write(h.policyFile, "workloads = [\"any\"]\nallow_insecure = true\nbogus = 1\n")
	if _, err := h.store.Reload(); err == nil || !strings.Contains(err.Error(), ":3: unknown key bogus") {
		t.Fatalf("reload error %v, want the unknown key's line", err)
	}
	h.mustRefuse(h.body(keepReq{platform: evidence.PlatformNone}), "insecure")
	h.mustIssue(keepReq{})
}

func TestOversizeBody(t *testing.T) {
	h := newHarness(t)
	body := append([]byte(`{"csr":"`), bytes.Repeat([]byte("A"), MaxBodyBytes)...)
	w := h.do("POST", "/v1/certificate", append(body, `"}`...))
	if w.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want 413", w.Code)
	}
	var e ErrorResponse
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Check != CheckFormat {
		t.Errorf("answer %q", w.Body)
	}
}

func TestCAEndpoint(t *testing.T) {
	h := newHarness(t)
	w := h.do("GET", "/v1/ca", nil)
	b, _ := io.ReadAll(w.Body)
	if w.Code != http.StatusOK || !bytes.Equal(b, h.ca.PEM) {
		t.Errorf("GET /v1/ca: %d %q", w.Code, b)
	}
	if w := h.do("GET", "/v1/certificate", nil); w.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET /v1/certificate: %d", w.Code)
	}
}

func TestAuditFailureIssuesNothing(t *testing.T) {
	h := newHarness(t)
	body := h.body(keepReq{})
	h.log.Close()
	w := h.do("POST", "/v1/certificate", body)
	// The used-nonce ledger lives in the same database: the redeem fails first.
	if (w.Code != http.StatusInternalServerError && w.Code != http.StatusServiceUnavailable) || strings.Contains(w.Body.String(), "BEGIN CERTIFICATE") {
		t.Fatalf("with the audit log down: %d %s", w.Code, w.Body)
	}
}

func readPEM(s string) (*x509.Certificate, error) {
	blk, _ := pem.Decode([]byte(s))
	if blk == nil {
		return nil, errors.New("not PEM")
	}
	return x509.ParseCertificate(blk.Bytes)
}
