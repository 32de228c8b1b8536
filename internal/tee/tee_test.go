package tee

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/verify"
	"github.com/castellan-dev/castellan/internal/tee/sim"
	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"
	tdxclient "github.com/google/go-tdx-guest/client"
	tdxlabi "github.com/google/go-tdx-guest/client/linuxabi"
	tdxtest "github.com/google/go-tdx-guest/testing"
)

const digest = "sha256:3333333333333333333333333333333333333333333333333333333333333333"

var testCA = sync.OnceValues(sim.New)

func simCA(t testing.TB) *sim.CA {
	t.Helper()
	c, err := testCA()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func spki(t testing.TB) []byte {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(k.Public())
	return der
}

func TestNames(t *testing.T) {
	for _, n := range Names() {
		b, err := New(n)
		if err != nil {
			t.Fatal(err)
		}
		if b.Name() != n {
			t.Errorf("New(%q).Name() = %q", n, b.Name())
		}
	}
	_, err := Open("sev")
	if err == nil || !strings.Contains(err.Error(), "sim-snp") {
		t.Errorf("Open(sev) = %v, want an error listing the backends", err)
	}
}

func TestAutoNeverSimulates(t *testing.T) {
	b, err := Open(NameAuto)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(b.Name(), "sim-") {
		t.Fatalf("auto picked %s", b.Name())
	}
	// On a host without SEV-SNP or TDX, auto is nil.
	if NewSNP("", "").Available() != nil && NewTDX("", "").Available() != nil && b.Name() != NameNil {
		t.Errorf("auto picked %s on a host without a TEE", b.Name())
	}
}

func TestAttestVerifies(t *testing.T) {
	ca := simCA(t)
	key := spki(t)
	for _, b := range []Backend{Nil{}, NewSim(evidence.PlatformSNP, ca), NewSim(evidence.PlatformTDX, ca), NewSim(evidence.PlatformSGX, ca), NewSim(evidence.PlatformCCA, ca)} {
		t.Run(b.Name(), func(t *testing.T) {
			if err := b.Available(); err != nil {
				t.Fatal(err)
			}
			env, err := Attest(context.Background(), b, key, []byte("nonce"), digest)
			if err != nil {
				t.Fatal(err)
			}
			if env.Platform != b.Platform() {
				t.Errorf("platform %s, want %s", env.Platform, b.Platform())
			}
			wire, err := env.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			env, err = evidence.Parse(wire)
			if err != nil {
				t.Fatal(err)
			}
			cl, err := verify.Envelope(env, verify.Options{SimRoots: ca.Roots()})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(cl.Key, key) || cl.WorkloadDigest != digest || !cl.Insecure() {
				t.Errorf("claims %+v", cl)
			}
		})
	}
	if _, err := Attest(context.Background(), Nil{}, key, nil, "sha256:short"); err == nil {
		t.Error("Attest accepted a malformed digest")
	}
}

func TestSimUsesUserCA(t *testing.T) {
	t.Setenv("CASTELLAN_CONFIG_DIR", t.TempDir())
	b, err := Open(NameSimTDX)
	if err != nil {
		t.Fatal(err)
	}
	roots, path, err := SimRoots()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(path, os.Getenv("CASTELLAN_CONFIG_DIR")) {
		t.Errorf("roots at %s, not under CASTELLAN_CONFIG_DIR", path)
	}
	env, err := Attest(context.Background(), b, spki(t), nil, digest)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verify.Envelope(env, verify.Options{SimRoots: roots}); err != nil {
		t.Fatal(err)
	}
}

// fakeTSM is go-configfs-tsm's fake configfs whose report provider is a
// simulated SEV-SNP or TDX guest or Arm CCA realm: the outblob is a real-format report over
// the inblob, the auxblob the certificate table.
func fakeTSM(t *testing.T, ca *sim.CA, provider string) *faketsm.Client {
	rs := faketsm.Report611(0)
	base := rs.ReadAttr
	rs.ReadAttr = func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
		var rd [64]byte
		if in, ok := e.InAttrs["inblob"]; ok {
			copy(rd[:], in.Value)
		}
		switch attr {
		case "provider":
			return []byte(provider + "\n"), nil
		case "outblob":
			if provider == providerTdxGuest {
				return ca.SignTDX(rd, sim.TDXOptions{})
			}
			if provider == providerCCAGuest {
				return ca.SignCCA(rd, sim.CCAOptions{})
			}
			r, _, err := ca.SignSNP(rd, sim.SNPOptions{})
			return r, err
		case "auxblob":
			_, end, err := ca.SignSNP(rd, sim.SNPOptions{})
			return sim.SNPCertTable(end), err
		}
		return base(e, attr)
	}
	return &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": rs}}
}

func TestConfigfsTSM(t *testing.T) {
	ca := simCA(t)
	tests := []struct {
		b        interface{ Backend }
		provider string
		wantErr  string
	}{
		{NewSNP("", "").WithTSM(fakeTSM(t, ca, providerSevGuest)), providerSevGuest, ""},
		{NewTDX("", "").WithTSM(fakeTSM(t, ca, providerTdxGuest)), providerTdxGuest, ""},
		{NewSNP("", "").WithTSM(fakeTSM(t, ca, providerTdxGuest)), providerTdxGuest, "not an SEV-SNP guest"},
		{NewTDX("", "").WithTSM(fakeTSM(t, ca, "fake")), "fake", "not a TDX guest"},
		{NewCCA("").WithTSM(fakeTSM(t, ca, providerCCAGuest)), providerCCAGuest, ""},
		{NewCCA("").WithTSM(fakeTSM(t, ca, providerSevGuest)), providerSevGuest, "not an Arm CCA realm"},
	}
	for _, tc := range tests {
		t.Run(tc.b.Name()+"/"+tc.provider, func(t *testing.T) {
			err := tc.b.Available()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Available() = %v, want %q", err, tc.wantErr)
				}
				if _, _, err := tc.b.Evidence(context.Background(), [64]byte{}); err == nil {
					t.Error("Evidence from the wrong provider accepted")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			env, err := Attest(context.Background(), tc.b, spki(t), []byte("n"), digest)
			if err != nil {
				t.Fatal(err)
			}
			if tc.b.Platform() == evidence.PlatformSNP && len(env.Endorsements) != 3 {
				t.Errorf("%d endorsements from the auxblob, want 3", len(env.Endorsements))
			}
			cl, err := verify.Envelope(env, verify.Options{SimRoots: ca.Roots()})
			if err != nil {
				t.Fatal(err)
			}
			if cl.Platform != tc.b.Platform() {
				t.Errorf("claims %+v", cl)
			}
		})
	}
}

// TestKernelPaths checks the paths a real backend looks at, without fakes:
// what a host without a TEE reports, and that the paths are the ones given.
func TestKernelPaths(t *testing.T) {
	dir := t.TempDir()
	tsm := filepath.Join(dir, "tsm")
	dev := filepath.Join(dir, "sev-guest")
	err := NewSNP(tsm, dev).Available()
	if err == nil || !strings.Contains(err.Error(), tsm+"/report") || !strings.Contains(err.Error(), dev) {
		t.Errorf("Available() = %v, want it to name %s/report and %s", err, tsm, dev)
	}
	// A report directory that is not configfs: creating an entry yields no
	// generation attribute.
	os.MkdirAll(filepath.Join(tsm, "report"), 0o755)
	if err := NewTDX(tsm, dev).Available(); err == nil {
		t.Error("a plain directory was taken for configfs-tsm")
	}
	// A device node that is not a SEV guest: open works, the ioctl fails.
	os.RemoveAll(tsm)
	os.WriteFile(dev, nil, 0o600)
	b := NewSNP(tsm, dev)
	if err := b.Available(); err != nil {
		t.Fatalf("Available() with a device present = %v", err)
	}
	if _, _, err := b.Evidence(context.Background(), [64]byte{}); err == nil {
		t.Error("Evidence from a regular file succeeded")
	}
}

// TestTdxGuestDevice goes through /dev/tdx_guest's ioctl interface, faked
// by go-tdx-guest: TDREPORT, then the quote.
func TestTdxGuestDevice(t *testing.T) {
	ca := simCA(t)
	key := spki(t)
	rd := evidence.ReportData(key, nil, digest)
	quote, err := ca.SignTDX(rd, sim.TDXOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var report [tdxlabi.TdReportSize]byte
	copy(report[:], "a TDREPORT")
	dev, err := tdxtest.TcDevice([]tdxtest.TestCase{{Input: rd, Report: report, Quote: quote}})
	if err != nil {
		t.Fatal(err)
	}
	b := NewTDX(filepath.Join(t.TempDir(), "none"), "/dev/fake-tdx")
	b.OpenDevice = func(path string) (tdxclient.Device, error) { return dev, dev.Open(path) }
	if err := b.Available(); err != nil {
		t.Fatal(err)
	}
	env, err := Attest(context.Background(), b, key, nil, digest)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(env.Evidence, quote) {
		t.Error("the quote is not the device's")
	}
	if _, err := verify.Envelope(env, verify.Options{SimRoots: ca.Roots()}); err != nil {
		t.Fatal(err)
	}
	// Report data the device has no answer for: an error, not a quote.
	if _, err := Attest(context.Background(), b, key, []byte("other"), digest); err == nil {
		t.Error("the device answered for report data it was not given")
	}
}

func TestSNPEndorsements(t *testing.T) {
	ca := simCA(t)
	_, vcek, err := ca.SignSNP([64]byte{}, sim.SNPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, vlek, err := ca.SignSNP([64]byte{}, sim.SNPOptions{VLEK: true})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		table []byte
		want  [][]byte
	}{
		{"VCEK, ASK, ARK", sim.SNPCertTable(vcek), vcek},
		{"VLEK and ARK", sim.SNPCertTable(vlek), [][]byte{vlek[0], vlek[2]}},
		{"no leaf", sim.SNPCertTable(vcek[1:2]), nil}, // the ASK under the VCEK GUID is still a "leaf"
		{"empty", nil, nil},
		{"zero pages", make([]byte, 4096), nil},
	}
	tests[2].want = [][]byte{vcek[1]}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := snpEndorsements(tc.table)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("%d certificates, want %d", len(got), len(tc.want))
			}
			for i := range got {
				if !bytes.Equal(got[i], tc.want[i]) {
					t.Errorf("certificate %d differs", i)
				}
			}
		})
	}
	if _, err := snpEndorsements([]byte{1, 2, 3}); err == nil {
		t.Error("a malformed table was accepted")
	}
}

func TestInfo(t *testing.T) {
	t.Setenv("CASTELLAN_CONFIG_DIR", t.TempDir())
	st := Info()
	if len(st) != len(Names()) {
		t.Fatalf("%d statuses for %d backends", len(st), len(Names()))
	}
	for _, s := range st {
		if !s.Usable && (s.Reason == "" || s.Hint == "") {
			t.Errorf("%s is not usable but says neither why nor what to do", s.Name)
		}
		if strings.Contains(s.Reason+s.Hint, "\n") {
			t.Errorf("%s: multi-line text", s.Name)
		}
		if strings.HasPrefix(s.Name, "sim-") && (!s.Usable || !strings.Contains(s.Hint, os.Getenv("CASTELLAN_CONFIG_DIR"))) {
			t.Errorf("%s: %+v, want usable with the roots path", s.Name, s)
		}
	}
	// Info does not create the CA.
	if _, err := os.Stat(filepath.Join(os.Getenv("CASTELLAN_CONFIG_DIR"), "sim")); !errors.Is(err, os.ErrNotExist) {
		t.Error("Info created the simulation CA")
	}
	if m, err := SimMeasurement(); err != nil || len(m) != 96 {
		t.Errorf("SimMeasurement() = %q, %v", m, err)
	}
}

func hexs(b []byte) string { return hex.EncodeToString(b) }
