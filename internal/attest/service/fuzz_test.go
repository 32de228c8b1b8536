package service

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/audit"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
)

var knownChecks = map[string]bool{
	CheckFormat: true, CheckCSR: true, CheckKey: true, CheckNonce: true, CheckChain: true,
	CheckSignature: true, CheckReportData: true, "revoked": true, "insecure": true, "debug": true,
	"tcb": true, "measurement": true, "workload": true,
}

// FuzzNonce feeds arbitrary nonces to the redeem check: it must not panic,
// and only nonces this key sealed, within their lifetime, open.
func FuzzNonce(f *testing.F) {
	k := NewNonceKey()
	now := time.Unix(1_900_000_000, 0)
	good := k.seal(now, time.Minute)
	f.Add(good)
	f.Add(NewNonceKey().seal(now, time.Minute))
	f.Add(good[:NonceSize-1])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, n []byte) {
		id, exp, err := k.open(n, now, time.Minute)
		if err != nil {
			return
		}
		if !bytes.Equal(n[nonceBodySize:], k.mac(n[:nonceBodySize])) || len(id) != nonceBodySize || !exp.After(now) {
			t.Fatalf("nonce %x opened: id %x, expires %v", n, id, exp)
		}
	})
}

// FuzzRequestJSON feeds arbitrary bodies to the certificate endpoint's
// decision: it must never panic, and must answer with a certificate or a
// refusal naming a known check.
func FuzzRequestJSON(f *testing.F) {
	h := newHarness(f)
	h.setPolicy(func(s string) string { return strings.Replace(s, "max_nonces = 50", "max_nonces = 10000000", 1) })
	f.Add(h.body(keepReq{}))
	f.Add(h.body(keepReq{ear: true, digest: otherDigest}))
	f.Add(h.body(keepReq{platform: evidence.PlatformTDX}))
	f.Add(h.body(keepReq{platform: evidence.PlatformSGX}))
	f.Add(h.body(keepReq{platform: evidence.PlatformCCA}))
	f.Add(h.body(keepReq{platform: evidence.PlatformNone}))
	f.Add([]byte(`{"csr":"","evidence":""}`))
	f.Add([]byte(`{"csr":"MAA=","evidence":"oA==","package":"x"}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"csr":"MAA=","evidence":"oA=="} {}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var d audit.Decision
		resp, ref := h.svc.Issue(context.Background(), body, h.now, &d)
		if (resp == nil) == (ref == nil) {
			t.Fatalf("response %v and refusal %v", resp, ref)
		}
		if ref != nil && (!knownChecks[ref.Check] || ref.Reason == "" || ref.Status < 400 || ref.Status > 499) {
			t.Fatalf("refusal %+v", ref)
		}
	})
}

// FuzzCSR feeds arbitrary DER as the CSR: parsing and the key check must not
// panic, and a CSR is accepted only for the key the evidence binds.
func FuzzCSR(f *testing.F) {
	k := newKey(f)
	spkiK := spki(f, k)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "keep"}, DNSNames: []string{"a.example"}}, k)
	if err != nil {
		f.Fatal(err)
	}
	other, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, newKey(f))
	f.Add(der)
	f.Add(other)
	f.Add(der[:len(der)/2])
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		csr, ref := parseCSR(b)
		if ref != nil {
			if ref.Check != CheckCSR {
				t.Fatalf("parse refusal by %s", ref.Check)
			}
			return
		}
		if ref := checkKey(csr, spkiK); ref == nil && !bytes.Equal(csr.RawSubjectPublicKeyInfo, spkiK) {
			t.Fatalf("accepted a CSR for another key")
		}
	})
}
