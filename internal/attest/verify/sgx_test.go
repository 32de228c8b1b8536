package verify

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/tee/sim"
	"github.com/castellan-dev/castellan/internal/testvectors"
	"github.com/google/go-tdx-guest/pcs"
	tdxtestdata "github.com/google/go-tdx-guest/testing/testdata"
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

func simCollateral(tb testing.TB, c *sim.CA, o sim.SGXCollateralOptions) collateral.Map {
	tb.Helper()
	m, err := c.SignSGXCollateral(o)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// realFMSPC is the FMSPC of sgx_quote_v3_dcapqvl.dat (an outside vector,
// internal/testvectors), as its PCK certificate writes it.
const realFMSPC = "00a067110000"

// The registry sample: an SGX v3 quote from a real machine with the TCB
// info and QE identity Intel's PCS v4 served for its FMSPC, as the Go
// module of oasis-core ships them as test data (testdata/README.md).
const (
	oasisModule   = "github.com/oasisprotocol/oasis-core/go"
	oasisTestdata = "common/sgx/pcs/testdata/"
	oasisFMSPC    = "00606a000000"
	oasisQuote    = "quote_v3_ecdsa_p256_pck_chain.bin"
)

// oasisAt is a time the oasis sample's collateral is valid at (the one
// oasis-core's own test verifies at): 2022-12-20.
var oasisAt = time.Unix(1671497404, 0)

// oasisCollateral serves the oasis sample's collateral at Intel's PCS v4
// URLs: the TCB info and QE identity as Intel's responses with the TCB
// signing chain in their headers (tcbChain, PEM), and the PCK Platform CA
// and root CA CRLs go-tdx-guest ships (2023). Those CRLs are newer than
// the TCB info: a later CRL that does not list the PCK certificate or its
// CA shows they were not revoked at oasisAt either, and checkCRL refuses
// stale CRLs only.
func oasisCollateral(tb testing.TB, tcbInfo, tcbChain []byte) collateral.Map {
	tb.Helper()
	chain := url.QueryEscape(string(tcbChain))
	return collateral.Map{
		collateral.SGXTCBInfoURL(oasisFMSPC): {Header: http.Header{"Tcb-Info-Issuer-Chain": {chain}}, Body: tcbInfo},
		collateral.SGXQEIdentityURL(): {Header: http.Header{"Sgx-Enclave-Identity-Issuer-Chain": {chain}},
			Body: oasisFile(tb, "qe_identity_v2.json")},
		// The quote's PCK certificate is issued by Intel's platform CA.
		pcs.PckCrlURL("platform"):  {Body: tdxtestdata.PckCrlBody},
		collateral.IntelRootCRLURL: {Body: tdxtestdata.RootCrlBody},
	}
}

func oasisFile(tb testing.TB, name string) []byte {
	tb.Helper()
	return testvectors.ModuleFile(tb, oasisModule, oasisTestdata+name)
}

// oasisPCS is oasisCollateral with the sample's own TCB info and chain.
func oasisPCS(tb testing.TB) collateral.Map {
	tb.Helper()
	return oasisCollateral(tb, oasisFile(tb, "tcb_info_v3_fmspc_00606A000000.json"), oasisFile(tb, "tcb_info_v3_fmspc_00606A000000_certs.pem"))
}

// pcsMap serves an sgx_ql_qve_collateral_t (the test data's form) at
// Intel's PCS v4 URLs, as Intel does: issuer chains URL-encoded in
// headers, signed bodies, DER CRLs.
func pcsMap(tb testing.TB, c *SGXCollateral) collateral.Map {
	tb.Helper()
	der := func(h string) []byte {
		b, err := hex.DecodeString(h)
		if err != nil {
			tb.Fatal(err)
		}
		return b
	}
	return collateral.Map{
		collateral.SGXTCBInfoURL(realFMSPC): {Header: http.Header{"Tcb-Info-Issuer-Chain": {url.QueryEscape(c.TCBInfoIssuerChain)}},
			Body: []byte(`{"tcbInfo":` + c.TCBInfo + `,"signature":"` + c.TCBInfoSignature + `"}`)},
		collateral.SGXQEIdentityURL(): {Header: http.Header{"Sgx-Enclave-Identity-Issuer-Chain": {url.QueryEscape(c.QEIdentityIssuerChain)}},
			Body: []byte(`{"enclaveIdentity":` + c.QEIdentity + `,"signature":"` + c.QEIdentitySignature + `"}`)},
		// The quote's PCK certificate is issued by Intel's processor CA.
		pcs.PckCrlURL("processor"): {Header: http.Header{"Sgx-Pck-Crl-Issuer-Chain": {url.QueryEscape(c.PCKCRLIssuerChain)}}, Body: der(c.PCKCRL)},
		collateral.IntelRootCRLURL: {Body: der(c.RootCACRL)},
	}
}

func realCollateral(tb testing.TB) *SGXCollateral {
	tb.Helper()
	var col SGXCollateral
	if err := json.Unmarshal(testvectors.Read(tb, "sgx_collateral_00A067110000.json"), &col); err != nil {
		tb.Fatal(err)
	}
	return &col
}

// recording is a collateral source that notes the URLs asked for.
type recording struct {
	collateral.Source
	urls []string
}

func (r *recording) Get(ctx context.Context, u string) (*collateral.Response, error) {
	r.urls = append(r.urls, u)
	return r.Source.Get(ctx, u)
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
		opts.SimCollateral = simCollateral(t, c, sim.SGXCollateralOptions{})
		if v == 4 {
			// The collateral the CA publishes for all its platforms.
			if opts.SimCollateral, err = c.Collateral(); err != nil {
				t.Fatal(err)
			}
		}
		cl, err := Envelope(env, opts)
		if err != nil {
			t.Fatalf("v%d: %v", v, err)
		}
		if cl.Platform != evidence.PlatformSGX || !cl.Simulated || cl.Debug || !bytes.Equal(cl.Measurement, mre) ||
			!bytes.Equal(cl.Identity["mrsigner"], sim.SGXSigner[:]) || cl.TCB["isv_prod_id"] != 7 || cl.TCB["isv_svn"] != 3 ||
			cl.TCB["cpu_svn.0"] != uint64(sim.DefaultTeeTCBSVN[0]) || cl.TCB["qe_svn"] != uint64(sim.DefaultQESVN) || cl.Details["tcb_status"] != "UpToDate" ||
			cl.Details["qe_tcb_status"] != "UpToDate" || cl.Details["collateral"] != "verified" || cl.Details["mrsigner"] != hex.EncodeToString(sim.SGXSigner[:]) {
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
			o.SimCollateral = simCollateral(t, c, sim.SGXCollateralOptions{Status: "Revoked"})
			return o
		}(), check: CheckTCBStatus, msg: "TCB status Revoked"},
		{name: "QE revoked", signer: c, opts: func() Options {
			o := trusting(c)
			o.SimCollateral = simCollateral(t, c, sim.SGXCollateralOptions{QEStatus: "Revoked"})
			o.SGX.TCBStatuses = []string{"UpToDate", "OutOfDate"}
			return o
		}(), check: CheckTCBStatus, msg: "QE identity gives TCB status Revoked"},
		{name: "revoked PCK certificate", signer: c, opts: func() Options {
			o := trusting(c)
			o.SimCollateral = simCollateral(t, c, sim.SGXCollateralOptions{RevokePCK: true})
			return o
		}(), check: CheckCollateral, msg: "revoked by the Intel PCK CRL"},
		// Intel's root CA CRL revokes the TCB signing certificate (its key
		// leaked): TCB info and QE identity it signed say nothing.
		{name: "revoked TCB signing certificate", signer: c, opts: func() Options {
			o := trusting(c)
			o.SimCollateral = simCollateral(t, c, sim.SGXCollateralOptions{RevokeTCBSigner: true})
			return o
		}(), check: CheckCollateral, msg: "revoked by the Intel root CA CRL"},
		{name: "expired collateral", signer: c, opts: func() Options {
			o := trusting(c)
			o.SimCollateral = simCollateral(t, c, sim.SGXCollateralOptions{IssueDate: time.Now().AddDate(0, -2, 0), NextUpdate: time.Now().AddDate(0, -1, 0)})
			return o
		}(), check: CheckCollateral, msg: "fetch it again"},
		{name: "collateral signed under a foreign root", signer: c, opts: func() Options {
			o := trusting(c)
			o.SimCollateral = simCollateral(t, other, sim.SGXCollateralOptions{})
			return o
		}(), check: CheckCollateral},
		{name: "TDX collateral only", signer: c, opts: func() Options {
			o := trusting(c)
			m := simCollateral(t, c, sim.SGXCollateralOptions{})
			delete(m, collateral.SGXTCBInfoURL("00806f050000"))
			o.SimCollateral = m
			return o
		}(), check: CheckCollateral, msg: "sgx/certification/v4/tcb"},
		{name: "collateral unavailable", signer: c, opts: func() Options {
			o := trusting(c)
			o.SimCollateral = collateral.Map{}
			return o
		}(), check: CheckCollateral, msg: "HTTP 404"},
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
}

// Intel's TCB statuses are accepted as the policy's tcb_statuses say, the
// same way for SGX as for TDX (Revoked never).
func TestSGXTCBStatusPolicy(t *testing.T) {
	c := ca(t, testCA)
	for _, tc := range []struct {
		name   string
		o      sim.SGXCollateralOptions
		accept []string
		refuse string // "" = accepted
	}{
		{"UpToDate by default", sim.SGXCollateralOptions{}, nil, ""},
		{"SWHardeningNeeded by default", sim.SGXCollateralOptions{Status: "SWHardeningNeeded"}, nil, "TCB info gives TCB status SWHardeningNeeded"},
		{"SWHardeningNeeded accepted", sim.SGXCollateralOptions{Status: "SWHardeningNeeded"}, []string{"UpToDate", "SWHardeningNeeded"}, ""},
		{"ConfigurationNeeded", sim.SGXCollateralOptions{Status: "ConfigurationNeeded"}, []string{"UpToDate"}, "ConfigurationNeeded"},
		{"platform OutOfDate", sim.SGXCollateralOptions{Status: "OutOfDate"}, nil, "TCB info gives TCB status OutOfDate"},
		{"QE OutOfDate", sim.SGXCollateralOptions{QEStatus: "OutOfDate"}, nil, "QE identity gives TCB status OutOfDate"},
		{"QE OutOfDate accepted", sim.SGXCollateralOptions{QEStatus: "OutOfDate"}, []string{"UpToDate", "OutOfDate"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := trusting(c)
			opts.SimCollateral = simCollateral(t, c, tc.o)
			opts.SGX.TCBStatuses = tc.accept
			env := sgxEnvelope(t, c, sim.SGXOptions{})
			if tc.refuse != "" {
				mustRefuse(t, env, opts, CheckTCBStatus, tc.refuse)
				return
			}
			cl, err := Envelope(env, opts)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.o.QEStatus
			if want == "" {
				want = "UpToDate"
			}
			if cl.Details["qe_tcb_status"] != want || cl.Details["tcb_info_next_update"] == "" || cl.Details["qe_identity_next_update"] == "" {
				t.Errorf("details %v", cl.Details)
			}
		})
	}
}

// TestRealSGXOasisSample verifies the registry sample (a real SGX v3
// quote) against Intel's real root with Intel's collateral, and refuses it
// tampered, with tampered or wrongly signed collateral, out of the
// collateral's validity, and under the default policy. It runs wherever
// the Go module proxy or module cache has oasis-core's module (CI does).
func TestRealSGXOasisSample(t *testing.T) {
	raw := oasisFile(t, oasisQuote)
	accept := SGXPolicy{TCBStatuses: []string{"UpToDate", "SWHardeningNeeded"}}

	// Without collateral: the PCK chain to Intel's SGX root (the TCB
	// claims are its PCK certificate's components), the QE
	// report, the attestation key binding and the quote's signature.
	cl, err := Report(evidence.PlatformSGX, raw, nil, Options{Now: oasisAt})
	if err != nil {
		t.Fatal(err)
	}
	wantRD := []byte{2, 106, 105, 206, 217, 108, 62, 2, 149, 209, 109, 107, 56, 142, 5, 122, 19, 122, 20, 49, 150, 113, 102, 42, 88, 68, 199, 71, 47, 60, 98, 174,
		14, 61, 63, 153, 183, 125, 216, 155, 15, 193, 67, 108, 79, 233, 104, 40, 57, 26, 82, 88, 138, 15, 136, 52, 85, 161, 139, 143, 88, 114, 227, 240}
	if cl.Simulated || cl.Debug || hex.EncodeToString(cl.Measurement) != "68823bc62f409ee33a32ea270cfe45d4b19a6fb3c8570d7bc186cbe062398e8f" ||
		hex.EncodeToString(cl.Identity["mrsigner"]) != "9affcfae47b848ec2caf1c49b4b283531e1cc425f93582b36806e52a43d78d1a" ||
		cl.TCB["cpu_svn.0"] != 7 || cl.TCB["cpu_svn.2"] != 3 || cl.TCB["pce_svn"] != 13 || cl.TCB["qe_svn"] != 9 || cl.TCB["isv_svn"] != 0 ||
		!bytes.Equal(cl.ReportData[:], wantRD) || cl.Details["tcb_status"] != "" {
		t.Errorf("claims %+v", cl)
	}

	// With Intel's collateral, and through an offline collateral folder.
	dir := t.TempDir()
	for u, r := range oasisPCS(t) {
		if err := collateral.Put(dir, u, r); err != nil {
			t.Fatal(err)
		}
	}
	for name, src := range map[string]collateral.Source{"served": oasisPCS(t), "folder": collateral.Offline(dir)} {
		cl, err := Report(evidence.PlatformSGX, raw, nil, Options{Now: oasisAt, Collateral: src, SGX: accept})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if cl.Details["tcb_status"] != "SWHardeningNeeded" || cl.Details["qe_tcb_status"] != "UpToDate" || cl.Details["tcb_date"] == "" ||
			cl.Details["tcb_info_next_update"] != "2023-01-18T09:40:10Z" {
			t.Errorf("%s: details %v", name, cl.Details)
		}
	}

	tcbInfo := oasisFile(t, "tcb_info_v3_fmspc_00606A000000.json")
	tests := []struct {
		name string
		raw  []byte
		src  collateral.Source
		now  time.Time
		pol  SGXPolicy
		want string
	}{
		{name: "default policy (UpToDate only)", src: oasisPCS(t), want: "TCB info gives TCB status SWHardeningNeeded"},
		{name: "a month later", src: oasisPCS(t), now: oasisAt.AddDate(0, 1, 0), pol: accept, want: "fetch it again"},
		{name: "before the TCB info was issued", src: oasisPCS(t), now: oasisAt.AddDate(0, 0, -2), pol: accept, want: "fetch it again"},
		{name: "tampered TCB info", src: oasisCollateral(t, bytes.Replace(tcbInfo, []byte(`"tcbStatus":"SWHardeningNeeded"`), []byte(`"tcbStatus":"UpToDate"`), 1),
			oasisFile(t, "tcb_info_v3_fmspc_00606A000000_certs.pem")), pol: accept, want: "TCB info: the signature does not verify"},
		{name: "TCB info signed by another chain", src: oasisCollateral(t, tcbInfo, oasisFile(t, "tcb_info_v3_fmspc_00606A000000_certs_bad.pem")), pol: accept, want: "SGX TCB info"},
		{name: "no collateral for the FMSPC", src: collateral.Map{}, pol: accept, want: "HTTP 404"},
		{name: "tampered quote", raw: func() []byte {
			b := bytes.Clone(raw)
			b[sgxOffMREnclave] ^= 1
			return b
		}(), src: oasisPCS(t), pol: accept, want: "signature"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, now := raw, oasisAt
			if tc.raw != nil {
				r = tc.raw
			}
			if !tc.now.IsZero() {
				now = tc.now
			}
			_, err := Report(evidence.PlatformSGX, r, nil, Options{Now: now, Collateral: tc.src, SGX: tc.pol})
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("Report = %v, want one line saying %q", err, tc.want)
			}
		})
	}

	// The report data was chosen by whoever made the quote: bound to no
	// key, so an envelope around it is refused.
	env := &evidence.Envelope{Platform: evidence.PlatformSGX, Evidence: raw, Key: keyA(), WorkloadDigest: digestA}
	if _, err := Envelope(env, Options{Now: oasisAt}); err == nil || !strings.Contains(err.Error(), "report_data") {
		t.Errorf("real quote in an envelope: %v, want a report data refusal", err)
	}
}

// The registry's second real quote carries an encrypted PPID instead of
// the PCK chain (certification data type 3), which Castellan cannot
// verify offline: refused by the parser.
func TestRealSGXQuoteWithoutPCKChain(t *testing.T) {
	_, err := ParseSGXQuote(oasisFile(t, "quote_v3_ecdsa_p256_eppid.bin"))
	if err == nil || !strings.Contains(err.Error(), "certification data type 3") {
		t.Errorf("ParseSGXQuote = %v, want a certification data type refusal", err)
	}
}

// TestRealSGXSample verifies an SGX v3 quote from a real machine with the
// collateral Intel's PCS served for it, at a time both were valid. Both
// are outside vectors (internal/testvectors): skipped without them.
func TestRealSGXSample(t *testing.T) {
	raw := testvectors.Read(t, "sgx_quote_v3_dcapqvl.dat")
	col := realCollateral(t)
	at := time.Date(2025, 6, 20, 0, 0, 0, 0, time.UTC)
	accept := SGXPolicy{TCBStatuses: []string{"UpToDate", "ConfigurationAndSWHardeningNeeded"}}
	cl, err := Report(evidence.PlatformSGX, raw, nil, Options{Now: at, Collateral: pcsMap(t, col), SGX: accept})
	if err != nil {
		t.Fatal(err)
	}
	if cl.Simulated || cl.Debug || cl.Details["tcb_status"] != "ConfigurationAndSWHardeningNeeded" || cl.TCB["cpu_svn.0"] != 11 || cl.TCB["pce_svn"] != 15 ||
		!strings.HasPrefix(string(cl.ReportData[:]), "Hello, world!") {
		t.Errorf("claims %+v", cl)
	}
	// The policy's default accepts UpToDate only.
	if _, err := Report(evidence.PlatformSGX, raw, nil, Options{Now: at, Collateral: pcsMap(t, col)}); err == nil || !strings.Contains(err.Error(), "ConfigurationAndSWHardeningNeeded") {
		t.Errorf("default policy: %v, want a TCB status refusal", err)
	}
	// Through an offline collateral folder (the layout of package
	// collateral, which attest serve --offline reads).
	dir := t.TempDir()
	for u, r := range pcsMap(t, col) {
		if err := collateral.Put(dir, u, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Report(evidence.PlatformSGX, raw, nil, Options{Now: at, Collateral: collateral.Offline(dir), SGX: accept}); err != nil {
		t.Errorf("from the folder: %v", err)
	}
	// A month later the collateral is stale (the PCK CRL first).
	if _, err := Report(evidence.PlatformSGX, raw, nil, Options{Now: at.AddDate(0, 1, 0), Collateral: pcsMap(t, col), SGX: accept}); err == nil || !strings.Contains(err.Error(), "stale") {
		t.Errorf("stale collateral: %v", err)
	}
	// Tampered collateral.
	bad := *col
	bad.TCBInfo = strings.Replace(bad.TCBInfo, `"tcbStatus":"OutOfDate"`, `"tcbStatus":"UpToDate"`, 1)
	if _, err := Report(evidence.PlatformSGX, raw, nil, Options{Now: at, Collateral: pcsMap(t, &bad), SGX: accept}); err == nil || !strings.Contains(err.Error(), "signature") {
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

// A second real quote (an Occlum enclave, an outside vector), without
// collateral.
func TestRealSGXOcclumSample(t *testing.T) {
	raw := testvectors.Read(t, "sgx_quote_v3_occlum.dat")
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
	for _, b := range [][]byte{
		testvectors.OptionalModuleFile(f, oasisModule, oasisTestdata+oasisQuote),
		testvectors.Optional(f, "sgx_quote_v3_dcapqvl.dat"),
		testvectors.Optional(f, "sgx_quote_v3_occlum.dat"),
	} {
		if b != nil {
			f.Add(b)
		}
	}
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

// The SGX collateral is fetched from Intel's PCS v4 SGX URLs (which a
// PCCS rewrite and the cache see like TDX's), and a response without its
// issuer chain is refused.
func TestSGXCollateralURLs(t *testing.T) {
	rec := &recording{Source: oasisPCS(t)}
	raw := oasisFile(t, oasisQuote)
	if _, err := Report(evidence.PlatformSGX, raw, nil, Options{Now: oasisAt, Collateral: rec, SGX: SGXPolicy{TCBStatuses: []string{"UpToDate", "SWHardeningNeeded"}}}); err != nil {
		t.Fatal(err)
	}
	want := []string{"https://api.trustedservices.intel.com/sgx/certification/v4/tcb?fmspc=00606a000000", "https://api.trustedservices.intel.com/sgx/certification/v4/qe/identity",
		"https://api.trustedservices.intel.com/sgx/certification/v4/pckcrl?ca=platform&encoding=der", collateral.IntelRootCRLURL}
	if strings.Join(rec.urls, " ") != strings.Join(want, " ") {
		t.Errorf("fetched %v, want %v", rec.urls, want)
	}
	for _, u := range []string{collateral.SGXTCBInfoURL(oasisFMSPC), collateral.SGXQEIdentityURL()} {
		m := oasisPCS(t)
		m[u].Header = nil
		if _, err := Report(evidence.PlatformSGX, raw, nil, Options{Now: oasisAt, Collateral: m}); err == nil || !strings.Contains(err.Error(), "Issuer-Chain header") {
			t.Errorf("%s without its issuer chain: %v", u, err)
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

// BenchmarkVerifySGXCollateral is a real quote (the registry sample) with
// Intel's collateral: chain, QE report, quote, two collateral signatures,
// two CRLs.
func BenchmarkVerifySGXCollateral(b *testing.B) {
	raw := oasisFile(b, oasisQuote)
	opts := Options{Now: oasisAt, Collateral: oasisPCS(b), SGX: SGXPolicy{TCBStatuses: []string{"UpToDate", "SWHardeningNeeded"}}}
	for b.Loop() {
		if _, err := Report(evidence.PlatformSGX, raw, nil, opts); err != nil {
			b.Fatal(err)
		}
	}
}
