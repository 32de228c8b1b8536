package verify

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/tee/sim"
	tdxtesting "github.com/google/go-tdx-guest/testing"
)

// intelSample is Intel's collateral for the sample quote as go-tdx-guest
// ships it (testing.TestGetter: TCB info, QE identity, PCK CRL, root CA
// CRL, with the issuer-chain headers PCS sends), as a collateral source
// that never touches the network.
func intelSample() collateral.Map {
	m := collateral.Map{}
	for url, r := range tdxtesting.TestGetter.Responses {
		m[url] = &collateral.Response{Header: r.Header, Body: r.Body}
	}
	return m
}

func sampleQuote(t *testing.T) []byte {
	raw := readTestdata(t, "tdx_spr_e4_quote.dat")
	return raw[:0x27c+binary.LittleEndian.Uint32(raw[0x278:])]
}

// TestRealTDXCollateral verifies the sample quote with Intel's sample
// collateral through go-tdx-guest's collateral code. The sample TCB info
// (Intel's, signed) lists TCB levels above the sample quote's TEE_TCB_SVN
// (go-tdx-guest's own test expects the same), so the quote is refused at
// the TCB status after every signature, CRL and date check passed; a
// collateral problem is refused earlier, as collateral. The accepting path
// is TestSimTDXCollateral's, with the simulation CA's collateral.
func TestRealTDXCollateral(t *testing.T) {
	raw := sampleQuote(t)
	at := time.Date(2023, time.July, 1, 1, 0, 0, 0, time.UTC) // within the sample collateral's validity
	opts := Options{Now: at, Collateral: intelSample(), TDX: TDXPolicy{AllowSEPTVE: true}}
	refused := func(name string, o Options, check, want string) {
		t.Helper()
		_, err := Report(evidence.PlatformTDX, raw, nil, o)
		var ve *Error
		if !errors.As(err, &ve) || ve.Check != check || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want a %s refusal naming %q", name, err, check, want)
		}
	}
	refused("sample TCB below Intel's levels", opts, CheckTCBStatus, "below every level")
	// Collateral past its next update.
	late := opts
	late.Now = time.Date(2023, time.July, 20, 0, 0, 0, 0, time.UTC)
	refused("expired TCB info", late, CheckCollateral, "expired")
	for _, url := range []string{
		"https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=50806f000000",
		"https://api.trustedservices.intel.com/tdx/certification/v4/qe/identity",
		"https://api.trustedservices.intel.com/sgx/certification/v4/pckcrl?ca=platform&encoding=der",
		"https://certificates.trustedservices.intel.com/IntelSGXRootCA.der",
	} {
		missing := intelSample()
		delete(missing, url)
		o := opts
		o.Collateral = missing
		refused("missing "+url, o, CheckCollateral, "")
	}
	// A TCB info whose body was changed no longer verifies.
	tampered := intelSample()
	tcbURL := "https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=50806f000000"
	body := strings.Replace(string(tampered[tcbURL].Body), `"tcbStatus":"OutOfDate"`, `"tcbStatus":"UpToDate"`, 1)
	tampered[tcbURL] = &collateral.Response{Header: tampered[tcbURL].Header, Body: []byte(body)}
	o := opts
	o.Collateral = tampered
	refused("tampered TCB info", o, CheckCollateral, "tcbInfo")
	// Issuer chain header missing.
	noHeader := intelSample()
	noHeader[tcbURL] = &collateral.Response{Body: noHeader[tcbURL].Body}
	o.Collateral = noHeader
	refused("TCB info without its issuer chain", o, CheckCollateral, "Tcb-Info-Issuer-Chain")
}

// TestSimTDXCollateral runs simulated TDX quotes through the same
// collateral code as real ones, with the collateral the simulation CA
// publishes (signed under its root), and the policy's TCB status decision.
func TestSimTDXCollateral(t *testing.T) {
	c, other := ca(t, testCA), ca(t, otherCA)
	coll, err := c.Collateral()
	if err != nil {
		t.Fatal(err)
	}
	opts := trusting(c)
	opts.SimCollateral = coll
	cl, err := Envelope(simEnvelope(t, c, evidence.PlatformTDX, simOpts{}), opts)
	if err != nil {
		t.Fatal(err)
	}
	if d := cl.Details; d["collateral"] != "verified" || d["tcb_status"] != "UpToDate" || d["qe_tcb_status"] != "UpToDate" || d["tcb_info_next_update"] == "" || d["td_attributes"] != "0x10000000" {
		t.Errorf("details %v", d)
	}
	svn := func(module byte) *[16]byte { v := sim.DefaultTeeTCBSVN; v[0] = module; return &v }
	qesvn := uint16(7)
	revoking, err := c.RevokingCollateral()
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.Collateral()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		tdx    sim.TDXOptions
		src    collateral.Source
		check  string
		want   string
		accept []string // TCB statuses under which it is accepted
	}{
		{"module SWHardeningNeeded", sim.TDXOptions{TeeTCBSVN: svn(4)}, coll, CheckTCBStatus, "TCB status SWHardeningNeeded", []string{"UpToDate", "SWHardeningNeeded"}},
		{"module ConfigurationNeeded", sim.TDXOptions{TeeTCBSVN: svn(3)}, coll, CheckTCBStatus, "ConfigurationNeeded", []string{"ConfigurationNeeded", "UpToDate"}},
		{"module Revoked", sim.TDXOptions{TeeTCBSVN: svn(2)}, coll, CheckTCBStatus, "TCB status Revoked", nil},
		{"module OutOfDate", sim.TDXOptions{TeeTCBSVN: svn(1)}, coll, CheckTCBStatus, "TCB status OutOfDate", []string{"UpToDate", "OutOfDate"}},
		{"QE OutOfDate", sim.TDXOptions{QESVN: &qesvn}, coll, CheckTCBStatus, "QE identity gives TCB status OutOfDate", []string{"UpToDate", "OutOfDate"}},
		{"PCK and platform CA revoked", sim.TDXOptions{}, revoking, CheckCollateral, "revoked", nil},
		{"another CA's collateral", sim.TDXOptions{}, foreign, CheckCollateral, "", nil},
		{"no collateral in the folder", sim.TDXOptions{}, collateral.Map{}, CheckCollateral, "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := simEnvelope(t, c, evidence.PlatformTDX, simOpts{tdx: tc.tdx})
			o := trusting(c)
			o.SimCollateral = tc.src
			_, err := Envelope(env, o)
			var ve *Error
			if !errors.As(err, &ve) || ve.Check != tc.check || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a %s refusal naming %q", err, tc.check, tc.want)
			}
			if tc.accept != nil {
				o.TDX.TCBStatuses = tc.accept
				cl, err := Envelope(env, o)
				if err != nil {
					t.Fatalf("under TCB statuses %v: %v", tc.accept, err)
				}
				if cl.Details["collateral"] != "verified" {
					t.Errorf("details %v", cl.Details)
				}
			}
		})
	}
}

// TestTDXFields checks each decision on a TD quote's own fields.
func TestTDXFields(t *testing.T) {
	c := ca(t, testCA)
	const body = 0x30
	set := func(off int, b byte) func([]byte) {
		return func(q []byte) {
			for i := 0; i < 48; i++ {
				q[body+off+i] = b
			}
		}
	}
	v48 := func(b byte) []byte { return bytes.Repeat([]byte{b}, 48) }
	noSEPT, migratable := uint64(0), uint64(1<<28|1<<29)
	tests := []struct {
		name   string
		tdx    sim.TDXOptions
		policy TDXPolicy
		want   string
		allow  *TDXPolicy
	}{
		{"no SEPT_VE_DISABLE", sim.TDXOptions{Attributes: &noSEPT}, TDXPolicy{}, "SEPT_VE_DISABLE", &TDXPolicy{AllowSEPTVE: true}},
		{"migratable", sim.TDXOptions{Attributes: &migratable}, TDXPolicy{}, "MIGRATABLE", &TDXPolicy{AllowMigratable: true}},
		{"RTMR2 other than expected", sim.TDXOptions{Edit: set(0x1A8, 0x22)}, TDXPolicy{RTMRs: [4][]byte{2: v48(0x33)}}, "RTMR2", &TDXPolicy{RTMRs: [4][]byte{2: v48(0x22)}}},
		{"MRCONFIGID other than expected", sim.TDXOptions{Edit: set(0xB8, 1)}, TDXPolicy{MRConfigID: v48(2)}, "MRCONFIGID", &TDXPolicy{MRConfigID: v48(1)}},
		{"MROWNER other than expected", sim.TDXOptions{}, TDXPolicy{MROwner: v48(2)}, "MROWNER", &TDXPolicy{MROwner: v48(0)}},
		{"MROWNERCONFIG other than expected", sim.TDXOptions{Edit: set(0x118, 9)}, TDXPolicy{MROwnerConfig: v48(0)}, "MROWNERCONFIG", nil},
		{"XFAM other than expected", sim.TDXOptions{}, TDXPolicy{XFAM: []byte{3, 0, 0, 0, 0, 0, 0, 0}}, "XFAM", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := simEnvelope(t, c, evidence.PlatformTDX, simOpts{tdx: tc.tdx})
			o := trusting(c)
			o.TDX = tc.policy
			_, err := Envelope(env, o)
			var ve *Error
			if !errors.As(err, &ve) || ve.Check != CheckTDFields || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a %s refusal naming %q", err, CheckTDFields, tc.want)
			}
			if tc.allow != nil {
				o.TDX = *tc.allow
				cl, err := Envelope(env, o)
				if err != nil {
					t.Fatalf("under a policy that allows it: %v", err)
				}
				if tc.name == "RTMR2 other than expected" && cl.Details["rtmr2"] != strings.Repeat("22", 48) {
					t.Errorf("details %v", cl.Details)
				}
			}
		})
	}
}

// FuzzTDXCollateral feeds random TCB info and QE identity documents (the
// JSON that Intel's PCS, a PCCS or a collateral folder hands the verifier)
// through the collateral path: it must never panic, and a document whose
// signed part was changed must never be accepted, so whatever is accepted
// still gives the genuine status.
func FuzzTDXCollateral(f *testing.F) {
	c := ca(f, testCA)
	coll, err := c.Collateral()
	if err != nil {
		f.Fatal(err)
	}
	env := simEnvelope(f, c, evidence.PlatformTDX, simOpts{})
	var tcbURL, qeURL string
	for u := range coll {
		switch {
		case strings.Contains(u, "/tcb?"):
			tcbURL = u
		case strings.HasSuffix(u, "/qe/identity"):
			qeURL = u
		}
	}
	f.Add(false, coll[tcbURL].Body)
	f.Add(true, coll[qeURL].Body)
	f.Add(false, []byte(`{"tcbInfo":{},"signature":"00"}`))
	f.Fuzz(func(t *testing.T, qe bool, body []byte) {
		m := collateral.Map{}
		for u, r := range coll {
			m[u] = r
		}
		u := tcbURL
		if qe {
			u = qeURL
		}
		m[u] = &collateral.Response{Header: coll[u].Header, Body: body}
		o := trusting(c)
		o.SimCollateral = m
		cl, err := Envelope(env, o)
		if err != nil {
			var ve *Error
			if !errors.As(err, &ve) {
				t.Fatalf("not a *verify.Error: %v", err)
			}
			return
		}
		if cl.Details["tcb_status"] != "UpToDate" || cl.Details["qe_tcb_status"] != "UpToDate" {
			t.Fatalf("accepted with details %v", cl.Details)
		}
	})
}

// TestTDXUnderDebugGroup: TDATTRIBUTES bits 7:0 are the TUD ("TD under
// debug") group, of which DEBUG (bit 0) is one; the TDX module ABI says a TD
// with any of them set is under debug. A quote with only another TUD bit set
// must claim Debug, which the policy refuses, as it does for bit 0.
func TestTDXUnderDebugGroup(t *testing.T) {
	c := ca(t, testCA)
	for _, bit := range []uint{0, 1, 7} {
		attrs := uint64(1<<28 | 1<<bit) // SEPT_VE_DISABLE and one TUD bit
		cl, err := Envelope(simEnvelope(t, c, evidence.PlatformTDX, simOpts{tdx: sim.TDXOptions{Attributes: &attrs}}), trusting(c))
		if err != nil {
			t.Fatalf("TUD bit %d: %v", bit, err)
		}
		if !cl.Debug {
			t.Errorf("TUD bit %d set: claims say not under debug", bit)
		}
	}
	attrs := uint64(1 << 28)
	if cl, err := Envelope(simEnvelope(t, c, evidence.PlatformTDX, simOpts{tdx: sim.TDXOptions{Attributes: &attrs}}), trusting(c)); err != nil || cl.Debug {
		t.Errorf("no TUD bit: debug %v, %v", cl != nil && cl.Debug, err)
	}
}
