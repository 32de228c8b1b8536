package sim

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	tdxabi "github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"
)

var shared = sync.OnceValues(New)

func testCA(t *testing.T) *CA {
	t.Helper()
	ca, err := shared()
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestLoadStoresOnce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sim")
	a, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, caFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", caFile, fi.Mode().Perm())
	}
	// A fresh read (another process) finds the same CA.
	b, err := loadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.RootsPEM(), b.RootsPEM()) {
		t.Error("reloading the CA changed its roots")
	}
	roots, err := LoadRoots(a.RootsPath())
	if err != nil {
		t.Fatal(err)
	}
	if len(roots) != 3 || !roots[0].Equal(a.Roots()[0]) || !roots[1].Equal(a.Roots()[1]) || !roots[2].Equal(a.CCAPlatformKey()) {
		t.Error("roots.pem does not hold the CA's roots")
	}
	// Signing keys survive the round trip: a reloaded CA signs for the same VCEK.
	_, e1, err := a.SignSNP([64]byte{}, SNPOptions{Measurement: make([]byte, 48)})
	if err != nil {
		t.Fatal(err)
	}
	_, e2, err := b.SignSNP([64]byte{}, SNPOptions{Measurement: make([]byte, 48)})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e1[1], e2[1]) || !bytes.Equal(e1[2], e2[2]) {
		t.Error("reloaded CA has another ASK or ARK")
	}
	_, v1, err := a.SignSNP([64]byte{}, SNPOptions{Measurement: make([]byte, 48), VLEK: true})
	if err != nil {
		t.Fatal(err)
	}
	_, v2, err := b.SignSNP([64]byte{}, SNPOptions{Measurement: make([]byte, 48), VLEK: true})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(v1[1], v2[1]) {
		t.Error("reloaded CA has another ASVK")
	}
}

// TestCAWithoutVLEK reads a CA stored before the VLEK chain existed: it
// still signs VCEK reports and says why it cannot sign VLEK ones.
func TestCAWithoutVLEK(t *testing.T) {
	old, err := decode(testCA(t).encode())
	if err != nil {
		t.Fatal(err)
	}
	old.snpASVK, old.asvkKey, old.vlekKey = nil, nil, nil
	back, err := decode(old.encode())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := back.SignSNP([64]byte{}, SNPOptions{}); err != nil {
		t.Error(err)
	}
	if _, _, err := back.SignSNP([64]byte{}, SNPOptions{VLEK: true}); err == nil || !strings.Contains(err.Error(), "no VLEK chain") {
		t.Errorf("VLEK signing with an old CA: %v", err)
	}
}

// TestConcurrentFirstStart runs several first starts at once, as separate
// processes would (loadOrCreate bypasses the in-process cache): all must end
// with the same CA and an intact file.
func TestConcurrentFirstStart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sim")
	const n = 4
	cas := make([]*CA, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { cas[i], errs[i] = loadOrCreate(dir) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if !bytes.Equal(cas[i].RootsPEM(), cas[0].RootsPEM()) {
			t.Fatalf("start %d got another CA", i)
		}
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

func TestCorruptCA(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, caFile), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o600)
	if _, err := loadOrCreate(dir); err == nil {
		t.Fatal("a corrupt ca.pem was accepted")
	} else if !strings.Contains(err.Error(), caFile) {
		t.Errorf("error %q does not name the file", err)
	}
}

func TestDefaultDir(t *testing.T) {
	t.Setenv("CASTELLAN_CONFIG_DIR", "/x/y")
	d, err := DefaultDir()
	if err != nil || d != "/x/y/sim" {
		t.Errorf("DefaultDir() = %q, %v; want /x/y/sim", d, err)
	}
}

// TestSNPLayout parses a simulated report with go-sev-guest's ABI code.
func TestSNPLayout(t *testing.T) {
	ca := testCA(t)
	rd := [64]byte{1, 2, 3}
	raw, end, err := ca.SignSNP(rd, SNPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != abi.ReportSize || len(end) != 3 {
		t.Fatalf("report %d bytes, %d endorsements", len(raw), len(end))
	}
	r, err := abi.ReportToProto(raw)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := abi.ParseSnpPolicy(r.GetPolicy())
	if err != nil {
		t.Fatal(err)
	}
	if pol.Debug {
		t.Error("the DEBUG policy bit is set by default")
	}
	if r.GetVersion() != 3 || !bytes.Equal(r.GetReportData(), rd[:]) || kds.ProductLineFromFms(r.GetCpuid1EaxFms()) != SNPProductLine {
		t.Errorf("report %v", r)
	}
	m, _ := Measurement()
	if !bytes.Equal(r.GetMeasurement(), m) {
		t.Error("measurement is not this executable's")
	}
	back, err := abi.ReportToAbiBytes(r)
	if err != nil || !bytes.Equal(back, raw) {
		t.Errorf("report does not survive the library's round trip: %v", err)
	}
	raw, _, err = ca.SignSNP(rd, SNPOptions{Debug: true})
	if err != nil {
		t.Fatal(err)
	}
	r, _ = abi.ReportToProto(raw)
	if pol, _ := abi.ParseSnpPolicy(r.GetPolicy()); !pol.Debug {
		t.Error("Debug option does not set the policy bit")
	}
	if _, _, err := ca.SignSNP(rd, SNPOptions{Measurement: []byte{1}}); err == nil {
		t.Error("a 1-byte measurement was accepted")
	}
	if _, _, err := ca.SignSNP(rd, SNPOptions{TCB: &SNPTCB{SNP: 200}}); err == nil {
		t.Error("an SNP SVN above 127 was accepted")
	}
}

// TestTDXLayout parses a simulated quote with go-tdx-guest's ABI code and
// re-encodes it: the nested size fields must be right for the bytes to
// come back identical.
func TestTDXLayout(t *testing.T) {
	ca := testCA(t)
	rd := [64]byte{9, 8, 7}
	raw, err := ca.SignTDX(rd, TDXOptions{Debug: true})
	if err != nil {
		t.Fatal(err)
	}
	q, err := tdxabi.QuoteToProto(raw)
	if err != nil {
		t.Fatal(err)
	}
	q4, ok := q.(*pb.QuoteV4)
	if !ok {
		t.Fatalf("quote is %T, want v4", q)
	}
	if len(q4.GetExtraBytes()) != 0 {
		t.Errorf("%d extra bytes", len(q4.GetExtraBytes()))
	}
	if !bytes.Equal(q4.GetTdQuoteBody().GetReportData(), rd[:]) || q4.GetTdQuoteBody().GetTdAttributes()[0]&1 != 1 {
		t.Errorf("body %v", q4.GetTdQuoteBody())
	}
	back, err := tdxabi.QuoteToAbiBytes(q4)
	if err != nil || !bytes.Equal(back, raw) {
		t.Errorf("quote does not survive the library's round trip: %v", err)
	}
	if n := len(ca.tdxPCK.Extensions); n != 6 {
		t.Errorf("PCK leaf has %d extensions, want 6", n)
	}
}

func TestSNPCertTable(t *testing.T) {
	_, end, err := testCA(t).SignSNP([64]byte{}, SNPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var tbl abi.CertTable
	if err := tbl.Unmarshal(SNPCertTable(end)); err != nil {
		t.Fatal(err)
	}
	for i, g := range []string{abi.VcekGUID, abi.AskGUID, abi.ArkGUID} {
		if b, err := tbl.GetByGUIDString(g); err != nil || !bytes.Equal(b, end[i]) {
			t.Errorf("entry %s: %v", g, err)
		}
	}
}

// A CA sent to a VM keep signs with the same keys as the original.
func TestMarshalPEMRoundTrip(t *testing.T) {
	ca := testCA(t)
	got, err := ParsePEM(ca.MarshalPEM())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.RootsPEM(), ca.RootsPEM()) || got.Dir != "" {
		t.Fatal("roots differ or the copy claims a folder")
	}
	if _, err := ParsePEM([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")); err == nil {
		t.Fatal("garbage accepted")
	}
}
