package kbs

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/castellan-dev/castellan/internal/tee/sim"
	"github.com/castellan-dev/castellan/internal/testvectors"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	sevverify "github.com/google/go-sev-guest/verify"
)

var (
	simOnce sync.Once
	simCA   *sim.CA
	simErr  error
)

// testCA is one in-memory simulation CA for the package's tests.
func testCA(t testing.TB) *sim.CA {
	t.Helper()
	simOnce.Do(func() { simCA, simErr = sim.New() })
	if simErr != nil {
		t.Fatal(simErr)
	}
	return simCA
}

// simSNP is a signed simulated report (version 3, Milan) and its
// endorsements (VCEK or VLEK, ASK or ASVK, ARK).
func simSNP(t testing.TB, o sim.SNPOptions) ([]byte, [][]byte) {
	t.Helper()
	var rd [64]byte
	copy(rd[:], "report data")
	if o.Measurement == nil {
		o.Measurement = bytes.Repeat([]byte{0x5a}, 48)
	}
	raw, end, err := testCA(t).SignSNP(rd, o)
	if err != nil {
		t.Fatal(err)
	}
	return raw, end
}

// TestSEVEvidenceRoundTrip writes simulated reports in the snp attester's
// form and reads them back: the same bytes (so the same signature checks)
// and the same endorsements, VCEK and VLEK alike.
func TestSEVEvidenceRoundTrip(t *testing.T) {
	for _, vlek := range []bool{false, true} {
		raw, end := simSNP(t, sim.SNPOptions{VLEK: vlek, GuestSVN: 7, HostData: []byte("host data")})
		js, err := MarshalTrusteeEvidence("snp", raw, end)
		if err != nil {
			t.Fatal(err)
		}
		for _, form := range []string{string(js),
			`{"primary_evidence":` + string(js) + `,"additional_evidence":""}`} {
			ev, err := ParseEvidence("snp", []byte(form))
			if err != nil {
				t.Fatalf("vlek %v: %v", vlek, err)
			}
			if !bytes.Equal(ev.Report, raw) {
				t.Errorf("vlek %v: the report changed in the round trip", vlek)
			}
			if len(ev.Endorsements) != 3 {
				t.Fatalf("vlek %v: %d endorsements", vlek, len(ev.Endorsements))
			}
			for i := range end {
				if !bytes.Equal(ev.Endorsements[i], end[i]) {
					t.Errorf("vlek %v: endorsement %d changed", vlek, i)
				}
			}
		}
		// The leaf's entry is named by the key that signed the report.
		var m struct {
			CertChain []struct {
				CertType string `json:"cert_type"`
			} `json:"cert_chain"`
		}
		if err := json.Unmarshal(js, &m); err != nil {
			t.Fatal(err)
		}
		want := []string{"VCEK", "ASK", "ARK"}
		if vlek {
			want[0] = "VLEK"
		}
		for i, e := range m.CertChain {
			if e.CertType != want[i] {
				t.Errorf("vlek %v: cert_chain[%d] is %s, want %s", vlek, i, e.CertType, want[i])
			}
		}
	}
}

// TestSEVFieldsMatchABI checks the JSON's fields against go-sev-guest's
// reading of the same binary report (an independent reading of the AMD
// ABI's offsets), and the JSON's shape: serde's names, byte arrays as
// arrays of numbers, None as null.
func TestSEVFieldsMatchABI(t *testing.T) {
	raw, _ := simSNP(t, sim.SNPOptions{GuestSVN: 9, VMPL: 2, HostData: []byte("hd"), Edit: func(r []byte) {
		for i := 0x10; i < 0x30; i++ { // family and image IDs
			r[i] = byte(i)
		}
		for i := 0xE0; i < 0x180; i++ { // ID and author key digests, report_id_ma
			r[i] = byte(i * 7)
		}
	}})
	r, err := reportToSEV(raw)
	if err != nil {
		t.Fatal(err)
	}
	p, err := abi.ReportToProto(raw)
	if err != nil {
		t.Fatal(err)
	}
	tcb := func(x sevTCB) uint64 {
		if x.FMC != nil {
			t.Fatal("fmc set on a Milan report")
		}
		v, _ := kds.ComposeTCBParts(kds.TCBParts{BlSpl: x.Bootloader, TeeSpl: x.TEE, SnpSpl: x.SNP, UcodeSpl: x.Microcode})
		return uint64(v)
	}
	u := func(x *uint8) byte {
		if x == nil {
			t.Fatal("CPUID field null in a version 3 report")
		}
		return *x
	}
	sig := append(append([]byte{}, r.Signature.R...), r.Signature.S...)
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"version", r.Version, p.GetVersion()},
		{"guest_svn", r.GuestSVN, p.GetGuestSvn()},
		{"policy", r.Policy, p.GetPolicy()},
		{"family_id", []byte(r.FamilyID), p.GetFamilyId()},
		{"image_id", []byte(r.ImageID), p.GetImageId()},
		{"vmpl", r.VMPL, p.GetVmpl()},
		{"sig_algo", r.SigAlgo, p.GetSignatureAlgo()},
		{"current_tcb", tcb(r.CurrentTCB), p.GetCurrentTcb()},
		{"plat_info", r.PlatInfo, p.GetPlatformInfo()},
		{"key_info", r.KeyInfo, p.GetSignerInfo()},
		{"report_data", []byte(r.ReportData), p.GetReportData()},
		{"measurement", []byte(r.Measurement), p.GetMeasurement()},
		{"host_data", []byte(r.HostData), p.GetHostData()},
		{"id_key_digest", []byte(r.IDKeyDigest), p.GetIdKeyDigest()},
		{"author_key_digest", []byte(r.AuthorKeyDigest), p.GetAuthorKeyDigest()},
		{"report_id", []byte(r.ReportID), p.GetReportId()},
		{"report_id_ma", []byte(r.ReportIDMA), p.GetReportIdMa()},
		{"reported_tcb", tcb(r.ReportedTCB), p.GetReportedTcb()},
		{"cpuid", abi.FmsToCpuid1Eax(u(r.CPUIDFamID), u(r.CPUIDModID), u(r.CPUIDStep)), p.GetCpuid1EaxFms()},
		{"chip_id", []byte(r.ChipID), p.GetChipId()},
		{"committed_tcb", tcb(r.CommittedTCB), p.GetCommittedTcb()},
		{"current", [3]uint32{uint32(r.Current.Major), uint32(r.Current.Minor), uint32(r.Current.Build)},
			[3]uint32{p.GetCurrentMajor(), p.GetCurrentMinor(), p.GetCurrentBuild()}},
		{"committed", [3]uint32{uint32(r.Committed.Major), uint32(r.Committed.Minor), uint32(r.Committed.Build)},
			[3]uint32{p.GetCommittedMajor(), p.GetCommittedMinor(), p.GetCommittedBuild()}},
		{"launch_tcb", tcb(r.LaunchTCB), p.GetLaunchTcb()},
		{"signature", sig, p.GetSignature()[:144]},
	} {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("%s: %v, go-sev-guest reads %v", c.name, c.got, c.want)
		}
	}
	if r.LaunchMitVector != nil || r.CurrentMitVector != nil {
		t.Error("mitigation vectors set in a version 3 report")
	}

	js, err := json.Marshal(sevEvidence{Report: *r})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`{"attestation_report":{"version":3,"guest_svn":9,`,
		`"vmpl":2,"sig_algo":1,"current_tcb":{"fmc":null,"bootloader":4,"tee":0,"snp":22,"microcode":213},"plat_info":1,"key_info":0,"report_data":[114,101,112,`,
		`"host_data":[104,100,0,`,
		`"cpuid_fam_id":25,"cpuid_mod_id":1,"cpuid_step":1,"chip_id":[`,
		`"current":{"major":1,"minor":55,"build":21},`,
		`"launch_mit_vector":null,"current_mit_vector":null,"signature":{"r":[`,
		`]}},"cert_chain":null}`,
	} {
		if !bytes.Contains(js, []byte(want)) {
			t.Errorf("the JSON lacks %s", want)
		}
	}
}

// TestSEVLayouts round-trips the layouts the sev crate tells apart:
// version 2 (no CPUID; Turin told by its 8-byte chip ID), Turin's TCB
// layout with fmc, and version 5's mitigation vectors.
func TestSEVLayouts(t *testing.T) {
	le := binary.LittleEndian
	for _, c := range []struct {
		name string
		edit func(r []byte)
		want string // in the JSON
	}{
		{"v2 genoa-like", func(r []byte) {
			le.PutUint32(r, 2)
			clear(r[0x188:0x18B])
		}, `"cpuid_fam_id":null,"cpuid_mod_id":null,"cpuid_step":null`},
		{"v2 turin-like", func(r []byte) {
			le.PutUint32(r, 2)
			clear(r[0x188:0x18B])
			clear(r[0x1A8:0x1E0])
			for _, off := range []int{0x38, 0x180, 0x1E0, 0x1F0} {
				copy(r[off:off+8], []byte{1, 2, 3, 4, 0, 0, 0, 213}) // fmc, bl, tee, snp, ..., ucode
			}
		}, `"reported_tcb":{"fmc":1,"bootloader":2,"tee":3,"snp":4,"microcode":213}`},
		{"v3 turin", func(r []byte) {
			r[0x188], r[0x189] = 0x1A, 0x02
			for _, off := range []int{0x38, 0x180, 0x1E0, 0x1F0} {
				copy(r[off:off+8], []byte{9, 8, 7, 6, 0, 0, 0, 5})
			}
		}, `"launch_tcb":{"fmc":9,"bootloader":8,"tee":7,"snp":6,"microcode":5}`},
		{"v5 genoa", func(r []byte) {
			le.PutUint32(r, 5)
			r[0x189] = 0x11
			le.PutUint64(r[0x1F8:], 0x0102030405060708)
			le.PutUint64(r[0x200:], 3)
		}, `"launch_mit_vector":72623859790382856,"current_mit_vector":3`},
	} {
		raw, end := simSNP(t, sim.SNPOptions{Edit: c.edit})
		js, err := MarshalTrusteeEvidence("snp", raw, end)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !strings.Contains(string(js), c.want) {
			t.Errorf("%s: the JSON lacks %s", c.name, c.want)
		}
		ev, err := ParseEvidence("snp", js)
		if err != nil || !bytes.Equal(ev.Report, raw) {
			t.Errorf("%s: round trip: %v", c.name, err)
		}
	}
}

// TestRealSEVEvidence reads evidence a real guest-components sent from a
// Genoa machine: the report rebuilt from the JSON carries AMD's signature
// (its VCEK from cert_chain verifies it, and not once a byte changed), and
// writing it back gives the crate's JSON byte for byte (the older crate
// that made it wrote no mitigation vectors).
func TestRealSEVEvidence(t *testing.T) {
	js := testvectors.Read(t, "snp_evidence_guest_components_genoa.json")
	ev, err := ParseEvidence("snp", js)
	if err != nil {
		t.Fatal(err)
	}
	if len(ev.Endorsements) != 1 {
		t.Fatalf("%d endorsements, want the VCEK", len(ev.Endorsements))
	}
	vcek, err := x509.ParseCertificate(ev.Endorsements[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := sevverify.SnpReportSignature(ev.Report, vcek); err != nil {
		t.Fatalf("AMD's signature over the rebuilt report: %v", err)
	}
	again, err := MarshalTrusteeEvidence("snp", ev.Report, ev.Endorsements)
	if err != nil {
		t.Fatal(err)
	}
	again = bytes.Replace(again, []byte(`"launch_mit_vector":null,"current_mit_vector":null,`), nil, 1)
	if !bytes.Equal(again, bytes.TrimSpace(js)) {
		t.Error("written back, the JSON differs from the crate's")
	}
	ev.Report[snpOffMeasurement] ^= 1
	if err := sevverify.SnpReportSignature(ev.Report, vcek); err == nil {
		t.Error("a changed report verified")
	}
}

// editSEV returns the JSON of good with edit applied to its generic form.
func editSEV(t *testing.T, good []byte, edit func(m map[string]any)) string {
	t.Helper()
	var m map[string]any
	d := json.NewDecoder(bytes.NewReader(good))
	d.UseNumber()
	if err := d.Decode(&m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSEVEvidenceRefusals(t *testing.T) {
	raw, end := simSNP(t, sim.SNPOptions{})
	good, err := MarshalTrusteeEvidence("snp", raw, end)
	if err != nil {
		t.Fatal(err)
	}
	rep := func(m map[string]any) map[string]any { return m["attestation_report"].(map[string]any) }
	chain := func(m map[string]any) []any { return m["cert_chain"].([]any) }
	entry := func(m map[string]any, i int) map[string]any { return chain(m)[i].(map[string]any) }
	set := func(f func(m map[string]any) map[string]any, k string, v any) func(map[string]any) {
		return func(m map[string]any) { f(m)[k] = v }
	}
	del := func(f func(m map[string]any) map[string]any, k string) func(map[string]any) {
		return func(m map[string]any) { delete(f(m), k) }
	}
	tcb := func(m map[string]any) map[string]any { return rep(m)["reported_tcb"].(map[string]any) }
	sig := func(m map[string]any) map[string]any { return rep(m)["signature"].(map[string]any) }
	bytesOf := func(n int) []any {
		b := make([]any, n)
		for i := range b {
			b[i] = 0
		}
		return b
	}
	for _, c := range []struct {
		name string
		edit func(m map[string]any)
		want string // in the error
	}{
		{"unknown top field", set(func(m map[string]any) map[string]any { return m }, "extra", 1), "unknown field"},
		{"unknown report field", set(rep, "vcek", 1), "unknown field"},
		{"unknown tcb field", set(tcb, "spl4", 0), "unknown field"},
		{"unknown signature field", set(sig, "t", bytesOf(72)), "unknown field"},
		{"no attestation_report", del(func(m map[string]any) map[string]any { return m }, "attestation_report"), "not a form accepted for snp"},
		{"missing report field", del(rep, "host_data"), `"host_data" is missing`},
		{"missing tcb field", del(tcb, "bootloader"), `"bootloader" is missing`},
		{"missing option where needed", del(rep, "cpuid_step"), "cpuid_step is null in a version 3 report"},
		{"null report", set(func(m map[string]any) map[string]any { return m }, "attestation_report", nil), "null"},
		{"null measurement", set(rep, "measurement", nil), `"measurement" is null`},
		{"null policy", set(rep, "policy", nil), `"policy" is null`},
		{"short measurement", set(rep, "measurement", bytesOf(47)), "measurement is 47 bytes, want 48"},
		{"long report_data", set(rep, "report_data", bytesOf(65)), "report_data is 65 bytes, want 64"},
		{"short signature r", set(sig, "r", bytesOf(48)), "signature.r is 48 bytes, want 72"},
		{"byte over 255", set(rep, "host_data", append(bytesOf(31), 256)), "0 to 255"},
		{"negative byte", set(rep, "host_data", append(bytesOf(31), -1)), "0 to 255: element 31"},
		{"null byte", set(rep, "host_data", append(bytesOf(31), nil)), "0 to 255: element 31"},
		{"float byte", set(rep, "host_data", append(bytesOf(31), 1.5)), "0 to 255: element 31"},
		{"exponent byte", set(rep, "host_data", append(bytesOf(31), json.Number("1e2"))), "0 to 255: element 31"},
		{"huge byte", set(rep, "host_data", append(bytesOf(31), json.Number("99999999999999999999999"))), "0 to 255: element 31"},
		{"base64 bytes", set(rep, "host_data", "AAAA"), "JSON array of numbers"},
		{"u32 overflow", set(rep, "vmpl", 1<<32), "uint32"},
		{"fractional", set(rep, "guest_svn", 1.5), "guest_svn"},
		{"fmc on milan", set(tcb, "fmc", 1), "fmc is set but the report is not from a Turin processor"},
		{"cpuid null in v3", set(rep, "cpuid_step", nil), "cpuid_step is null in a version 3 report"},
		{"cpuid in v2", set(rep, "version", 2), "cpuid_fam_id is set in a version 2 report"},
		{"mit vector in v3", set(rep, "launch_mit_vector", 1), "launch_mit_vector is set in a version 3 report"},
		{"version 1", set(rep, "version", 1), "report version 1 is not supported"},
		{"unknown cpu", set(rep, "cpuid_fam_id", 0x17), "not an SEV-SNP processor"},
		{"chain without vcek", func(m map[string]any) { m["cert_chain"] = chain(m)[1:] }, "no VCEK entry"},
		{"vlek for a vcek report", set(func(m map[string]any) map[string]any { return entry(m, 0) }, "cert_type", "VLEK"), "holds a VLEK but the report is signed by the VCEK"},
		{"two vceks", set(func(m map[string]any) map[string]any { return entry(m, 1) }, "cert_type", "VCEK"), "a second VCEK"},
		{"empty entry", set(func(m map[string]any) map[string]any { return entry(m, 2) }, "cert_type", "Empty"), "terminator"},
		{"unknown cert type", set(func(m map[string]any) map[string]any { return entry(m, 2) }, "cert_type", "PEK"), `cert_type: "PEK" is not one of`},
		{"other not a guid", set(func(m map[string]any) map[string]any { return entry(m, 2) }, "cert_type", map[string]any{"OTHER": "xyz"}), "not a GUID"},
		{"other with a known guid", set(func(m map[string]any) map[string]any { return entry(m, 2) }, "cert_type", map[string]any{"OTHER": "63da758d-e664-4564-adc5-f4b93be8accd"}), "GUID of VCEK"},
		{"empty cert data", set(func(m map[string]any) map[string]any { return entry(m, 0) }, "data", []any{}), "VCEK with no data"},
		{"cert data as base64", set(func(m map[string]any) map[string]any { return entry(m, 0) }, "data", "MIIB"), "JSON array of numbers"},
		{"unknown entry field", set(func(m map[string]any) map[string]any { return entry(m, 0) }, "guid", "x"), "unknown field"},
	} {
		in := editSEV(t, good, c.edit)
		_, err := ParseEvidence("snp", []byte(in))
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "tee-evidence: ") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %q, want one line with %q", c.name, err, c.want)
		}
	}

	// CRL and OTHER entries are skipped, as Trustee's verifier skips them;
	// a null chain gives no endorsements (the verifier may fetch the VCEK).
	ok := editSEV(t, good, func(m map[string]any) {
		m["cert_chain"] = append(chain(m), map[string]any{"cert_type": "CRL", "data": []any{1}},
			map[string]any{"cert_type": map[string]any{"OTHER": "ecae0c0f-9502-43b1-afa2-0ae2e0d565b6"}, "data": []any{2}})
	})
	if ev, err := ParseEvidence("snp", []byte(ok)); err != nil || len(ev.Endorsements) != 3 {
		t.Errorf("CRL and OTHER entries: %v", err)
	}
	noChain := editSEV(t, good, func(m map[string]any) { m["cert_chain"] = nil })
	if ev, err := ParseEvidence("snp", []byte(noChain)); err != nil || ev.Endorsements != nil || !bytes.Equal(ev.Report, raw) {
		t.Errorf("null cert_chain: %v", err)
	}
	// serde reads a missing Option as None: sev crates before version 5
	// reports wrote no mitigation vectors, and a chain may be left out.
	older := editSEV(t, good, func(m map[string]any) {
		delete(m, "cert_chain")
		delete(rep(m), "launch_mit_vector")
		delete(rep(m), "current_mit_vector")
		for _, k := range []string{"current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"} {
			delete(rep(m)[k].(map[string]any), "fmc")
		}
	})
	if ev, err := ParseEvidence("snp", []byte(older)); err != nil || ev.Endorsements != nil || !bytes.Equal(ev.Report, raw) {
		t.Errorf("an older crate's JSON: %v", err)
	}
	// Without an ASK the ARK has no place among positional endorsements.
	noASK := editSEV(t, good, func(m map[string]any) { c := chain(m); m["cert_chain"] = []any{c[0], c[2]} })
	if ev, err := ParseEvidence("snp", []byte(noASK)); err != nil || len(ev.Endorsements) != 1 {
		t.Errorf("chain without ASK: %v", err)
	}
	// The form is the snp attester's only: a tdx session refuses it.
	if _, err := ParseEvidence("tdx", good); err == nil {
		t.Error("snp attester form accepted in a tdx session")
	}
}

// TestMarshalTrusteeRefusals: reports the JSON cannot carry exactly are
// refused rather than sent as a report that would not verify.
func TestMarshalTrusteeRefusals(t *testing.T) {
	raw, end := simSNP(t, sim.SNPOptions{})
	for _, c := range []struct {
		name string
		edit func(r []byte)
		end  [][]byte
		want string
	}{
		{"reserved byte", func(r []byte) { r[0x4C] = 1 }, end, "byte 0x4c is reserved but set"},
		{"reserved tcb byte", func(r []byte) { r[0x182] = 1 }, end, "byte 0x182 is reserved but set"},
		{"signature tail", func(r []byte) { r[0x2A0+200] = 1 }, end, "byte 0x368 is reserved but set"},
		{"short", nil, end, "want 1184"},
		{"v2 masked chip", func(r []byte) { binary.LittleEndian.PutUint32(r, 2); clear(r[0x188:0x18B]); clear(r[0x1A0:0x1E0]) }, end, "masked chip ID"},
		{"signer 7", func(r []byte) { binary.LittleEndian.PutUint32(r[0x48:], 7<<2) }, end, "not the VCEK or VLEK"},
		{"four endorsements", func([]byte) {}, append(end, end[0]), "at most 3"},
	} {
		r := bytes.Clone(raw)
		if c.edit != nil {
			c.edit(r)
		} else {
			r = r[:100]
		}
		if _, err := MarshalTrusteeEvidence("snp", r, c.end); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	if _, err := MarshalTrusteeEvidence("tdx", []byte("q"), end); err == nil {
		t.Error("tdx with endorsements accepted")
	}
	if _, err := MarshalTrusteeEvidence("nil", []byte("q"), nil); err == nil {
		t.Error("platform nil accepted")
	}
}

// TestTrusteeForms: the tdx, sgx and cca attester forms as
// MarshalTrusteeEvidence writes them and ParseEvidence reads them.
func TestTrusteeForms(t *testing.T) {
	for _, c := range []struct{ platform, want string }{
		{"tdx", `{"quote":"UVVPVEU=","cc_eventlog":null}`},
		{"sgx", `{"quote":"UVVPVEU="}`},
		{"cca", `{"token":[81,85,79,84,69]}`},
	} {
		js, err := MarshalTrusteeEvidence(c.platform, []byte("QUOTE"), nil)
		if err != nil || string(js) != c.want {
			t.Errorf("%s: %s, %v; want %s", c.platform, js, err, c.want)
			continue
		}
		ev, err := ParseEvidence(c.platform, js)
		if err != nil || string(ev.Report) != "QUOTE" {
			t.Errorf("%s: %v", c.platform, err)
		}
	}
	for name, c := range map[string]struct{ platform, in string }{
		"sgx cc_eventlog":   {"sgx", `{"quote":"UVVPVEU=","cc_eventlog":null}`},
		"sgx empty quote":   {"sgx", `{"quote":""}`},
		"cca base64":        {"cca", `{"token":"UVVPVEU="}`},
		"cca byte over 255": {"cca", `{"token":[300]}`},
		"cca empty":         {"cca", `{"token":[]}`},
		"cca extra":         {"cca", `{"token":[1],"x":1}`},
		"token for sgx":     {"sgx", `{"token":[1]}`},
		"tdx eventlog":      {"tdx", `{"quote":"UVVPVEU=","cc_eventlog":"!!"}`},
	} {
		if _, err := ParseEvidence(c.platform, []byte(c.in)); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !strings.HasPrefix(err.Error(), "tee-evidence: ") {
			t.Errorf("%s: error %q", name, err)
		}
	}
}

// FuzzParseSEVEvidence's seed corpus (testdata/fuzz) holds simulated
// reports in the snp attester's form: VCEK and VLEK chains, no chain, and
// a Turin version 5 report; they were written by MarshalTrusteeEvidence.
// The real guest-components evidence is a seed too when it is at hand.
func FuzzParseSEVEvidence(f *testing.F) {
	if b := testvectors.Optional(f, "snp_evidence_guest_components_genoa.json"); b != nil {
		f.Add(b)
	}
	f.Add([]byte(`{"attestation_report":{},"cert_chain":[{"cert_type":{"OTHER":"x"},"data":[1]}]}`))
	// What parses maps back to the same JSON's report: a report written
	// again reads back to identical bytes and endorsements.
	f.Fuzz(func(t *testing.T, b []byte) {
		report, end, err := parseSEVEvidence(b)
		if err != nil {
			return
		}
		if len(report) != snpReportSize {
			t.Fatalf("report of %d bytes", len(report))
		}
		again, err := marshalSEVEvidence(report, end)
		if err != nil {
			return // e.g. a signing key that is neither VCEK nor VLEK, with no chain
		}
		r2, end2, err := parseSEVEvidence(again)
		if err != nil || !bytes.Equal(r2, report) || len(end2) != len(end) {
			t.Fatalf("round trip: %v", err)
		}
		for i := range end {
			if !bytes.Equal(end[i], end2[i]) {
				t.Fatalf("endorsement %d changed", i)
			}
		}
	})
}

func BenchmarkParseSEVEvidence(b *testing.B) {
	raw, end := simSNP(b, sim.SNPOptions{})
	js, err := MarshalTrusteeEvidence("snp", raw, end)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(js)))
	for b.Loop() {
		if _, err := ParseEvidence("snp", js); err != nil {
			b.Fatal(err)
		}
	}
}
