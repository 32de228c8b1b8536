package console

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/client"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/verify"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

const testDigest = "sha256:0000000000000000000000000000000000000000000000000000000000000001"

var (
	simOnce          sync.Once
	trusted, foreign *sim.CA
	simErr           error
)

// simCAs returns a CA the tests' verifier trusts and one it does not.
func simCAs(t testing.TB) (*sim.CA, *sim.CA) {
	t.Helper()
	simOnce.Do(func() {
		if trusted, simErr = sim.New(); simErr == nil {
			foreign, simErr = sim.New()
		}
	})
	if simErr != nil {
		t.Fatal(simErr)
	}
	return trusted, foreign
}

func testVerifier(ca *sim.CA) Verifier {
	return func(env *evidence.Envelope) (*evidence.Claims, error) {
		return verify.Envelope(env, verify.Options{SimRoots: ca.Roots()})
	}
}

// report builds what `castellan run --report` writes, with hooks to tamper
// with the evidence.
type reportSpec struct {
	backend    string
	ca         *sim.CA // signer of the evidence; nil = no evidence
	certDigest string  // workload digest in the certificate
	envDigest  string  // workload digest the evidence binds
	otherKey   bool    // the evidence binds another key than the certificate's
	tamper     func(env *evidence.Envelope)
}

func makeReport(t testing.TB, s reportSpec) []byte {
	t.Helper()
	if s.certDigest == "" {
		s.certDigest = testDigest
	}
	if s.envDigest == "" {
		s.envDigest = s.certDigest
	}
	cert, err := client.SelfSigned(s.certDigest)
	if err != nil {
		t.Fatal(err)
	}
	r := map[string]any{
		"workload_digest":   s.certDigest,
		"backend":           s.backend,
		"platform":          "none",
		"attested":          false,
		"certificate_chain": []string{string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}))},
	}
	if s.ca != nil {
		pub := cert.Leaf.PublicKey
		if s.otherKey {
			other, err := client.SelfSigned(s.certDigest)
			if err != nil {
				t.Fatal(err)
			}
			pub = other.Leaf.PublicKey
		}
		spki, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		platform := evidence.PlatformSNP
		if p, ok := map[string]string{tee.NameSimTDX: evidence.PlatformTDX, tee.NameSimSGX: evidence.PlatformSGX, tee.NameSimCCA: evidence.PlatformCCA}[s.backend]; ok {
			platform = p
		}
		env, err := tee.Attest(context.Background(), tee.NewSim(platform, s.ca), spki, []byte("nonce"), s.envDigest)
		if err != nil {
			t.Fatal(err)
		}
		if s.tamper != nil {
			s.tamper(env)
		}
		b, err := env.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		r["evidence"] = b
		r["platform"] = platform
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeReport(t *testing.T) {
	ca, _ := simCAs(t)
	for _, backend := range []string{tee.NameSimSNP, tee.NameSimTDX, tee.NameSimSGX, tee.NameSimCCA} {
		p, err := decodeReport(makeReport(t, reportSpec{backend: backend, ca: ca}), testVerifier(ca), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{tee.NameSimSNP: "snp", tee.NameSimTDX: "tdx", tee.NameSimSGX: "sgx", tee.NameSimCCA: "cca"}[backend]
		if p.Platform != want || !p.Simulated || !p.Insecure || !p.Evidence.Verified || p.Measurement == "" || (len(p.TCB) == 0) != (want == "cca") {
			t.Errorf("%s: %+v", backend, p)
		}
		// SGX and CCA evidence has identity values, each explained.
		if (want == "sgx" || want == "cca") != (len(p.Identity) > 0) {
			t.Errorf("%s: identity %+v", backend, p.Identity)
		}
		for _, id := range p.Identity {
			if id.Meaning == "" || id.Value == "" {
				t.Errorf("%s: identity value %+v is not explained", backend, id)
			}
		}
		// What the verifier decided on is shown, collateral included.
		if (want != "cca" && p.Checked["collateral"] != "none") || (want == "snp" && p.Checked["vmpl"] != "0") || (want == "tdx" && p.Checked["td_attributes"] == "") {
			t.Errorf("%s: checked %v", backend, p.Checked)
		}
		if !strings.Contains(p.Verdict, "simulated") || !strings.Contains(p.PlatformName, "simulated on this machine") {
			t.Errorf("%s: verdict %q, platform %q", backend, p.Verdict, p.PlatformName)
		}
		if p.WorkloadDigest != testDigest || !p.Certificate.SelfSigned || !p.Certificate.ValidNow {
			t.Errorf("%s: %+v", backend, p.Certificate)
		}
	}
	p, err := decodeReport(makeReport(t, reportSpec{backend: tee.NameNil}), testVerifier(ca), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if p.Platform != "none" || !p.Insecure || p.Evidence.Present || !strings.Contains(p.Verdict, "no hardware protection") {
		t.Errorf("nil: %+v", p)
	}
	// Validity is judged at the time given.
	p, _ = decodeReport(makeReport(t, reportSpec{backend: tee.NameNil}), testVerifier(ca), time.Now().Add(48*time.Hour))
	if p.Certificate.ValidNow {
		t.Errorf("a certificate is valid two days later: %+v", p.Certificate)
	}
}

// TestDecodeReportAttacks: evidence that does not prove what the report
// says is shown as failed, never as checked.
func TestDecodeReportAttacks(t *testing.T) {
	ca, foreign := simCAs(t)
	cases := []struct {
		name string
		spec reportSpec
		want string
	}{
		{"untrusted root", reportSpec{backend: tee.NameSimSNP, ca: foreign}, "chain"},
		{"untrusted TDX root", reportSpec{backend: tee.NameSimTDX, ca: foreign}, "chain"},
		{"another key", reportSpec{backend: tee.NameSimSNP, ca: ca, otherKey: true}, "another key than the keep certificate's"},
		{"another workload", reportSpec{backend: tee.NameSimSNP, ca: ca, envDigest: "sha256:" + strings.Repeat("ab", 32)}, "names workload"},
		{"digest swapped after signing", reportSpec{backend: tee.NameSimSNP, ca: ca, tamper: func(e *evidence.Envelope) {
			e.WorkloadDigest = "sha256:" + strings.Repeat("cd", 32)
		}}, "report_data"},
		{"nonce swapped after signing", reportSpec{backend: tee.NameSimSNP, ca: ca, tamper: func(e *evidence.Envelope) { e.Nonce = []byte("other") }}, "report_data"},
		{"report bit flipped", reportSpec{backend: tee.NameSimSNP, ca: ca, tamper: func(e *evidence.Envelope) { e.Evidence[0x90] ^= 1 }}, ""},
		{"endorsements dropped", reportSpec{backend: tee.NameSimSNP, ca: ca, tamper: func(e *evidence.Envelope) { e.Endorsements = nil }}, ""},
		{"SNP report relabelled TDX", reportSpec{backend: tee.NameSimSNP, ca: ca, tamper: func(e *evidence.Envelope) { e.Platform = evidence.PlatformTDX; e.Endorsements = nil }}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := decodeReport(makeReport(t, c.spec), testVerifier(ca), time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if p.Evidence.Verified || p.Evidence.Error == "" || !p.Insecure || !strings.Contains(p.Evidence.Error, c.want) {
				t.Errorf("evidence %+v", p.Evidence)
			}
			if !strings.HasPrefix(p.Verdict, "Not trustworthy") {
				t.Errorf("verdict %q", p.Verdict)
			}
		})
	}
}

func TestDecodeReportRefuses(t *testing.T) {
	ca, _ := simCAs(t)
	good := makeReport(t, reportSpec{backend: tee.NameNil})
	var m map[string]any
	json.Unmarshal(good, &m)
	edit := func(f func(map[string]any)) []byte {
		c := map[string]any{}
		for k, v := range m {
			c[k] = v
		}
		f(c)
		b, _ := json.Marshal(c)
		return b
	}
	cases := map[string][]byte{
		"not json":        []byte("{"),
		"bad digest":      edit(func(c map[string]any) { c["workload_digest"] = "md5:00" }),
		"digest mismatch": edit(func(c map[string]any) { c["workload_digest"] = "sha256:" + strings.Repeat("ef", 32) }),
		"no certificate":  edit(func(c map[string]any) { c["certificate_chain"] = []string{} }),
		"not PEM":         edit(func(c map[string]any) { c["certificate_chain"] = []string{"hello"} }),
		"two in one": edit(func(c map[string]any) {
			p := m["certificate_chain"].([]any)[0].(string)
			c["certificate_chain"] = []string{p + p}
		}),
		"garbage DER": edit(func(c map[string]any) {
			c["certificate_chain"] = []string{"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}
		}),
		"evidence not CBOR": edit(func(c map[string]any) { c["evidence"] = []byte("nope") }),
	}
	for name, b := range cases {
		p, err := decodeReport(b, testVerifier(ca), time.Now())
		if name == "evidence not CBOR" {
			// Readable report, unreadable evidence: shown as failed.
			if err != nil || p.Evidence.Verified || p.Evidence.Error == "" {
				t.Errorf("%s: %v %+v", name, err, p)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: accepted: %+v", name, p)
		}
	}
}

func FuzzDecodeReport(f *testing.F) {
	ca, _ := simCAs(f)
	f.Add(makeReport(f, reportSpec{backend: tee.NameNil}))
	f.Add(makeReport(f, reportSpec{backend: tee.NameSimSNP, ca: ca}))
	f.Add([]byte(`{"workload_digest":"sha256:00","certificate_chain":["x"],"evidence":"AAAA"}`))
	check := testVerifier(ca)
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodeReport(b, check, time.Now())
		if err != nil {
			return
		}
		if p.Evidence.Verified && p.Evidence.Error != "" {
			t.Fatalf("verified with an error: %+v", p.Evidence)
		}
		if p.Platform == "none" && !p.Insecure {
			t.Fatal("platform none shown as secure")
		}
	})
}

// TestStreamUTF8 checks that output cut inside a character reaches the
// page whole, and that the output cap holds.
func TestStreamUTF8(t *testing.T) {
	r := &run{maxOutput: 1 << 20, ended: make(chan struct{})}
	w := &stream{r: r, name: "stdout"}
	text := "héllo → wörld 🏰\n"
	b := []byte(text)
	for i := range b {
		w.Write(b[i : i+1])
	}
	w.flush()
	var got strings.Builder
	for _, ev := range r.takeLocked(0) {
		var s string
		if err := json.Unmarshal(ev.data, &s); err != nil {
			t.Fatal(err)
		}
		got.WriteString(s)
	}
	if got.String() != text {
		t.Errorf("got %q, want %q", got.String(), text)
	}
	// Invalid UTF-8 is replaced, not passed on.
	r2 := &run{maxOutput: 1 << 20, ended: make(chan struct{})}
	w2 := &stream{r: r2, name: "stderr"}
	w2.Write([]byte("a\xffb\n"))
	w2.flush()
	var s string
	json.Unmarshal(r2.takeLocked(0)[0].data, &s)
	if s != "a\uFFFDb\n" {
		t.Errorf("invalid UTF-8: %q", s)
	}
}

func TestStreamCap(t *testing.T) {
	r := &run{maxOutput: 10, ended: make(chan struct{})}
	w := &stream{r: r, name: "stdout"}
	chunk := strings.Repeat("x", 1000)
	for range 10 {
		w.Write([]byte(chunk))
	}
	if r.outBytes != 10 {
		t.Errorf("passed on %d bytes, cap 10", r.outBytes)
	}
	if !strings.Contains(r.stopWhy, "output limit of 10 bytes") || r.stopBy != "output" {
		t.Errorf("stop reason %q (%q)", r.stopWhy, r.stopBy)
	}
}

func TestUploadName(t *testing.T) {
	for in, want := range map[string]string{
		"app.wasm":               "app.wasm",
		"../../etc/passwd":       "passwd",
		`C:\Users\me\app.wasm`:   "app.wasm",
		"bad\nname\x00.wasm":     "badname.wasm",
		"":                       "app.wasm",
		"/":                      "app.wasm",
		strings.Repeat("a", 200): strings.Repeat("a", 80),
	} {
		if got := uploadName(in, "app.wasm"); got != want {
			t.Errorf("uploadName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCoalesce(t *testing.T) {
	str := func(s string) []byte { b, _ := json.Marshal(s); return b }
	evs := []event{
		{1, "state", []byte("{}")},
		{2, "stdout", str("a")}, {3, "stdout", str("b")}, {4, "stderr", str("x")},
		{5, "stdout", str("c")}, {6, "stdout", str("d")}, {7, "stdout", str("e")},
		{8, "exit", []byte("{}")},
	}
	var got []string
	for _, ev := range coalesce(evs) {
		got = append(got, fmt.Sprintf("%d %s %s", ev.id, ev.name, ev.data))
	}
	want := []string{`1 state {}`, `3 stdout "ab"`, `4 stderr "x"`, `7 stdout "cde"`, `8 exit {}`}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("coalesce:\n got %q\nwant %q", got, want)
	}
}

// TestOutputPiecesMerged: a workload that writes its output byte by byte
// (each write a delivery frame, each frame a write here) does not make the
// console hold an event per byte: pieces no stream has taken join the last
// event, up to maxCoalesced each; a stream that takes events fixes them.
func TestOutputPiecesMerged(t *testing.T) {
	const n = 1 << 20
	r := &run{maxOutput: n, ended: make(chan struct{})}
	w := &stream{r: r, name: "stdout"}
	e := &stream{r: r, name: "stderr"}
	for i := range n / 2 {
		w.Write([]byte{'a'})
		if i == n/4 {
			e.Write([]byte("!"))
		}
	}
	r.mu.Lock()
	taken := r.takeLocked(0)
	r.mu.Unlock()
	w.Write([]byte("after"))
	w.flush()
	r.mu.Lock()
	all := r.takeLocked(0)
	r.mu.Unlock()
	if max := n/2/maxCoalesced + 4; len(all) > max {
		t.Fatalf("%d events for %d one-byte writes, want at most %d", len(all), n/2, max)
	}
	var out, errs strings.Builder
	for i, ev := range all {
		if ev.id != i+1 {
			t.Fatalf("event %d has id %d", i, ev.id)
		}
		var s string
		if err := json.Unmarshal(ev.data, &s); err != nil {
			t.Fatalf("event %d: %v", ev.id, err)
		}
		if len(s) > maxCoalesced {
			t.Errorf("event %d holds %d bytes, over %d", ev.id, len(s), maxCoalesced)
		}
		map[string]*strings.Builder{"stdout": &out, "stderr": &errs}[ev.name].WriteString(s)
	}
	if want := strings.Repeat("a", n/2) + "after"; out.String() != want || errs.String() != "!" {
		t.Errorf("stdout %d bytes (want %d), stderr %q", out.Len(), len(want), errs.String())
	}
	// What a stream took stays as it was sent: later output is a new event.
	last := taken[len(taken)-1]
	if got := all[len(taken)-1]; string(got.data) != string(last.data) {
		t.Errorf("event %d changed after a stream took it", last.id)
	}
	if all[len(taken)].name != "stdout" || !strings.Contains(string(all[len(taken)].data), "after") {
		t.Errorf("output after a take is not a new event: %+v", all[len(taken)])
	}
}

// TestFollowersBounded: a run has at most maxFollowers event streams.
func TestFollowersBounded(t *testing.T) {
	r := &run{}
	for i := range maxFollowers {
		if !r.follow() {
			t.Fatalf("stream %d refused", i+1)
		}
	}
	if r.follow() {
		t.Fatalf("stream %d accepted, the bound is %d", maxFollowers+1, maxFollowers)
	}
	r.unfollow()
	if !r.follow() {
		t.Fatal("a stream refused after one ended")
	}
}
