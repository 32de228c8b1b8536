package service

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/castellan-dev/castellan/internal/cputime"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/audit"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/policy"
	"github.com/castellan-dev/castellan/internal/kbs"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

// The secret values are marker strings searched for afterwards in
// everything the service wrote.
const (
	kbsMarker      = "KBS-SECRET-MARKER-7c1e9a"
	kbsOtherMarker = "KBS-MEASURED-MARKER-44b0d2"
)

// kbsHarness is a service over real TLS whose policy allows goodDigest
// and otherDigest and binds two secrets: default/db/password to
// goodDigest, default/tls/key to a measurement no keep has.
type kbsHarness struct {
	*harness
	srv  *httptest.Server
	logs *bytes.Buffer
}

func newKBSHarness(t *testing.T) *kbsHarness {
	h := newHarness(t)
	for name, v := range map[string]string{"db-password": kbsMarker, "tls-key": kbsOtherMarker} {
		if err := os.WriteFile(filepath.Join(h.dir, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	h.write(h.policyFile, fmt.Sprintf(policyTOML, goodDigest+`", "`+otherDigest, h.rootsFile, h.rootsFile)+fmt.Sprintf(`
[[secret]]
resource = "default/db/password"
file = "db-password"
workloads = ["%s"]
platforms = ["snp", "tdx"]

[[secret]]
resource = "default/tls/key"
file = "tls-key"
measurements = ["%s"]
`, goodDigest, strings.Repeat("22", 48)))
	if _, err := h.store.Reload(); err != nil {
		t.Fatal(err)
	}
	k := &kbsHarness{harness: h, logs: &bytes.Buffer{}}
	h.svc.cfg.Logf = func(f string, a ...any) { fmt.Fprintf(k.logs, f+"\n", a...) }
	k.srv = httptest.NewTLSServer(h.svc)
	t.Cleanup(k.srv.Close)
	return k
}

// client is a KBS client whose keep runs digest on sim-snp.
func (k *kbsHarness) client(digest string) *kbs.Client {
	return &kbs.Client{URL: k.srv.URL, HTTP: k.srv.Client(), TEE: "snp", WorkloadDigest: digest,
		Evidence: func(ctx context.Context, rd [64]byte) (json.RawMessage, error) {
			raw, end, err := k.sim.SignSNP(rd, sim.SNPOptions{Measurement: goodMeasurement})
			if err != nil {
				return nil, err
			}
			return kbs.MarshalEvidence(evidence.PlatformSNP, raw, end)
		}}
}

func (k *kbsHarness) lastDecision(t *testing.T) (accepted bool, check, reason, pkg string) {
	t.Helper()
	recs, err := k.log.Recent(context.Background(), 1)
	if err != nil || len(recs) != 1 {
		t.Fatalf("audit log: %v, %v", recs, err)
	}
	return recs[0].Accepted, recs[0].Check, recs[0].Reason, recs[0].Package
}

var dbPassword = kbs.Ref{Repo: "default", Type: "db", Tag: "password"}

func TestKBSReleasesBoundSecret(t *testing.T) {
	k := newKBSHarness(t)
	c := k.client(goodDigest)
	v, err := c.Resource(context.Background(), dbPassword)
	if err != nil {
		t.Fatal(err)
	}
	if string(v) != kbsMarker {
		t.Fatalf("got %q", v)
	}
	if c.Token() == "" {
		t.Error("no attestation token")
	}
	if ok, _, _, pkg := k.lastDecision(t); !ok || pkg != "kbs:///default/db/password" {
		t.Errorf("audit: accepted %v for %q", ok, pkg)
	}
	// The session serves further resources without attesting again, and
	// refuses those not bound to this keep.
	_, err = c.Resource(context.Background(), kbs.Ref{Repo: "default", Type: "tls", Tag: "key"})
	var re *kbs.RefusedError
	if !errors.As(err, &re) || re.Status != http.StatusForbidden {
		t.Fatalf("measurement-bound secret: %v", err)
	}
	if ok, check, reason, _ := k.lastDecision(t); ok || check != policy.CheckSecret || !strings.Contains(reason, "measurement") {
		t.Errorf("audit: %v %s %s", ok, check, reason)
	}
	k.noPlaintext(t)
}

func TestKBSRefusesOtherWorkload(t *testing.T) {
	k := newKBSHarness(t)
	_, err := k.client(otherDigest).Resource(context.Background(), dbPassword)
	var re *kbs.RefusedError
	if !errors.As(err, &re) || re.Status != http.StatusForbidden || strings.Contains(err.Error(), kbsMarker) {
		t.Fatalf("other workload: %v", err)
	}
	ok, check, reason, pkg := k.lastDecision(t)
	if ok || check != policy.CheckSecret || !strings.Contains(reason, otherDigest) || pkg != "kbs:///default/db/password" {
		t.Errorf("audit: %v %s %q %s", ok, check, reason, pkg)
	}
	// Unlisted resources are refused alike, and nothing without a session.
	if _, err := k.client(goodDigest).Resource(context.Background(), kbs.Ref{Repo: "default", Type: "db", Tag: "nope"}); !errors.As(err, &re) {
		t.Errorf("unlisted: %v", err)
	}
	k.noPlaintext(t)
}

// flow runs auth by hand and returns the session cookie and the nonce.
func (k *kbsHarness) auth(t *testing.T, tee string) (*http.Cookie, string) {
	t.Helper()
	resp, err := k.srv.Client().Post(k.srv.URL+kbs.PathAuth, "application/json", strings.NewReader(`{"version":"0.4.0","tee":"`+tee+`","extra-params":""}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ch kbs.Challenge
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&ch) != nil {
		t.Fatalf("auth: %d", resp.StatusCode)
	}
	if ch.ExtraParams[kbs.SelectedHashKey] != kbs.HashSHA384 {
		t.Errorf("extra-params %v", ch.ExtraParams)
	}
	for _, c := range resp.Cookies() {
		if c.Name == kbs.CookieName {
			return c, ch.Nonce
		}
	}
	t.Fatal("no session cookie")
	return nil, ""
}

func (k *kbsHarness) send(t *testing.T, method, path string, cookie *http.Cookie, body []byte) (int, []byte, *http.Cookie) {
	t.Helper()
	req, _ := http.NewRequest(method, k.srv.URL+path, bytes.NewReader(body))
	if cookie != nil {
		req.AddCookie(cookie)
	}
	resp, err := k.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, c := range resp.Cookies() {
		if c.Name == kbs.CookieName {
			return resp.StatusCode, b, c
		}
	}
	return resp.StatusCode, b, nil
}

// attestation builds an Attestation: runtime data with nonce and key's JWK
// (and digest), evidence over bindJSON (default: the runtime data itself).
func (k *kbsHarness) attestation(t testing.TB, nonce string, key crypto.Signer, digest string, bind func(rt []byte) []byte, form func(rd [64]byte) json.RawMessage) []byte {
	t.Helper()
	jwk, err := kbs.PublicJWK(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	rt, _ := json.Marshal(kbs.RuntimeData{Nonce: nonce, TEEPubKey: jwk, WorkloadDigest: digest})
	bound := rt
	if bind != nil {
		bound = bind(rt)
	}
	rd, err := kbs.ReportData(kbs.HashSHA384, bound)
	if err != nil {
		t.Fatal(err)
	}
	var ev json.RawMessage
	if form != nil {
		ev = form(rd)
	} else {
		raw, end, err := k.sim.SignSNP(rd, sim.SNPOptions{Measurement: goodMeasurement})
		if err != nil {
			t.Fatal(err)
		}
		ev, _ = kbs.MarshalEvidence(evidence.PlatformSNP, raw, end)
	}
	b, _ := json.Marshal(kbs.Attestation{RuntimeData: rt, TEEEvidence: ev})
	return b
}

func TestKBSRefusals(t *testing.T) {
	k := newKBSHarness(t)
	key := newKey(t)
	other := newKey(t)

	// No session: attest and resource need the cookie.
	if code, _, _ := k.send(t, "POST", kbs.PathAttest, nil, k.attestation(t, "AAAA", key, goodDigest, nil, nil)); code != http.StatusUnauthorized {
		t.Errorf("attest without session: %d", code)
	}
	if code, _, _ := k.send(t, "GET", kbs.PathResource+"default/db/password", nil, nil); code != http.StatusUnauthorized {
		t.Errorf("resource without session: %d", code)
	}
	// An auth session is not an attested one.
	ck, nonce := k.auth(t, "snp")
	if code, _, _ := k.send(t, "GET", kbs.PathResource+"default/db/password", ck, nil); code != http.StatusUnauthorized {
		t.Errorf("resource with an auth session: %d", code)
	}

	// Wrong nonce: another session's challenge.
	_, otherNonce := k.auth(t, "snp")
	code, body, _ := k.send(t, "POST", kbs.PathAttest, ck, k.attestation(t, otherNonce, key, goodDigest, nil, nil))
	if code != http.StatusUnauthorized || !strings.Contains(string(body), "nonce") {
		t.Errorf("wrong nonce: %d %s", code, body)
	}

	// Report data that binds another key than the runtime data's.
	ck, nonce = k.auth(t, "snp")
	bindOther := func([]byte) []byte {
		jwk, _ := kbs.PublicJWK(other.Public())
		b, _ := json.Marshal(kbs.RuntimeData{Nonce: nonce, TEEPubKey: jwk, WorkloadDigest: goodDigest})
		return b
	}
	code, body, _ = k.send(t, "POST", kbs.PathAttest, ck, k.attestation(t, nonce, key, goodDigest, bindOther, nil))
	if code != http.StatusUnauthorized || !strings.Contains(string(body), CheckReportData) {
		t.Errorf("report data binding another key: %d %s", code, body)
	}
	if _, check, _, _ := k.lastDecision(t); check != CheckReportData {
		t.Errorf("audit: %s", check)
	}
	// The same with the workload digest changed after signing.
	ck, nonce = k.auth(t, "snp")
	rebind := func(rt []byte) []byte { return bytes.Replace(rt, []byte(otherDigest), []byte(goodDigest), 1) }
	code, body, _ = k.send(t, "POST", kbs.PathAttest, ck, k.attestation(t, nonce, key, otherDigest, rebind, nil))
	if code != http.StatusUnauthorized || !strings.Contains(string(body), CheckReportData) {
		t.Errorf("digest swapped: %d %s", code, body)
	}

	// Tampered evidence.
	ck, nonce = k.auth(t, "snp")
	att := k.attestation(t, nonce, key, goodDigest, nil, func(rd [64]byte) json.RawMessage {
		raw, end, _ := k.sim.SignSNP(rd, sim.SNPOptions{Measurement: goodMeasurement})
		raw[0x90] ^= 1 // inside the measurement
		ev, _ := kbs.MarshalEvidence(evidence.PlatformSNP, raw, end)
		return ev
	})
	if code, body, _ = k.send(t, "POST", kbs.PathAttest, ck, att); code != http.StatusUnauthorized {
		t.Errorf("tampered: %d %s", code, body)
	}

	// A good attestation, then its replay (same cookie and body).
	ck, nonce = k.auth(t, "snp")
	att = k.attestation(t, nonce, key, goodDigest, nil, nil)
	code, body, ok := k.send(t, "POST", kbs.PathAttest, ck, att)
	if code != http.StatusOK || ok == nil {
		t.Fatalf("attest: %d %s", code, body)
	}
	if code, body, _ = k.send(t, "POST", kbs.PathAttest, ck, att); code != http.StatusUnauthorized || !strings.Contains(string(body), "nonce") {
		t.Errorf("replay: %d %s", code, body)
	}
	// The attested session gets the value, encrypted to key only.
	code, body, _ = k.send(t, "GET", kbs.PathResource+"default/db/password", ok, nil)
	if code != http.StatusOK || bytes.Contains(body, []byte(kbsMarker)) {
		t.Fatalf("resource: %d", code)
	}
	if v, err := kbs.Open(key, body); err != nil || string(v) != kbsMarker {
		t.Fatalf("open: %q %v", v, err)
	}
	if _, err := kbs.Open(other, body); err == nil {
		t.Error("another key opened the response")
	}
	// A session cookie whose content is edited (another workload) is refused.
	p, mac, _ := strings.Cut(ok.Value, ".")
	raw, _ := base64.RawURLEncoding.DecodeString(p)
	forged := *ok
	forged.Value = base64.RawURLEncoding.EncodeToString(bytes.Replace(raw, []byte(goodDigest), []byte(otherDigest), 1)) + "." + mac
	if code, _, _ = k.send(t, "GET", kbs.PathResource+"default/db/password", &forged, nil); code != http.StatusUnauthorized {
		t.Errorf("forged session: %d", code)
	}
	// Path escapes are not resources.
	if code, _, _ = k.send(t, "GET", kbs.PathResource+"default/..%2f..%2fetc/passwd", ok, nil); code == http.StatusOK {
		t.Errorf("path escape: %d", code)
	}
	k.noPlaintext(t)
}

// sevComposite has ca sign rd in a sim-snp report and returns it in
// guest-components' snp attester form inside the composite form, with
// edit (if set) applied to the attester's JSON first.
func sevComposite(t testing.TB, ca *sim.CA, rd [64]byte, edit func(m map[string]any)) json.RawMessage {
	t.Helper()
	raw, end, err := ca.SignSNP(rd, sim.SNPOptions{Measurement: goodMeasurement})
	if err != nil {
		t.Fatal(err)
	}
	js, err := kbs.MarshalTrusteeEvidence(evidence.PlatformSNP, raw, end)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	d := json.NewDecoder(bytes.NewReader(js))
	d.UseNumber()
	if err := d.Decode(&m); err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(m)
	}
	b, _ := json.Marshal(map[string]any{"primary_evidence": m, "additional_evidence": ""})
	return b
}

// withAdditional is the runtime data with "additional-evidence": "" added:
// what guest-components binds when it sends composite evidence.
func withAdditional(rt []byte) []byte {
	var m map[string]any
	json.Unmarshal(rt, &m)
	m["additional-evidence"] = ""
	b, _ := json.Marshal(m)
	return b
}

// TestKBSTrusteeForms sends evidence in the forms guest-components sends:
// the TDX attester's {"quote": base64} inside the composite form, whose
// report data binds the runtime data with "additional-evidence" added.
func TestKBSTrusteeForms(t *testing.T) {
	k := newKBSHarness(t)
	// An RSA tee-pubkey (RSA-OAEP-256), as guest components may send.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ck, nonce := k.auth(t, "tdx")
	att := k.attestation(t, nonce, key, goodDigest, withAdditional, func(rd [64]byte) json.RawMessage {
		q, err := k.sim.SignTDX(rd, sim.TDXOptions{Measurement: goodMeasurement})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(map[string]any{"primary_evidence": map[string]any{"quote": base64.StdEncoding.EncodeToString(q), "cc_eventlog": nil}, "additional_evidence": ""})
		return b
	})
	code, body, ok := k.send(t, "POST", kbs.PathAttest, ck, att)
	if code != http.StatusOK {
		t.Fatalf("attest: %d %s", code, body)
	}
	code, body, _ = k.send(t, "GET", kbs.PathResource+"default/db/password", ok, nil)
	if v, err := kbs.Open(key, body); code != http.StatusOK || err != nil || string(v) != kbsMarker {
		t.Fatalf("resource: %d %v", code, err)
	}
}

// TestKBSSNPAttesterForm sends SEV-SNP evidence as guest-components'
// snp attester does (the sev crate's JSON of the report and its
// cert_chain, inside the composite form): it goes through the same
// verification as a binary report, so a field edited in the JSON breaks
// the signature, and a chain the policy's roots do not sign is refused.
func TestKBSSNPAttesterForm(t *testing.T) {
	k := newKBSHarness(t)
	key := newKey(t)
	sevForm := func(ca *sim.CA, edit func(m map[string]any)) func(rd [64]byte) json.RawMessage {
		return func(rd [64]byte) json.RawMessage { return sevComposite(t, ca, rd, edit) }
	}
	ck, nonce := k.auth(t, "snp")
	code, body, ok := k.send(t, "POST", kbs.PathAttest, ck, k.attestation(t, nonce, key, goodDigest, withAdditional, sevForm(k.sim, nil)))
	if code != http.StatusOK {
		t.Fatalf("attest: %d %s", code, body)
	}
	code, body, _ = k.send(t, "GET", kbs.PathResource+"default/db/password", ok, nil)
	if v, err := kbs.Open(key, body); code != http.StatusOK || err != nil || string(v) != kbsMarker {
		t.Fatalf("resource: %d %v", code, err)
	}

	stranger, err := sim.New()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		ca    *sim.CA
		edit  func(m map[string]any)
		check string
	}{
		{"guest_svn edited", k.sim, func(m map[string]any) {
			m["attestation_report"].(map[string]any)["guest_svn"] = 9
		}, CheckSignature},
		{"measurement edited", k.sim, func(m map[string]any) {
			r := m["attestation_report"].(map[string]any)
			r["measurement"].([]any)[0] = 0x12
		}, CheckSignature},
		{"no chain, fetching off", k.sim, func(m map[string]any) { m["cert_chain"] = nil }, CheckChain},
		{"a stranger's chain", stranger, nil, CheckChain},
		{"malformed", k.sim, func(m map[string]any) { m["attestation_report"].(map[string]any)["vmpl"] = -1 }, CheckFormat},
	} {
		ck, nonce := k.auth(t, "snp")
		code, body, _ := k.send(t, "POST", kbs.PathAttest, ck, k.attestation(t, nonce, key, goodDigest, withAdditional, sevForm(c.ca, c.edit)))
		if code != http.StatusUnauthorized {
			t.Errorf("%s: %d %s", c.name, code, body)
			continue
		}
		if _, check, reason, _ := k.lastDecision(t); check != c.check {
			t.Errorf("%s: refused by %s (%s), want %s", c.name, check, reason, c.check)
		}
	}
	k.noPlaintext(t)
}

// TestKBSClientTrusteeForms: a keep's client sending what Trustee's
// verifier reads (guest-components' forms, composite, protocol 0.4.0)
// is served by the Castellan service too, for SEV-SNP and TDX.
func TestKBSClientTrusteeForms(t *testing.T) {
	k := newKBSHarness(t)
	for _, platform := range []string{evidence.PlatformSNP, evidence.PlatformTDX} {
		var sent json.RawMessage
		c := &kbs.Client{URL: k.srv.URL, HTTP: k.srv.Client(), TEE: platform, WorkloadDigest: goodDigest,
			Evidence: func(ctx context.Context, rd [64]byte) (json.RawMessage, error) {
				var raw []byte
				var end [][]byte
				var err error
				if platform == evidence.PlatformSNP {
					raw, end, err = k.sim.SignSNP(rd, sim.SNPOptions{Measurement: goodMeasurement})
				} else {
					raw, err = k.sim.SignTDX(rd, sim.TDXOptions{Measurement: goodMeasurement})
				}
				if err != nil {
					return nil, err
				}
				sent, err = kbs.MarshalTrusteeEvidence(platform, raw, end)
				return sent, err
			}}
		v, err := c.Resource(context.Background(), dbPassword)
		if err != nil || string(v) != kbsMarker {
			t.Fatalf("%s: %q %v", platform, v, err)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(sent, &m); err != nil {
			t.Fatal(err)
		}
		want := map[string][]string{evidence.PlatformSNP: {"attestation_report", "cert_chain"}, evidence.PlatformTDX: {"quote", "cc_eventlog"}}[platform]
		if len(m) != len(want) || m[want[0]] == nil || m[want[1]] == nil {
			t.Errorf("%s: sent %s", platform, sent[:min(len(sent), 120)])
		}
	}
}

// TestKBSClientTrusteeFormsSGXCCA: guest-components' SGX ({"quote"}) and
// CCA ({"token": bytes}) forms, sent by a client that binds no workload
// digest (as toward Trustee), get a secret bound to the launch
// measurement; a tampered token is refused.
func TestKBSClientTrusteeFormsSGXCCA(t *testing.T) {
	h := sgxCCAHarness(t)
	pol, err := os.ReadFile(h.policyFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.dir, "enclave-key"), []byte(kbsMarker), 0o600); err != nil {
		t.Fatal(err)
	}
	h.write(h.policyFile, string(pol)+fmt.Sprintf(`
[[secret]]
resource = "default/enclave/key"
file = "enclave-key"
measurements = ["%s", "%s"]
`, hex.EncodeToString(sgxMeasurement), hex.EncodeToString(ccaMeasurement)))
	if _, err := h.store.Reload(); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(h.svc)
	defer srv.Close()
	ref := kbs.Ref{Repo: "default", Type: "enclave", Tag: "key"}
	for _, c := range []struct {
		platform string
		tamper   bool
	}{{evidence.PlatformSGX, false}, {evidence.PlatformCCA, false}, {evidence.PlatformCCA, true}} {
		cl := &kbs.Client{URL: srv.URL, HTTP: srv.Client(), TEE: c.platform,
			Evidence: func(ctx context.Context, rd [64]byte) (json.RawMessage, error) {
				var raw []byte
				var err error
				if c.platform == evidence.PlatformSGX {
					raw, err = h.sim.SignSGX(rd, goodSGX(nil))
				} else {
					raw, err = h.sim.SignCCA(rd, sim.CCAOptions{RIM: ccaMeasurement})
				}
				if err != nil {
					return nil, err
				}
				if c.tamper {
					raw[bytes.Index(raw, ccaMeasurement)] ^= 1
				}
				return kbs.MarshalTrusteeEvidence(c.platform, raw, nil)
			}}
		v, err := cl.Resource(context.Background(), ref)
		if c.tamper {
			var re *kbs.RefusedError
			if !errors.As(err, &re) || re.Status != http.StatusUnauthorized {
				t.Errorf("%s tampered: %v", c.platform, err)
			}
			continue
		}
		if err != nil || string(v) != kbsMarker {
			t.Errorf("%s: %q %v", c.platform, v, err)
		}
	}
}

// noPlaintext searches every file the service wrote (the audit database
// and its WAL), its log and the audit records for the secret values.
func (k *kbsHarness) noPlaintext(t *testing.T) {
	t.Helper()
	k.log.Close()
	for _, m := range []string{kbsMarker, kbsOtherMarker} {
		if strings.Contains(k.logs.String(), m) {
			t.Errorf("the service's log holds %s", m)
		}
		filepath.WalkDir(k.dir, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || strings.HasSuffix(p, "db-password") || strings.HasSuffix(p, "tls-key") {
				return nil
			}
			b, _ := os.ReadFile(p)
			if bytes.Contains(b, []byte(m)) || bytes.Contains(b, []byte(hex.EncodeToString([]byte(m)))) {
				t.Errorf("%s holds %s", p, m)
			}
			return nil
		})
	}
}

// FuzzKBSAttest feeds arbitrary Attestation bodies to an auth session: no
// panic, refusals name a known check with a 4xx status, and an accepted
// one yields an attested session.
func FuzzKBSAttest(f *testing.F) {
	h := newHarness(f)
	k := &kbsHarness{harness: h}
	nonce := h.nonceKey.seal(h.now, time.Minute)
	sess := &kbsSession{Stage: "auth", Platform: "snp", Nonce: nonce, Expires: h.now.Add(time.Minute).Unix()}
	key := newKey(f)
	n64 := base64.StdEncoding.EncodeToString(nonce)
	f.Add(k.attestation(f, n64, key, goodDigest, nil, nil))
	f.Add(k.attestation(f, n64, key, "", nil, nil))
	f.Add(k.attestation(f, n64, key, "", withAdditional, func(rd [64]byte) json.RawMessage { return sevComposite(f, h.sim, rd, nil) }))
	f.Add([]byte(`{"runtime-data":{"nonce":"` + n64 + `","tee-pubkey":{}},"tee-evidence":{}}`))
	f.Add([]byte(`{"runtime-data":{"nonce":"` + n64 + `","tee-pubkey":{"kty":"EC"}},"tee-evidence":{"quote":""}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var d audit.Decision
		var o outcome
		ns, ref := h.svc.kbsVerify(context.Background(), sess, body, h.now, &d, &o)
		if (ns == nil) == (ref == nil) {
			t.Fatalf("session %v and refusal %v", ns, ref)
		}
		if ref != nil && (!knownChecks[ref.Check] || ref.Reason == "" || ref.Status < 400 || ref.Status > 499) {
			t.Fatalf("refusal %+v", ref)
		}
		if ns != nil && (ns.Stage != "ok" || ns.Platform != "snp" || len(ns.Key) == 0) {
			t.Fatalf("session %+v", ns)
		}
	})
}

// FuzzKBSSession feeds arbitrary cookies: only those this key sealed open.
func FuzzKBSSession(f *testing.F) {
	key := NewNonceKey()
	now := time.Unix(1_900_000_000, 0)
	good := key.sealSession(&kbsSession{Stage: "ok", Platform: "snp", Expires: now.Unix() + 60, Workload: goodDigest})
	f.Add(good)
	f.Add(NewNonceKey().sealSession(&kbsSession{Stage: "ok", Expires: now.Unix() + 60}))
	f.Add("e30.AAAA")
	f.Add("")
	f.Fuzz(func(t *testing.T, v string) {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("Cookie", kbs.CookieName+"="+v)
		s, err := key.openSession(r, "ok", now)
		if err != nil {
			return
		}
		p, mac, _ := strings.Cut(v, ".")
		raw, _ := base64.RawURLEncoding.DecodeString(p)
		m, _ := base64.RawURLEncoding.DecodeString(mac)
		if !bytes.Equal(m, key.sessionMAC(raw)) || s.Stage != "ok" {
			t.Fatalf("cookie %q opened: %+v", v, s)
		}
	})
}

// BenchmarkKBSRelease measures what the service does for one keep that
// fetches a secret over the KBS protocol: attest (JSON, sealed session,
// nonce redeem, sim-snp verification, policy, EAR, audit insert) and one
// resource (session, policy binding, JWE to the keep's P-256 key, audit
// insert). The challenges and the keeps' evidence are made beforehand.
// BenchmarkKBSRelease: one keep's attest and resource, with the evidence
// in Castellan's form and in guest-components' snp attester form (the sev
// crate's JSON inside the composite form), interleaved in one run.
func BenchmarkKBSRelease(b *testing.B) {
	for _, form := range []string{"castellan", "snp-attester"} {
		b.Run(form, func(b *testing.B) { benchKBSRelease(b, form == "snp-attester") })
	}
}

func benchKBSRelease(b *testing.B, sevForm bool) {
	h := newHarness(b)
	k := &kbsHarness{harness: h}
	if err := os.WriteFile(filepath.Join(h.dir, "db-password"), []byte(kbsMarker), 0o600); err != nil {
		b.Fatal(err)
	}
	h.write(h.policyFile, fmt.Sprintf(strings.Replace(policyTOML, "max_nonces = 50", "max_nonces = 10000000", 1), goodDigest, h.rootsFile, h.rootsFile)+
		"\n[[secret]]\nresource = \"default/db/password\"\nfile = \"db-password\"\nworkloads = [\""+goodDigest+"\"]\n")
	if _, err := h.store.Reload(); err != nil {
		b.Fatal(err)
	}
	key := newKey(b)
	type job struct {
		cookie *http.Cookie
		body   []byte
	}
	jobs := make([]job, b.N)
	for i := range jobs {
		w := h.do("POST", kbs.PathAuth, []byte(`{"version":"0.1.1","tee":"snp","extra-params":""}`))
		var ch kbs.Challenge
		json.Unmarshal(w.Body.Bytes(), &ch)
		var bind func([]byte) []byte
		var form func([64]byte) json.RawMessage
		if sevForm {
			bind = withAdditional
			form = func(rd [64]byte) json.RawMessage { return sevComposite(b, h.sim, rd, nil) }
		}
		jobs[i] = job{w.Result().Cookies()[0], k.attestation(b, ch.Nonce, key, goodDigest, bind, form)}
	}
	send := func(method, path string, c *http.Cookie, body []byte) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, bytes.NewReader(body))
		r.AddCookie(c)
		w := httptest.NewRecorder()
		h.svc.ServeHTTP(w, r)
		return w
	}
	b.ResetTimer()
	cpu0 := cputime.Self()
	start := time.Now()
	for _, j := range jobs {
		w := send("POST", kbs.PathAttest, j.cookie, j.body)
		if w.Code != http.StatusOK {
			b.Fatalf("attest: %d %s", w.Code, w.Body)
		}
		w = send("GET", kbs.PathResource+"default/db/password", w.Result().Cookies()[0], nil)
		if v, err := kbs.Open(key, w.Body.Bytes()); err != nil || string(v) != kbsMarker {
			b.Fatalf("resource: %d %v", w.Code, err)
		}
	}
	elapsed := time.Since(start)
	cpu := cputime.Self() - cpu0
	b.StopTimer()
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "keeps/s")
}

type fullLedger struct{}

func (fullLedger) UseNonce(context.Context, []byte, time.Time, time.Time, int) error {
	return audit.ErrNoncesFull
}

// TestKBSLedgerFull: a full used-nonce ledger answers 503 with
// Retry-After, not a refusal of the keep.
func TestKBSLedgerFull(t *testing.T) {
	k := newKBSHarness(t)
	k.svc.cfg.UsedNonces = fullLedger{}
	ck, nonce := k.auth(t, "snp")
	req, _ := http.NewRequest("POST", k.srv.URL+kbs.PathAttest, bytes.NewReader(k.attestation(t, nonce, newKey(t), goodDigest, nil, nil)))
	req.AddCookie(ck)
	resp, err := k.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("status %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}
