package verify

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

// Offsets in an SGX v3 quote.
const (
	sgxOffBody       = SGXHeaderSize
	sgxOffFlags      = sgxOffBody + 48
	sgxOffMREnclave  = sgxOffBody + 64
	sgxOffReportData = sgxOffBody + 320
	sgxOffQEReport   = sgxOffBody + SGXReportBodySize + 4 + 64 + 64
)

func sgxEnvelope(tb testing.TB, c *sim.CA, o sim.SGXOptions) *evidence.Envelope {
	tb.Helper()
	env := &evidence.Envelope{Platform: evidence.PlatformSGX, Key: keyA(), Nonce: []byte("n1"), WorkloadDigest: digestA}
	var err error
	if env.Evidence, err = c.SignSGX(evidence.ReportData(env.Key, env.Nonce, env.WorkloadDigest), o); err != nil {
		tb.Fatal(err)
	}
	return env
}

// fixedCollateral is an SGXCollateralGetter with one answer.
type fixedCollateral struct {
	c   *SGXCollateral
	err error
}

func (f fixedCollateral) SGXCollateral(fmspc string) (*SGXCollateral, error) { return f.c, f.err }

func simCollateral(tb testing.TB, c *sim.CA, o sim.SGXCollateralOptions) SGXCollateralGetter {
	tb.Helper()
	b, err := c.SignSGXCollateral(o)
	if err != nil {
		tb.Fatal(err)
	}
	var col SGXCollateral
	if err := json.Unmarshal(b, &col); err != nil {
		tb.Fatal(err)
	}
	return fixedCollateral{c: &col}
}

func TestSGXSimRoundTrip(t *testing.T) {
	c := ca(t, testCA)
	mre, err := sim.SGXMeasurement()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []uint16{3, 4} {
		env := sgxEnvelope(t, c, sim.SGXOptions{Version: v, ISVProdID: 7, ISVSVN: 3})
		b, err := env.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if env, err = evidence.Parse(b); err != nil {
			t.Fatal(err)
		}
		opts := trusting(c)
		opts.SGXCollateral = simCollateral(t, c, sim.SGXCollateralOptions{})
		cl, err := Envelope(env, opts)
		if err != nil {
			t.Fatalf("v%d: %v", v, err)
		}
		if cl.Platform != evidence.PlatformSGX || !cl.Simulated || cl.Debug || !bytes.Equal(cl.Measurement, mre) ||
			!bytes.Equal(cl.Identity["mrsigner"], sim.SGXSigner[:]) || cl.TCB["isv_prod_id"] != 7 || cl.TCB["isv_svn"] != 3 ||
			cl.TCB["cpu_svn.0"] != uint64(sim.DefaultTeeTCBSVN[0]) || cl.TCB["qe_svn"] != uint64(sim.DefaultQESVN) || cl.Details["tcb_status"] != "UpToDate" {
			t.Errorf("v%d claims %+v", v, cl)
		}
	}
}

func TestSGXAttacks(t *testing.T) {
	c, other := ca(t, testCA), ca(t, otherCA)
	flip := func(off int) func(*evidence.Envelope) {
		return func(env *evidence.Envelope) { env.Evidence[off] ^= 1 }
	}
	tests := []struct {
		name   string
		signer *sim.CA
		o      sim.SGXOptions
		change func(*evidence.Envelope)
		opts   Options
		check  string
		msg    string
	}{
		{name: "foreign root", signer: other, opts: trusting(c), check: CheckChain, msg: "does not list"},
		{name: "no sim roots in the policy", signer: c, opts: Options{}, check: CheckChain, msg: "does not list"},
		{name: "tampered MRENCLAVE", signer: c, change: flip(sgxOffMREnclave), opts: trusting(c), check: CheckSignature, msg: "quote's signature"},
		{name: "debug bit set after signing", signer: c, change: flip(sgxOffFlags), opts: trusting(c), check: CheckFormat, msg: "INIT"},
		{name: "tampered QE report", signer: c, change: flip(sgxOffQEReport + 64), opts: trusting(c), check: CheckSignature, msg: "QE report's signature"},
		{name: "report data bound to another key", signer: c, change: func(env *evidence.Envelope) { env.Key = keyB() }, opts: trusting(c), check: CheckReportData},
		{name: "report data rewritten for another key", signer: c, change: func(env *evidence.Envelope) {
			rd := evidence.ReportData(keyB(), env.Nonce, env.WorkloadDigest)
			copy(env.Evidence[sgxOffReportData:], rd[:])
			env.Key = keyB()
		}, opts: trusting(c), check: CheckSignature},
		{name: "attestation key swapped", signer: c, change: func(env *evidence.Envelope) {
			// Another quote's attestation key and signature: the QE report
			// data no longer binds the key.
			o := sgxEnvelope(t, other, sim.SGXOptions{})
			off := sgxOffBody + SGXReportBodySize + 4
			copy(env.Evidence[off:off+128], o.Evidence[off:off+128])
		}, opts: trusting(c), check: CheckSignature, msg: "does not bind the attestation key"},
		{name: "expired PCK chain", signer: c, opts: Options{SimRoots: c.Roots(), Now: time.Now().AddDate(30, 0, 0)}, check: CheckChain},
		{name: "TDX quote as SGX", signer: c, change: func(env *evidence.Envelope) {
			q, err := c.SignTDX([64]byte{}, sim.TDXOptions{})
			if err != nil {
				t.Fatal(err)
			}
			env.Evidence = q
		}, opts: trusting(c), check: CheckFormat, msg: "TDX quote"},
		{name: "revoked TCB", signer: c, opts: func() Options {
			o := trusting(c)
			o.SGXCollateral = simCollateral(t, c, sim.SGXCollateralOptions{Status: "Revoked"})
			return o
		}(), check: CheckChain, msg: "revoked"},
		{name: "revoked PCK certificate", signer: c, opts: func() Options {
			o := trusting(c)
			o.SGXCollateral = simCollateral(t, c, sim.SGXCollateralOptions{RevokePCK: true})
			return o
		}(), check: CheckChain, msg: "certificate is revoked"},
		{name: "expired collateral", signer: c, opts: func() Options {
			o := trusting(c)
			o.SGXCollateral = simCollateral(t, c, sim.SGXCollateralOptions{IssueDate: time.Now().AddDate(0, -2, 0), NextUpdate: time.Now().AddDate(0, -1, 0)})
			return o
		}(), check: CheckChain, msg: "fetch it again"},
		{name: "collateral signed under a foreign root", signer: c, opts: func() Options {
			o := trusting(c)
			o.SGXCollateral = simCollateral(t, other, sim.SGXCollateralOptions{})
			return o
		}(), check: CheckChain},
		{name: "collateral unavailable", signer: c, opts: func() Options {
			o := trusting(c)
			o.SGXCollateral = fixedCollateral{err: errors.New("no file")}
			return o
		}(), check: CheckChain, msg: "no file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := sgxEnvelope(t, tc.signer, tc.o)
			if tc.change != nil {
				tc.change(env)
			}
			mustRefuse(t, env, tc.opts, tc.check, tc.msg)
		})
	}
}

// Debug enclaves and out-of-date TCBs verify: the claims say so and the
// policy refuses them (package policy).
func TestSGXClaimsForPolicy(t *testing.T) {
	c := ca(t, testCA)
	cl, err := Envelope(sgxEnvelope(t, c, sim.SGXOptions{Debug: true}), trusting(c))
	if err != nil || !cl.Debug {
		t.Errorf("debug enclave: claims %+v, %v; want Debug", cl, err)
	}
	opts := trusting(c)
	opts.SGXCollateral = simCollateral(t, c, sim.SGXCollateralOptions{QEStatus: "OutOfDate"})
	cl, err = Envelope(sgxEnvelope(t, c, sim.SGXOptions{}), opts)
	if err != nil || cl.Details["tcb_status"] != "OutOfDate" {
		t.Errorf("out-of-date QE: claims %+v, %v; want TCBStatus OutOfDate", cl, err)
	}
}

// TestRealSGXSample verifies an SGX v3 quote from a real machine with the
// collateral Intel's PCS served for it, at a time both were valid.
func TestRealSGXSample(t *testing.T) {
	raw := readTestdata(t, "sgx_quote_v3_dcapqvl.dat")
	var col SGXCollateral
	if err := json.Unmarshal(readTestdata(t, "sgx_collateral_00A067110000.json"), &col); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2025, 6, 20, 0, 0, 0, 0, time.UTC)
	cl, err := Report(evidence.PlatformSGX, raw, nil, Options{Now: at, SGXCollateral: fixedCollateral{c: &col}})
	if err != nil {
		t.Fatal(err)
	}
	if cl.Simulated || cl.Debug || cl.Details["tcb_status"] != "ConfigurationAndSWHardeningNeeded" || cl.TCB["cpu_svn.0"] != 11 || cl.TCB["pce_svn"] != 15 ||
		!strings.HasPrefix(string(cl.ReportData[:]), "Hello, world!") {
		t.Errorf("claims %+v", cl)
	}
	// Through the offline folder.
	dir := t.TempDir()
	writeFile(t, dir+"/sgx-00A067110000.json", readTestdata(t, "sgx_collateral_00A067110000.json"))
	if _, err := Report(evidence.PlatformSGX, raw, nil, Options{Now: at, SGXCollateral: SGXCollateralDir(dir)}); err != nil {
		t.Errorf("from the folder: %v", err)
	}
	// A month later the TCB info is stale.
	if _, err := Report(evidence.PlatformSGX, raw, nil, Options{Now: at.AddDate(0, 1, 0), SGXCollateral: fixedCollateral{c: &col}}); err == nil || !strings.Contains(err.Error(), "fetch it again") {
		t.Errorf("stale collateral: %v", err)
	}
	// Tampered collateral.
	bad := col
	bad.TCBInfo = strings.Replace(bad.TCBInfo, `"tcbStatus":"OutOfDate"`, `"tcbStatus":"UpToDate"`, 1)
	if _, err := Report(evidence.PlatformSGX, raw, nil, Options{Now: at, SGXCollateral: fixedCollateral{c: &bad}}); err == nil || !strings.Contains(err.Error(), "signature") {
		t.Errorf("tampered TCB info: %v", err)
	}
	// Without collateral, the chain and signatures still verify; the
	// binding does not (the report data was chosen by whoever made it).
	env := &evidence.Envelope{Platform: evidence.PlatformSGX, Evidence: raw, Key: keyA(), WorkloadDigest: digestA}
	if _, err := Envelope(env, Options{Now: at}); err == nil || !strings.Contains(err.Error(), "report_data") {
		t.Errorf("real quote in an envelope: %v, want a report data refusal", err)
	}
	// The tampered real quote.
	raw = bytes.Clone(raw)
	raw[sgxOffMREnclave] ^= 1
	if _, err := Report(evidence.PlatformSGX, raw, nil, Options{Now: at}); err == nil || !strings.Contains(err.Error(), "signature") {
		t.Errorf("tampered real quote: %v", err)
	}
}

// A second real quote (an Occlum enclave), without collateral.
func TestRealSGXOcclumSample(t *testing.T) {
	raw := readTestdata(t, "sgx_quote_v3_occlum.dat")
	q, err := ParseSGXQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := Report(evidence.PlatformSGX, raw, nil, Options{Now: q.PCKChain[0].NotBefore.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if cl.Simulated || cl.Details["tcb_status"] != "" || len(cl.Measurement) != 32 {
		t.Errorf("claims %+v", cl)
	}
}

func TestParseSGXQuoteErrors(t *testing.T) {
	c := ca(t, testCA)
	good := sgxEnvelope(t, c, sim.SGXOptions{}).Evidence
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	le := binary.LittleEndian
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "less than the smallest quote"},
		{"huge", make([]byte, evidence.MaxEvidenceSize+1), "more than the limit"},
		{"version 5", mod(func(b []byte) []byte { le.PutUint16(b, 5); return b }), "version 5"},
		{"key type", mod(func(b []byte) []byte { le.PutUint16(b[2:], 3); return b }), "attestation key type 3"},
		{"reserved header", mod(func(b []byte) []byte { b[5] = 1; return b }), "TEE type"},
		{"reserved body", mod(func(b []byte) []byte { b[sgxOffBody+100] = 1; return b }), "reserved bytes"},
		{"signature length", mod(func(b []byte) []byte { le.PutUint32(b[sgxOffBody+SGXReportBodySize:], 10); return b }), "signature data length"},
		{"trailing byte", append(bytes.Clone(good), 0), "signature data length"},
		{"truncated", good[:len(good)-1], "signature data length"},
		{"auth data too long", mod(func(b []byte) []byte {
			le.PutUint16(b[sgxOffQEReport+SGXReportBodySize+64:], 0xffff)
			return b
		}), "QE authentication data"},
		{"cert type", mod(func(b []byte) []byte {
			le.PutUint16(b[sgxOffQEReport+SGXReportBodySize+64+2+32:], 1)
			return b
		}), "certification data type 1"},
		{"PEM garbage", mod(func(b []byte) []byte {
			off := sgxOffQEReport + SGXReportBodySize + 64 + 2 + 32 + 6
			copy(b[off:], "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
			return b
		}), "PCK certificate chain"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSGXQuote(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("ParseSGXQuote = %v, want one line saying %q", err, tc.want)
			}
		})
	}
}

// FuzzParseSGXQuote: the parser never panics and whatever it accepts
// verifies only if it is the genuine quote.
func FuzzParseSGXQuote(f *testing.F) {
	c := ca(f, testCA)
	env := sgxEnvelope(f, c, sim.SGXOptions{})
	f.Add(env.Evidence)
	v4 := sgxEnvelope(f, c, sim.SGXOptions{Version: 4})
	f.Add(v4.Evidence)
	f.Add(readTestdata(f, "sgx_quote_v3_dcapqvl.dat"))
	f.Add(readTestdata(f, "sgx_quote_v3_occlum.dat"))
	opts := trusting(c)
	f.Fuzz(func(t *testing.T, raw []byte) {
		if _, err := ParseSGXQuote(raw); err != nil {
			return
		}
		e := *env
		e.Evidence = raw
		_, err := Envelope(&e, opts)
		if err == nil && !bytes.Equal(raw, env.Evidence) && !bytes.Equal(raw, v4.Evidence) {
			t.Fatalf("accepted a quote that was never signed: %x", raw)
		}
		var ve *Error
		if err != nil && !errors.As(err, &ve) {
			t.Fatalf("error %v is not a *verify.Error", err)
		}
	})
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// mustRefuse asserts that Envelope refuses env under opts by check, with a
// one-line error that says msg.
func mustRefuse(t *testing.T, env *evidence.Envelope, opts Options, check, msg string) {
	t.Helper()
	cl, err := Envelope(env, opts)
	if err == nil {
		t.Fatalf("accepted: %+v", cl)
	}
	var ve *Error
	if !errors.As(err, &ve) || ve.Check != check {
		t.Fatalf("error %v, want check %s", err, check)
	}
	if !strings.Contains(err.Error(), msg) || strings.Contains(err.Error(), "\n") {
		t.Errorf("error %q does not say %q on one line", err, msg)
	}
}

// pcsFake answers Intel's PCS v4 URLs from a collateral, as Intel does:
// issuer chains URL-encoded in headers, signed bodies, DER CRLs.
type pcsFake struct {
	c    *SGXCollateral
	urls []string
}

func (p *pcsFake) Get(u string) (map[string][]string, []byte, error) {
	p.urls = append(p.urls, u)
	der := func(h string) []byte { b, _ := hex.DecodeString(h); return b }
	switch {
	case strings.HasSuffix(u, "/tcb?fmspc=00A067110000"):
		return map[string][]string{"Tcb-Info-Issuer-Chain": {url.QueryEscape(p.c.TCBInfoIssuerChain)}},
			[]byte(`{"tcbInfo":` + p.c.TCBInfo + `,"signature":"` + p.c.TCBInfoSignature + `"}`), nil
	case strings.HasSuffix(u, "/qe/identity"):
		return map[string][]string{"Sgx-Enclave-Identity-Issuer-Chain": {url.QueryEscape(p.c.QEIdentityIssuerChain)}},
			[]byte(`{"enclaveIdentity":` + p.c.QEIdentity + `,"signature":"` + p.c.QEIdentitySignature + `"}`), nil
	case strings.Contains(u, "/pckcrl?ca=platform"):
		return map[string][]string{"Sgx-Pck-Crl-Issuer-Chain": {url.QueryEscape(p.c.PCKCRLIssuerChain)}}, der(p.c.PCKCRL), nil
	case u == intelRootCRLURL:
		return nil, der(p.c.RootCACRL), nil
	}
	return nil, nil, fmt.Errorf("404 %s", u)
}

func TestPCSCollateral(t *testing.T) {
	var col SGXCollateral
	if err := json.Unmarshal(readTestdata(t, "sgx_collateral_00A067110000.json"), &col); err != nil {
		t.Fatal(err)
	}
	fake := &pcsFake{c: &col}
	at := time.Date(2025, 6, 20, 0, 0, 0, 0, time.UTC)
	cl, err := Report(evidence.PlatformSGX, readTestdata(t, "sgx_quote_v3_dcapqvl.dat"), nil, Options{Now: at, SGXCollateral: &PCSCollateral{Getter: fake}})
	if err != nil {
		t.Fatal(err)
	}
	if cl.Details["tcb_status"] != "ConfigurationAndSWHardeningNeeded" || len(fake.urls) != 4 || !strings.HasPrefix(fake.urls[0], "https://api.trustedservices.intel.com/sgx/certification/v4/tcb?fmspc=") {
		t.Errorf("status %q, fetched %v", cl.Details["tcb_status"], fake.urls)
	}
	// An answer without its issuer chain is refused.
	if _, err := (&PCSCollateral{Getter: &pcsFake{c: &SGXCollateral{}}, BaseURL: "https://pccs.invalid"}).SGXCollateral("00A067110000"); err == nil {
		t.Error("a PCS answer without an issuer chain was accepted")
	}
}

func TestSGXCollateralDirErrors(t *testing.T) {
	dir := t.TempDir()
	d := SGXCollateralDir(dir)
	for _, tc := range []struct{ fmspc, file, want string }{
		{"../../etc", "", "not 12 upper-case hex digits"},
		{"00A067110000", "", "no such file"},
		{"00A067110000", `{"tcb_info": "x", "extra": 1}`, "unknown field"},
		{"00A067110000", `{"tcb_info": "` + strings.Repeat("a", maxCollateralSize) + `"}`, "more than 1 MiB"},
	} {
		if tc.file != "" {
			writeFile(t, filepath.Join(dir, "sgx-"+tc.fmspc+".json"), []byte(tc.file))
		}
		if _, err := d.SGXCollateral(tc.fmspc); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %.20q: %v, want %q", tc.fmspc, tc.file, err, tc.want)
		}
	}
}

func BenchmarkSimSignSGX(b *testing.B) {
	c := ca(b, testCA)
	m := make([]byte, 32)
	for b.Loop() {
		if _, err := c.SignSGX([64]byte{}, sim.SGXOptions{MREnclave: m}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifySGX(b *testing.B) {
	c := ca(b, testCA)
	env := sgxEnvelope(b, c, sim.SGXOptions{})
	opts := trusting(c)
	for b.Loop() {
		if _, err := Envelope(env, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifySGXCollateral is the real quote with Intel's collateral:
// chain, QE report, quote, two collateral signatures, two CRLs.
func BenchmarkVerifySGXCollateral(b *testing.B) {
	var col SGXCollateral
	if err := json.Unmarshal(readTestdata(b, "sgx_collateral_00A067110000.json"), &col); err != nil {
		b.Fatal(err)
	}
	raw := readTestdata(b, "sgx_quote_v3_dcapqvl.dat")
	opts := Options{Now: time.Date(2025, 6, 20, 0, 0, 0, 0, time.UTC), SGXCollateral: fixedCollateral{c: &col}}
	for b.Loop() {
		if _, err := Report(evidence.PlatformSGX, raw, nil, opts); err != nil {
			b.Fatal(err)
		}
	}
}
