package verify

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/castellan-dev/castellan/internal/cputime"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/tee/sim"
	"github.com/castellan-dev/castellan/internal/testvectors"
	"github.com/google/go-sev-guest/verify/trust"
)

const (
	digestA = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	digestB = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

var (
	testCA  = sync.OnceValues(sim.New) // the CA the tests' policy trusts
	otherCA = sync.OnceValues(sim.New) // a CA no one trusts
	keyA    = sync.OnceValue(func() []byte { return newSPKI() })
	keyB    = sync.OnceValue(func() []byte { return newSPKI() })
)

func newSPKI() []byte {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		panic(err)
	}
	return der
}

func ca(tb testing.TB, get func() (*sim.CA, error)) *sim.CA {
	tb.Helper()
	c, err := get()
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// simEnvelope makes an envelope for keyA, nonce "n1" and digestA, signed by c.
type simOpts struct {
	snp sim.SNPOptions
	tdx sim.TDXOptions
}

func simEnvelope(tb testing.TB, c *sim.CA, platform string, o simOpts) *evidence.Envelope {
	tb.Helper()
	env := &evidence.Envelope{Platform: platform, Key: keyA(), Nonce: []byte("n1"), WorkloadDigest: digestA}
	rd := evidence.ReportData(env.Key, env.Nonce, env.WorkloadDigest)
	var err error
	switch platform {
	case evidence.PlatformSNP:
		env.Evidence, env.Endorsements, err = c.SignSNP(rd, o.snp)
	case evidence.PlatformTDX:
		env.Evidence, err = c.SignTDX(rd, o.tdx)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return env
}

func trusting(c *sim.CA) Options { return Options{SimRoots: c.Roots()} }

var platforms = []string{evidence.PlatformSNP, evidence.PlatformTDX}

func TestSimRoundTrip(t *testing.T) {
	c := ca(t, testCA)
	m, err := sim.Measurement()
	if err != nil {
		t.Fatal(err)
	}
	wantTCB := map[string]map[string]uint64{
		evidence.PlatformSNP: {"bootloader": 4, "tee": 0, "snp": 22, "microcode": 213},
		evidence.PlatformTDX: {"tee_tcb_svn.0": 5, "tee_tcb_svn.1": 1, "tee_tcb_svn.2": 3, "tee_tcb_svn.15": 0, "qe_svn": 8, "pce_svn": 13},
	}
	for _, p := range platforms {
		t.Run(p, func(t *testing.T) {
			env := simEnvelope(t, c, p, simOpts{})
			// Through the wire format, as a verifier receives it.
			b, err := env.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			env, err = evidence.Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			cl, err := Envelope(env, trusting(c))
			if err != nil {
				t.Fatal(err)
			}
			if cl.Platform != p || !cl.Simulated || !cl.Insecure() || cl.Debug {
				t.Errorf("claims %+v: want platform %s, simulated, not debug", cl, p)
			}
			if !bytes.Equal(cl.Measurement, m) {
				t.Errorf("measurement %x, want this executable's %x", cl.Measurement, m)
			}
			for k, v := range wantTCB[p] {
				if got, ok := cl.TCB[k]; !ok || got != v {
					t.Errorf("TCB[%s] = %d (present %v), want %d", k, got, ok, v)
				}
			}
			if !bytes.Equal(cl.Key, keyA()) || string(cl.Nonce) != "n1" || cl.WorkloadDigest != digestA {
				t.Errorf("claims do not carry the envelope's key, nonce and digest")
			}
			if cl.ReportData != evidence.ReportData(keyA(), []byte("n1"), digestA) {
				t.Errorf("report data not carried")
			}
		})
	}
}

// reportOffset is where a byte of the signed measurement sits in each format.
var measurementOffset = map[string]int{
	evidence.PlatformSNP: 0x90,        // MEASUREMENT
	evidence.PlatformTDX: 0x30 + 0x88, // header, then MRTD in the body
}

func TestAttacks(t *testing.T) {
	c, other := ca(t, testCA), ca(t, otherCA)
	type attack struct {
		name  string
		env   func(t *testing.T, p string) *evidence.Envelope
		opts  Options
		check string
		msg   string
	}
	attacks := []attack{
		{
			name: "tampered report byte",
			env: func(t *testing.T, p string) *evidence.Envelope {
				env := simEnvelope(t, c, p, simOpts{})
				env.Evidence[measurementOffset[p]] ^= 0x01
				return env
			},
			opts: trusting(c), check: CheckSignature,
		},
		{
			name: "tampered report data",
			env: func(t *testing.T, p string) *evidence.Envelope {
				env := simEnvelope(t, c, p, simOpts{})
				// Make the report data bind keyB, as an attacker who
				// holds keyB's private key would like.
				rd := evidence.ReportData(keyB(), env.Nonce, env.WorkloadDigest)
				off := 0x50
				if p == evidence.PlatformTDX {
					off = 0x30 + 0x208
				}
				copy(env.Evidence[off:], rd[:])
				env.Key = keyB()
				return env
			},
			opts: trusting(c), check: CheckSignature,
		},
		{
			name: "signed by an unknown root",
			env: func(t *testing.T, p string) *evidence.Envelope {
				return simEnvelope(t, other, p, simOpts{})
			},
			opts: trusting(c), check: CheckChain, msg: "does not list",
		},
		{
			name: "simulated evidence under a policy without sim roots",
			env: func(t *testing.T, p string) *evidence.Envelope {
				return simEnvelope(t, c, p, simOpts{})
			},
			opts: Options{}, check: CheckChain, msg: "does not list",
		},
		{
			name: "report data bound to another key",
			env: func(t *testing.T, p string) *evidence.Envelope {
				env := simEnvelope(t, c, p, simOpts{})
				env.Key = keyB()
				return env
			},
			opts: trusting(c), check: CheckReportData,
		},
		{
			name: "report data bound to another nonce",
			env: func(t *testing.T, p string) *evidence.Envelope {
				env := simEnvelope(t, c, p, simOpts{})
				env.Nonce = []byte("n2")
				return env
			},
			opts: trusting(c), check: CheckReportData,
		},
		{
			name: "report data bound to another workload",
			env: func(t *testing.T, p string) *evidence.Envelope {
				env := simEnvelope(t, c, p, simOpts{})
				env.WorkloadDigest = digestB
				return env
			},
			opts: trusting(c), check: CheckReportData,
		},
		{
			name: "expired chain",
			env: func(t *testing.T, p string) *evidence.Envelope {
				return simEnvelope(t, c, p, simOpts{})
			},
			opts: Options{SimRoots: c.Roots(), Now: time.Now().AddDate(30, 0, 0)}, check: CheckChain,
		},
		{
			name: "truncated report",
			env: func(t *testing.T, p string) *evidence.Envelope {
				env := simEnvelope(t, c, p, simOpts{})
				env.Evidence = env.Evidence[:len(env.Evidence)-1]
				return env
			},
			opts: trusting(c), check: CheckFormat,
		},
	}
	for _, a := range attacks {
		for _, p := range platforms {
			t.Run(a.name+"/"+p, func(t *testing.T) {
				cl, err := Envelope(a.env(t, p), a.opts)
				if err == nil {
					t.Fatalf("accepted: %+v", cl)
				}
				var ve *Error
				if !errors.As(err, &ve) {
					t.Fatalf("error %v is not a *verify.Error", err)
				}
				if ve.Check != a.check {
					t.Errorf("check %q (%v), want %q", ve.Check, err, a.check)
				}
				if a.msg != "" && !strings.Contains(err.Error(), a.msg) {
					t.Errorf("error %q does not say %q", err, a.msg)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error has several lines: %q", err)
				}
			})
		}
	}
}

func TestSNPSpecificAttacks(t *testing.T) {
	c, other := ca(t, testCA), ca(t, otherCA)
	tests := []struct {
		name  string
		env   func() *evidence.Envelope
		check string
	}{
		{"VCEK of another CA with the trusted ASK and ARK", func() *evidence.Envelope {
			env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{})
			o := simEnvelope(t, other, evidence.PlatformSNP, simOpts{})
			env.Endorsements[0] = o.Endorsements[0]
			return env
		}, CheckChain},
		{"report of another chip under the trusted chain", func() *evidence.Envelope {
			env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{})
			o := simEnvelope(t, other, evidence.PlatformSNP, simOpts{})
			env.Evidence = o.Evidence
			return env
		}, CheckChain},
		{"VCEK for a lower TCB than the report claims", func() *evidence.Envelope {
			env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{})
			low := simEnvelope(t, c, evidence.PlatformSNP, simOpts{snp: sim.SNPOptions{TCB: &sim.SNPTCB{Bootloader: 1, SNP: 1, Microcode: 1}}})
			env.Endorsements[0] = low.Endorsements[0]
			return env
		}, CheckChain},
		{"no VCEK and no fetching", func() *evidence.Envelope {
			env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{})
			env.Endorsements = nil
			return env
		}, CheckChain},
		{"garbage endorsement", func() *evidence.Envelope {
			env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{})
			env.Endorsements[1] = []byte("not a certificate")
			return env
		}, CheckFormat},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Envelope(tc.env(), trusting(c))
			var ve *Error
			if !errors.As(err, &ve) || ve.Check != tc.check {
				t.Errorf("got %v, want a %s error", err, tc.check)
			}
		})
	}
}

// TestVLEK covers reports signed by a cloud provider's VLEK instead of the
// chip's VCEK: same library path, ASVK instead of ASK.
func TestVLEK(t *testing.T) {
	c, other := ca(t, testCA), ca(t, otherCA)
	vlek := simOpts{snp: sim.SNPOptions{VLEK: true}}
	cl, err := Envelope(simEnvelope(t, c, evidence.PlatformSNP, vlek), trusting(c))
	if err != nil {
		t.Fatal(err)
	}
	if !cl.Simulated || cl.TCB["snp"] != 22 {
		t.Errorf("claims %+v", cl)
	}
	tests := []struct {
		name  string
		env   func() *evidence.Envelope
		opts  Options
		check string
	}{
		{"no VLEK certificate", func() *evidence.Envelope {
			env := simEnvelope(t, c, evidence.PlatformSNP, vlek)
			env.Endorsements = nil
			return env
		}, trusting(c), CheckChain},
		{"VCEK certificate for a VLEK report", func() *evidence.Envelope {
			env := simEnvelope(t, c, evidence.PlatformSNP, vlek)
			env.Endorsements[0] = simEnvelope(t, c, evidence.PlatformSNP, simOpts{}).Endorsements[0]
			return env
		}, trusting(c), CheckChain},
		{"unknown root", func() *evidence.Envelope { return simEnvelope(t, other, evidence.PlatformSNP, vlek) }, trusting(c), CheckChain},
		{"AMD's VLEK roots", func() *evidence.Envelope { return simEnvelope(t, c, evidence.PlatformSNP, vlek) }, Options{}, CheckChain},
		{"tampered", func() *evidence.Envelope {
			env := simEnvelope(t, c, evidence.PlatformSNP, vlek)
			env.Evidence[0x90] ^= 1
			return env
		}, trusting(c), CheckSignature},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Envelope(tc.env(), tc.opts)
			var ve *Error
			if !errors.As(err, &ve) || ve.Check != tc.check {
				t.Errorf("got %v, want a %s error", err, tc.check)
			}
		})
	}
	for _, line := range []string{"Milan", "Genoa", "Turin"} {
		r := vlekRoots()[line]
		if r == nil || r.ProductCerts.Asvk.Subject.CommonName != "SEV-VLEK-"+line {
			t.Errorf("no AMD VLEK root for %s", line)
		}
	}
}

func TestTDXSpecificAttacks(t *testing.T) {
	c := ca(t, testCA)
	tests := []struct {
		name  string
		env   func() *evidence.Envelope
		check string
	}{
		{"trailing bytes after the signed data", func() *evidence.Envelope {
			env := simEnvelope(t, c, evidence.PlatformTDX, simOpts{})
			env.Evidence = append(env.Evidence, 0)
			return env
		}, CheckFormat},
		{"tampered QE report", func() *evidence.Envelope {
			env := simEnvelope(t, c, evidence.PlatformTDX, simOpts{})
			// The QE report starts after header, body, size, signature,
			// attestation key and the certification data header.
			env.Evidence[0x30+0x248+4+64+64+6+0x10] ^= 1
			return env
		}, CheckSignature},
		{"endorsements beside a quote", func() *evidence.Envelope {
			env := simEnvelope(t, c, evidence.PlatformTDX, simOpts{})
			env.Endorsements = [][]byte{c.Roots()[1].Raw}
			return env
		}, CheckFormat},
		{"sim root passed off as Intel's", func() *evidence.Envelope {
			return simEnvelope(t, ca(t, otherCA), evidence.PlatformTDX, simOpts{})
		}, CheckChain},
		// The unsigned tail of a v4 quote: signature data length at 0x278,
		// then signature, attestation key, certification data type (6, QE
		// report) and size, QE report, its signature, QE authentication
		// data (size, data), and the nested certification data (type 5, PCK
		// chain). Each type or length an attacker could change is refused.
		{"certification data type 5 where 6 is due", editTDX(t, c, func(q []byte) { le16(q, tdxCertType, 5) }), CheckFormat},
		{"nested certification data type 1 (PPID) where 5 is due", editTDX(t, c, func(q []byte) { le16(q, tdxNestedCertType(q), 1) }), CheckFormat},
		{"signature data length past the end", editTDX(t, c, func(q []byte) { le32(q, 0x278, 0xFFFFFFFF) }), CheckFormat},
		{"signature data length one short", editTDX(t, c, func(q []byte) { le32(q, 0x278, uint32(len(q)-0x27C-1)) }), CheckFormat},
		{"certification data size past the end", editTDX(t, c, func(q []byte) { le32(q, tdxCertType+2, 0xFFFFFFF0) }), CheckFormat},
		{"QE authentication data size past the end", editTDX(t, c, func(q []byte) { le16(q, tdxCertType+6+0x180+64, 0xFFFF) }), CheckFormat},
		{"nested PCK chain size past the end", editTDX(t, c, func(q []byte) { le32(q, tdxNestedCertType(q)+2, 0x7FFFFFFF) }), CheckFormat},
		{"attestation key type P-384", editTDX(t, c, func(q []byte) { le16(q, 2, 3) }), CheckFormat},
		{"TEE type SGX", editTDX(t, c, func(q []byte) { le32(q, 4, 0) }), CheckFormat},
		{"truncated in the PCK chain", editTDX(t, c, nil, -100), CheckFormat},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Envelope(tc.env(), trusting(c))
			var ve *Error
			if !errors.As(err, &ve) || ve.Check != tc.check {
				t.Errorf("got %v, want a %s error", err, tc.check)
			}
		})
	}
}

// Offsets in a simulated TDX v4 quote (layout in TestTDXSpecificAttacks).
const tdxCertType = 0x278 + 4 + 64 + 64

// tdxNestedCertType is the offset of the PCK chain's certification data
// type, after the QE report, its signature and the authentication data.
func tdxNestedCertType(q []byte) int {
	auth := tdxCertType + 6 + 0x180 + 64
	return auth + 2 + int(binary.LittleEndian.Uint16(q[auth:]))
}

func le16(q []byte, off int, v uint16) { binary.LittleEndian.PutUint16(q[off:], v) }
func le32(q []byte, off int, v uint32) { binary.LittleEndian.PutUint32(q[off:], v) }

// editTDX returns a simulated TDX envelope whose quote edit changed, then
// cut by trim bytes (negative) if given.
func editTDX(t *testing.T, c *sim.CA, edit func([]byte), trim ...int) func() *evidence.Envelope {
	return func() *evidence.Envelope {
		env := simEnvelope(t, c, evidence.PlatformTDX, simOpts{})
		if edit != nil {
			edit(env.Evidence)
		}
		for _, n := range trim {
			env.Evidence = env.Evidence[:len(env.Evidence)+n]
		}
		return env
	}
}

// TestClaims checks that what a policy decides on comes from the report.
func TestClaims(t *testing.T) {
	c := ca(t, testCA)
	other := bytes.Repeat([]byte{0xab}, 48)
	svn := [16]byte{1}
	qesvn := uint16(2)
	tests := []struct {
		name     string
		platform string
		o        simOpts
		check    func(*evidence.Claims) error
	}{
		{"snp debug", evidence.PlatformSNP, simOpts{snp: sim.SNPOptions{Debug: true}}, func(c *evidence.Claims) error {
			if !c.Debug {
				return errors.New("Debug false for a report with the DEBUG policy bit")
			}
			return nil
		}},
		{"tdx debug", evidence.PlatformTDX, simOpts{tdx: sim.TDXOptions{Debug: true}}, func(c *evidence.Claims) error {
			if !c.Debug {
				return errors.New("Debug false for a quote with TDATTRIBUTES.DEBUG")
			}
			return nil
		}},
		{"snp low TCB", evidence.PlatformSNP, simOpts{snp: sim.SNPOptions{TCB: &sim.SNPTCB{Bootloader: 1, TEE: 2, SNP: 3, Microcode: 4}}}, func(c *evidence.Claims) error {
			if c.TCB["bootloader"] != 1 || c.TCB["tee"] != 2 || c.TCB["snp"] != 3 || c.TCB["microcode"] != 4 {
				return fmt.Errorf("TCB %v", c.TCB)
			}
			return nil
		}},
		{"tdx low TCB", evidence.PlatformTDX, simOpts{tdx: sim.TDXOptions{TeeTCBSVN: &svn, QESVN: &qesvn}}, func(c *evidence.Claims) error {
			if c.TCB["tee_tcb_svn.0"] != 1 || c.TCB["tee_tcb_svn.1"] != 0 || c.TCB["qe_svn"] != 2 {
				return fmt.Errorf("TCB %v", c.TCB)
			}
			return nil
		}},
		{"snp other measurement", evidence.PlatformSNP, simOpts{snp: sim.SNPOptions{Measurement: other}}, func(c *evidence.Claims) error {
			if !bytes.Equal(c.Measurement, other) {
				return fmt.Errorf("measurement %x", c.Measurement)
			}
			return nil
		}},
		{"tdx other measurement", evidence.PlatformTDX, simOpts{tdx: sim.TDXOptions{Measurement: other}}, func(c *evidence.Claims) error {
			if !bytes.Equal(c.Measurement, other) {
				return fmt.Errorf("measurement %x", c.Measurement)
			}
			return nil
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cl, err := Envelope(simEnvelope(t, c, tc.platform, tc.o), trusting(c))
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.check(cl); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestNone(t *testing.T) {
	env := &evidence.Envelope{Platform: evidence.PlatformNone, Key: keyA(), Nonce: []byte("n"), WorkloadDigest: digestA}
	cl, err := Envelope(env, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if cl.Platform != evidence.PlatformNone || !cl.Insecure() || cl.Measurement != nil || !bytes.Equal(cl.Key, keyA()) || cl.WorkloadDigest != digestA {
		t.Errorf("claims %+v", cl)
	}
	env.Evidence = []byte{1}
	if _, err := Envelope(env, Options{}); err == nil {
		t.Error("none envelope with evidence accepted")
	}
	if _, err := Report(evidence.PlatformNone, nil, nil, Options{}); err == nil {
		t.Error("Report accepted platform none")
	}
	if _, err := Report("sgx", nil, nil, Options{}); err == nil {
		t.Error("Report accepted an unknown platform")
	}
}

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The VCEK URL of the Milan sample: its chip ID and reported TCB.
const milanVCEKURL = "https://kdsintf.amd.com/vcek/v1/Milan/3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e53786184ca39e359669a2b76a1936776b564ea464cdce40c05f63c9b610c5068b006b5d?blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=68"

// checkMilanClaims checks the claims of the Milan sample.
func checkMilanClaims(t *testing.T, cl *evidence.Claims, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if cl.Simulated || cl.Platform != evidence.PlatformSNP || len(cl.Measurement) != 48 {
		t.Errorf("claims %+v", cl)
	}
	want := map[string]uint64{"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
	for k, v := range want {
		if cl.TCB[k] != v {
			t.Errorf("TCB %v, want %v", cl.TCB, want)
		}
	}
}

// withinCRL is a time within the validity of AMD's Milan CRL number 6.
var withinCRL = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)

// TestRealSNPSampleAMDCRL checks the Milan sample with AMD's real Milan
// CRL (an outside vector, internal/testvectors) against the real ARK:
// accepted within its validity, refused when stale or tampered.
// TestSimSNPCollateral covers the same refusals with simulated CRLs.
func TestRealSNPSampleAMDCRL(t *testing.T) {
	crl := testvectors.Read(t, "amd_milan_crl.der")
	raw := readTestdata(t, "snp_milan_attestation.bin")
	vcek := readTestdata(t, "snp_milan_vcek.der")
	// AMD's KDS as a fake: the VCEK and the CRL, nothing else.
	kds := collateral.Map{milanVCEKURL: {Body: vcek}, "https://kdsintf.amd.com/vcek/v1/Milan/crl": {Body: crl}}
	check := checkMilanClaims
	t.Run("VCEK fetched, CRL checked", func(t *testing.T) {
		cl, err := Report(evidence.PlatformSNP, raw, nil, Options{Collateral: kds, Now: withinCRL})
		check(t, cl, err)
		if cl.Details["collateral"] != "verified" || cl.Details["crl_next_update"] != "2026-05-12T00:00:00Z" {
			t.Errorf("details %v", cl.Details)
		}
	})
	t.Run("stale CRL refused", func(t *testing.T) {
		_, err := Report(evidence.PlatformSNP, raw, nil, Options{Collateral: kds, Now: time.Date(2026, 5, 13, 0, 0, 0, 0, time.UTC)})
		var ve *Error
		if !errors.As(err, &ve) || ve.Check != CheckCollateral || !strings.Contains(err.Error(), "stale") {
			t.Errorf("got %v, want a stale CRL refusal", err)
		}
	})
	t.Run("CRL not signed by the ARK refused", func(t *testing.T) {
		bad := bytes.Clone(crl)
		bad[len(bad)-5] ^= 1
		_, err := Report(evidence.PlatformSNP, raw, [][]byte{vcek}, Options{Collateral: collateral.Map{"https://kdsintf.amd.com/vcek/v1/Milan/crl": {Body: bad}}, Now: withinCRL})
		var ve *Error
		if !errors.As(err, &ve) || ve.Check != CheckCollateral || !strings.Contains(err.Error(), "verification") {
			t.Errorf("got %v, want a collateral refusal", err)
		}
	})
}

func TestRealSNPSample(t *testing.T) {
	raw := readTestdata(t, "snp_milan_attestation.bin")
	vcek := readTestdata(t, "snp_milan_vcek.der")
	check := checkMilanClaims
	t.Run("CRL missing refused", func(t *testing.T) {
		_, err := Report(evidence.PlatformSNP, raw, [][]byte{vcek}, Options{Collateral: collateral.Map{}, Now: withinCRL})
		var ve *Error
		if !errors.As(err, &ve) || ve.Check != CheckCollateral || !strings.Contains(err.Error(), "Milan/crl") {
			t.Errorf("got %v, want a collateral refusal naming the CRL", err)
		}
	})
	t.Run("VCEK fetched, CRL missing refused", func(t *testing.T) {
		_, err := Report(evidence.PlatformSNP, raw, nil, Options{Collateral: collateral.Map{milanVCEKURL: {Body: vcek}}, Now: withinCRL})
		var ve *Error
		if !errors.As(err, &ve) || ve.Check != CheckCollateral || !strings.Contains(err.Error(), "Milan/crl") {
			t.Errorf("got %v, want a collateral refusal naming the CRL", err)
		}
	})
	t.Run("VCEK in the envelope", func(t *testing.T) {
		cl, err := Report(evidence.PlatformSNP, raw, [][]byte{vcek}, Options{})
		check(t, cl, err)
	})
	t.Run("sim roots do not change real verification", func(t *testing.T) {
		cl, err := Report(evidence.PlatformSNP, raw, [][]byte{vcek}, trusting(ca(t, testCA)))
		check(t, cl, err)
	})
	t.Run("envelope refused at the binding", func(t *testing.T) {
		env := &evidence.Envelope{Platform: evidence.PlatformSNP, Evidence: raw, Endorsements: [][]byte{vcek}, Key: keyA(), WorkloadDigest: digestA}
		_, err := Envelope(env, Options{})
		var ve *Error
		if !errors.As(err, &ve) || ve.Check != CheckReportData {
			t.Errorf("got %v, want a report_data error", err)
		}
	})
	t.Run("tampered", func(t *testing.T) {
		bad := bytes.Clone(raw)
		bad[0x90] ^= 1
		_, err := Report(evidence.PlatformSNP, bad, [][]byte{vcek}, Options{})
		var ve *Error
		if !errors.As(err, &ve) || ve.Check != CheckSignature {
			t.Errorf("got %v, want a signature error", err)
		}
	})
	t.Run("AMD root replaced by a sim root", func(t *testing.T) {
		_, err := Report(evidence.PlatformSNP, raw, [][]byte{vcek}, Options{AMDRoots: map[string][]*trust.AMDRootCerts{}})
		var ve *Error
		if !errors.As(err, &ve) || ve.Check != CheckChain {
			t.Errorf("got %v, want a chain error", err)
		}
	})
}

func TestRealTDXSample(t *testing.T) {
	raw := readTestdata(t, "tdx_spr_e4_quote.dat")
	// The library's sample ends with bytes outside the signed data, added to
	// test its parser; a quote from a QE has none, and Report refuses them.
	if _, err := Report(evidence.PlatformTDX, raw, nil, Options{}); err == nil || err.(*Error).Check != CheckFormat {
		t.Errorf("sample with trailing bytes: got %v, want a format error", err)
	}
	raw = raw[:0x27c+binary.LittleEndian.Uint32(raw[0x278:])]
	at := time.Date(2023, time.July, 1, 1, 0, 0, 0, time.UTC) // within the sample PCK's validity
	// The sample TD lacks SEPT_VE_DISABLE, which the default policy requires.
	if _, err := Report(evidence.PlatformTDX, raw, nil, Options{Now: at}); err == nil || err.(*Error).Check != CheckTDFields || !strings.Contains(err.Error(), "SEPT_VE_DISABLE") {
		t.Errorf("sample without SEPT_VE_DISABLE under the default policy: %v", err)
	}
	cl, err := Report(evidence.PlatformTDX, raw, nil, Options{Now: at, TDX: TDXPolicy{AllowSEPTVE: true}})
	if err != nil {
		t.Fatal(err)
	}
	if cl.Simulated || cl.Platform != evidence.PlatformTDX || len(cl.Measurement) != 48 || len(cl.TCB) != 18 {
		t.Errorf("claims %+v", cl)
	}
	bad := bytes.Clone(raw)
	bad[0x30+0x88] ^= 1
	if _, err := Report(evidence.PlatformTDX, bad, nil, Options{Now: at}); err == nil || err.(*Error).Check != CheckSignature {
		t.Errorf("tampered sample: got %v, want a signature error", err)
	}
	_, err = Report(evidence.PlatformTDX, raw, nil, Options{Now: at, TDX: TDXPolicy{AllowSEPTVE: true}, IntelRoots: []*x509.Certificate{ca(t, testCA).Roots()[1]}})
	if err == nil || err.(*Error).Check != CheckChain {
		t.Errorf("sample under another root: got %v, want a chain error", err)
	}
	env := &evidence.Envelope{Platform: evidence.PlatformTDX, Evidence: raw, Key: keyA(), WorkloadDigest: digestA}
	if _, err := Envelope(env, Options{Now: at, TDX: TDXPolicy{AllowSEPTVE: true}}); err == nil || err.(*Error).Check != CheckReportData {
		t.Errorf("sample envelope: got %v, want a report_data error", err)
	}
}

func TestRealTDXv5Sample(t *testing.T) {
	raw := readTestdata(t, "tdx_quote_v5.dat")
	at := time.Date(2026, time.July, 1, 0, 0, 0, 0, time.UTC)
	cl, err := Report(evidence.PlatformTDX, raw, nil, Options{Now: at})
	if err != nil {
		t.Fatal(err)
	}
	if cl.Simulated || len(cl.Measurement) != 48 || len(cl.TCB) != 18 {
		t.Errorf("claims %+v", cl)
	}
	bad := bytes.Clone(raw)
	bad[0x30+6+0x88] ^= 1 // MRTD: header, body descriptor (type, size), body
	if _, err := Report(evidence.PlatformTDX, bad, nil, Options{Now: at}); err == nil || err.(*Error).Check != CheckSignature {
		t.Errorf("tampered v5 sample: got %v, want a signature error", err)
	}
}

// FuzzVerify feeds random reports, quotes and leaf certificates to
// Envelope: it must never panic, must fail with a *verify.Error, and must
// accept nothing but the genuine evidence.
func FuzzVerify(f *testing.F) {
	c := ca(f, testCA)
	snp := simEnvelope(f, c, evidence.PlatformSNP, simOpts{})
	tdx := simEnvelope(f, c, evidence.PlatformTDX, simOpts{})
	f.Add(uint8(0), snp.Evidence, snp.Endorsements[0])
	f.Add(uint8(1), tdx.Evidence, []byte(nil))
	f.Add(uint8(1), readTestdata(f, "tdx_spr_e4_quote.dat"), []byte(nil))
	f.Add(uint8(0), readTestdata(f, "snp_milan_attestation.bin"), readTestdata(f, "snp_milan_vcek.der"))
	// A QE authentication data size past the quote's end, which made
	// go-tdx-guest's parser panic.
	overflow := bytes.Clone(tdx.Evidence)
	le16(overflow, tdxCertType+6+0x180+64, 0xFFFF)
	f.Add(uint8(1), overflow, []byte(nil))
	opts := trusting(c)
	f.Fuzz(func(t *testing.T, which uint8, raw, leaf []byte) {
		env := *snp
		env.Endorsements = append([][]byte{leaf}, snp.Endorsements[1:]...)
		if which%2 == 1 {
			env = *tdx
		}
		env.Evidence = raw
		_, err := Envelope(&env, opts)
		if err == nil && !bytes.Equal(raw, snp.Evidence) && !bytes.Equal(raw, tdx.Evidence) {
			// Only the genuine reports bind keyA.
			t.Fatalf("accepted evidence that was never signed: %x", raw)
		}
		var ve *Error
		if err != nil && !errors.As(err, &ve) {
			t.Fatalf("error %v is not a *verify.Error", err)
		}
	})
}

func BenchmarkSimSignSNP(b *testing.B) {
	c := ca(b, testCA)
	sim.Measurement()
	var rd [64]byte
	for b.Loop() {
		if _, _, err := c.SignSNP(rd, sim.SNPOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSimSignTDX(b *testing.B) {
	c := ca(b, testCA)
	sim.Measurement()
	var rd [64]byte
	for b.Loop() {
		if _, err := c.SignTDX(rd, sim.TDXOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

func benchmarkVerify(b *testing.B, p string) {
	c := ca(b, testCA)
	env := simEnvelope(b, c, p, simOpts{})
	opts := trusting(c)
	defer reportCPU(b)()
	for b.Loop() {
		if _, err := Envelope(env, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// reportCPU adds the process's CPU time per operation (user + system) to a
// benchmark's results: on a shared machine wall time per operation says
// more about the neighbours than about the code.
func reportCPU(b *testing.B) func() {
	cpu := cputime.Self
	start := cpu()
	return func() { b.ReportMetric(float64(cpu()-start)/float64(b.N), "cpu-ns/op") }
}

func BenchmarkVerifySNP(b *testing.B) { benchmarkVerify(b, evidence.PlatformSNP) }
func BenchmarkVerifyTDX(b *testing.B) { benchmarkVerify(b, evidence.PlatformTDX) }

// benchmarkVerifyCollateral verifies with the simulation CA's collateral,
// as a service whose collateral is cached (in memory here; the service
// reads its cache folder).
func benchmarkVerifyCollateral(b *testing.B, p string) {
	c := ca(b, testCA)
	env := simEnvelope(b, c, p, simOpts{})
	opts := trusting(c)
	coll, err := c.Collateral()
	if err != nil {
		b.Fatal(err)
	}
	opts.SimCollateral = coll
	defer reportCPU(b)()
	for b.Loop() {
		if cl, err := Envelope(env, opts); err != nil || cl.Details["collateral"] != "verified" {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifySNPCollateral(b *testing.B) { benchmarkVerifyCollateral(b, evidence.PlatformSNP) }
func BenchmarkVerifyTDXCollateral(b *testing.B) { benchmarkVerifyCollateral(b, evidence.PlatformTDX) }
