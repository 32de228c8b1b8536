package policy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
)

var (
	mrenclave = bytes.Repeat([]byte{0xe1}, 32)
	mrsigner  = bytes.Repeat([]byte{0x51}, 32)
	rim       = bytes.Repeat([]byte{0xc1}, 64)
	fw        = bytes.Repeat([]byte{0xf1}, 32)
)

func sgxClaims(mod func(*evidence.Claims)) *evidence.Claims {
	c := &evidence.Claims{
		Platform: evidence.PlatformSGX, Measurement: mrenclave, Details: map[string]string{"tcb_status": "UpToDate", "collateral": "verified"},
		Identity:       map[string][]byte{"mrsigner": mrsigner},
		TCB:            map[string]uint64{"cpu_svn.0": 5, "pce_svn": 13, "qe_svn": 8, "isv_svn": 3, "isv_prod_id": 1},
		WorkloadDigest: "sha256:" + strings.Repeat("0", 64),
	}
	if mod != nil {
		mod(c)
	}
	return c
}

func ccaClaims(mod func(*evidence.Claims)) *evidence.Claims {
	c := &evidence.Claims{
		Platform: evidence.PlatformCCA, Measurement: rim, TCB: map[string]uint64{},
		Identity:       map[string][]byte{"rem.0": make([]byte, 64), "rem.1": make([]byte, 64), "rem.2": make([]byte, 64), "rem.3": make([]byte, 64), "platform_sw.0": fw},
		WorkloadDigest: "sha256:" + strings.Repeat("0", 64),
	}
	if mod != nil {
		mod(c)
	}
	return c
}

// TestSGXAndCCADecisions: each refusal the SNP and TDX policy checks make,
// for SGX and CCA claims, is its own case with its reason.
func TestSGXAndCCADecisions(t *testing.T) {
	dir := t.TempDir()
	k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(k.Public())
	os.WriteFile(filepath.Join(dir, "cpaks.pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
	pol := `workloads = ["any"]
[platforms.sgx]
tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
[platforms.sgx.min_tcb]
"cpu_svn.0" = 4
[platforms.cca]
cpaks = ["cpaks.pem"]
platform_software = ["` + hex.EncodeToString(fw) + `"]
`
	meas := `[[measurement]]
platform = "sgx"
value = "` + hex.EncodeToString(mrenclave) + `"
[[measurement]]
platform = "sgx"
value = "` + strings.Repeat("ee", 32) + `"
revoked = true
name = "old enclave"
[[measurement]]
platform = "sgx"
mrsigner = "` + hex.EncodeToString(mrsigner) + `"
isv_prod_id = 2
min_isv_svn = 4
[[measurement]]
platform = "sgx"
mrsigner = "` + strings.Repeat("77", 32) + `"
isv_prod_id = 1
revoked = true
name = "leaked signing key"
[[measurement]]
platform = "cca"
value = "` + hex.EncodeToString(rim) + `"
[[measurement]]
platform = "cca"
value = "` + strings.Repeat("cc", 64) + `"
revoked = true
[[measurement]]
platform = "cca"
value = "` + strings.Repeat("dd", 64) + `"
rems = ["` + strings.Repeat("01", 64) + `", "` + strings.Repeat("00", 64) + `", "` + strings.Repeat("00", 64) + `", "` + strings.Repeat("00", 64) + `"]
`
	os.WriteFile(filepath.Join(dir, "p.toml"), []byte(pol), 0o644)
	os.WriteFile(filepath.Join(dir, "m.toml"), []byte(meas), 0o644)
	s, err := Load(filepath.Join(dir, "p.toml"), filepath.Join(dir, "m.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.CCAPlatformKeys) != 1 || len(s.SGXSigners) != 2 {
		t.Fatalf("snapshot %+v", s)
	}
	// The verifier decides on Intel's TCB status with tcb_statuses, as for TDX.
	if o := s.VerifyOptions(evidence.PlatformSGX); len(o.SGX.TCBStatuses) != 2 || o.SGX.TCBStatuses[1] != "SWHardeningNeeded" || len(o.CCAPlatformKeys) != 1 {
		t.Errorf("verify options %+v: want the TCB statuses and the CPAK", o)
	}
	tests := []struct {
		name   string
		c      *evidence.Claims
		check  string // "" = accepted
		reason string
	}{
		{"sgx by MRENCLAVE", sgxClaims(nil), "", ""},
		{"sgx by signer", sgxClaims(func(c *evidence.Claims) {
			c.Measurement = bytes.Repeat([]byte{9}, 32)
			c.TCB["isv_prod_id"], c.TCB["isv_svn"] = 2, 4
		}), "", ""},
		{"sgx debug", sgxClaims(func(c *evidence.Claims) { c.Debug = true }), CheckDebug, "debugging"},
		{"sgx measurement unknown", sgxClaims(func(c *evidence.Claims) { c.Measurement = bytes.Repeat([]byte{9}, 32) }), CheckMeasurement, "not in the measurement database"},
		{"sgx measurement revoked", sgxClaims(func(c *evidence.Claims) { c.Measurement = bytes.Repeat([]byte{0xee}, 32) }), CheckRevoked, "old enclave"},
		{"sgx signer revoked", sgxClaims(func(c *evidence.Claims) {
			c.Measurement = bytes.Repeat([]byte{9}, 32)
			c.Identity["mrsigner"] = bytes.Repeat([]byte{0x77}, 32)
		}), CheckRevoked, "leaked signing key"},
		{"sgx isv_svn below the minimum", sgxClaims(func(c *evidence.Claims) {
			c.Measurement = bytes.Repeat([]byte{9}, 32)
			c.TCB["isv_prod_id"], c.TCB["isv_svn"] = 2, 3
		}), CheckMeasurement, "below the minimum 4"},
		{"sgx TCB below min_tcb", sgxClaims(func(c *evidence.Claims) { c.TCB["cpu_svn.0"] = 3 }), CheckTCB, "cpu_svn.0 is 3"},
		{"sgx without collateral", sgxClaims(func(c *evidence.Claims) { c.Details = map[string]string{"collateral": "none"} }), CheckCollateral, "without the vendor's collateral"},
		{"cca realm", ccaClaims(nil), "", ""},
		{"cca realm with listed REMs", ccaClaims(func(c *evidence.Claims) {
			c.Measurement = bytes.Repeat([]byte{0xdd}, 64)
			c.Identity["rem.0"] = bytes.Repeat([]byte{1}, 64)
		}), "", ""},
		{"cca debug", ccaClaims(func(c *evidence.Claims) { c.Debug = true }), CheckDebug, "debugging"},
		{"cca RIM unknown", ccaClaims(func(c *evidence.Claims) { c.Measurement = bytes.Repeat([]byte{0xab}, 64) }), CheckMeasurement, "not in the measurement database"},
		{"cca RIM revoked", ccaClaims(func(c *evidence.Claims) { c.Measurement = bytes.Repeat([]byte{0xcc}, 64) }), CheckRevoked, "revoked"},
		{"cca REM extended", ccaClaims(func(c *evidence.Claims) { c.Identity["rem.2"] = bytes.Repeat([]byte{2}, 64) }), CheckMeasurement, "extensible measurement 2"},
		{"cca platform firmware out of date", ccaClaims(func(c *evidence.Claims) { c.Identity["platform_sw.0"] = bytes.Repeat([]byte{0xf0}, 32) }), CheckTCB, "platform software component 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := s.Check(tc.c)
			switch {
			case tc.check == "" && r != nil:
				t.Fatalf("refused: %v", r)
			case tc.check != "" && r == nil:
				t.Fatal("accepted")
			case tc.check != "" && (r.Check != tc.check || !strings.Contains(r.Reason, tc.reason)):
				t.Errorf("refusal %s: %q, want %s saying %q", r.Check, r.Reason, tc.check, tc.reason)
			}
			// The facets (the EAR's view) agree with the decision.
			f := s.Facets(tc.c)
			switch tc.check {
			case "":
				if !f.MeasurementListed || f.MeasurementRevoked || f.TCBBelowMinimum {
					t.Errorf("accepted, facets %+v", f)
				}
			case CheckMeasurement:
				if f.MeasurementListed {
					t.Errorf("measurement refused, facets %+v", f)
				}
			case CheckRevoked:
				if !f.MeasurementRevoked {
					t.Errorf("revoked, facets %+v", f)
				}
			case CheckTCB:
				if !f.TCBBelowMinimum {
					t.Errorf("tcb refused, facets %+v", f)
				}
			}
		})
	}
}

func TestSGXAndCCALoadErrors(t *testing.T) {
	const ok = "workloads = [\"any\"]\n"
	tests := []struct{ name, policy, meas, want string }{
		{"tcb_statuses on snp", ok + "[platforms.snp]\ntcb_statuses = [\"UpToDate\"]\n", "", "a setting for platform tdx or sgx, not snp"},
		{"unknown tcb status", ok + "[platforms.sgx]\ntcb_statuses = [\"Fine\"]\n", "", `"Fine" is not a TCB status`},
		{"revoked is no status to accept", ok + "[platforms.sgx]\ntcb_statuses = [\"Revoked\"]\n", "", `"Revoked" is not a TCB status`},
		{"tdx setting on sgx", ok + "[platforms.sgx]\nallow_sept_ve = true\n", "", "a setting for platform tdx, not sgx"},
		{"cpaks on tdx", ok + "[platforms.tdx]\ncpaks = [\"x.pem\"]\n", "", "cpaks and platform_software are for platform cca"},
		{"cpaks file missing", ok + "[platforms.cca]\ncpaks = [\"x.pem\"]\n", "", "platforms.cca.cpaks"},
		{"bad firmware value", ok + "[platforms.cca]\nplatform_software = [\"00\"]\n", "", "platform_software 1"},
		{"cca min_tcb", ok + "[platforms.cca.min_tcb]\nrmm = 1\n", "", "unknown component \"rmm\""},
		{"sgx measurement 48 bytes", ok, "[[measurement]]\nplatform = \"sgx\"\nvalue = \"" + strings.Repeat("00", 48) + "\"\n", "value must be 64 hex digits (32 bytes)"},
		{"sgx signer without product", ok, "[[measurement]]\nplatform = \"sgx\"\nmrsigner = \"" + strings.Repeat("00", 32) + "\"\n", "needs isv_prod_id"},
		{"sgx both forms", ok, "[[measurement]]\nplatform = \"sgx\"\nvalue = \"" + strings.Repeat("00", 32) + "\"\nmrsigner = \"" + strings.Repeat("00", 32) + "\"\nisv_prod_id = 1\n", "either value"},
		{"mrsigner on snp", ok, "[[measurement]]\nplatform = \"snp\"\nvalue = \"" + strings.Repeat("00", 48) + "\"\nmrsigner = \"00\"\n", "for platform sgx"},
		{"cca three REMs", ok, "[[measurement]]\nplatform = \"cca\"\nvalue = \"" + strings.Repeat("00", 64) + "\"\nrems = [\"00\", \"00\", \"00\"]\n", "rems lists 3 values"},
		{"cca REM of another length", ok, "[[measurement]]\nplatform = \"cca\"\nvalue = \"" + strings.Repeat("00", 64) + "\"\nrems = [\"00\", \"00\", \"00\", \"00\"]\n", "as long as value"},
		{"rtmr on snp", ok, "[[measurement]]\nplatform = \"snp\"\nvalue = \"" + strings.Repeat("00", 48) + "\"\nrtmr1 = \"" + strings.Repeat("00", 48) + "\"\n", "rtmr1 is for platform tdx"},
		{"tdx rtmr too short", ok, "[[measurement]]\nplatform = \"tdx\"\nvalue = \"" + strings.Repeat("00", 48) + "\"\nrtmr2 = \"abcd\"\n", "rtmr2 must be 96 hex digits"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "p.toml"), []byte(tc.policy), 0o644)
			os.WriteFile(filepath.Join(dir, "m.toml"), []byte(tc.meas), 0o644)
			_, err := Load(filepath.Join(dir, "p.toml"), filepath.Join(dir, "m.toml"))
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("Load = %v, want one line saying %q", err, tc.want)
			}
		})
	}
}

// TestTDXRTMRDecisions: a TDX measurement database entry that lists RTMRs
// (a VM keep image's, from 'castellan keep-image measure') admits only
// quotes whose RTMRs match them; one that lists none checks MRTD alone.
func TestTDXRTMRDecisions(t *testing.T) {
	dir := t.TempDir()
	mrtd, other := strings.Repeat("1a", 48), strings.Repeat("2b", 48)
	r1, r2 := strings.Repeat("AB", 48), strings.Repeat("cd", 48)
	meas := "[[measurement]]\nplatform = \"tdx\"\nname = \"keep image\"\nvalue = \"" + mrtd + "\"\nrtmr1 = \"" + r1 + "\"\nrtmr2 = \"" + r2 + "\"\n" +
		"[[measurement]]\nplatform = \"tdx\"\nvalue = \"" + other + "\"\n"
	os.WriteFile(filepath.Join(dir, "p.toml"), []byte("workloads = [\"any\"]\n[platforms.tdx]\nrequire_collateral = false\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "m.toml"), []byte(meas), 0o644)
	s, err := Load(filepath.Join(dir, "p.toml"), filepath.Join(dir, "m.toml"))
	if err != nil {
		t.Fatal(err)
	}
	claims := func(m string, d map[string]string) *evidence.Claims {
		raw, _ := hex.DecodeString(m)
		return &evidence.Claims{Platform: evidence.PlatformTDX, Measurement: raw, WorkloadDigest: "sha256:" + strings.Repeat("0", 64), Details: d}
	}
	lower := strings.ToLower(r1)
	tests := []struct {
		name   string
		c      *evidence.Claims
		reason string // "" = accepted
	}{
		{"rtmrs match", claims(mrtd, map[string]string{"rtmr0": strings.Repeat("00", 48), "rtmr1": lower, "rtmr2": r2}), ""},
		{"rtmr1 differs", claims(mrtd, map[string]string{"rtmr1": strings.Repeat("00", 48), "rtmr2": r2}), "tdx rtmr1 is"},
		{"rtmr2 differs", claims(mrtd, map[string]string{"rtmr1": lower, "rtmr2": strings.Repeat("ee", 48)}), "tdx rtmr2 is"},
		{"rtmrs not reported", claims(mrtd, nil), "tdx rtmr1 is \"\""},
		{"entry without rtmrs", claims(other, map[string]string{"rtmr1": strings.Repeat("00", 48)}), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := s.Check(tc.c)
			switch {
			case tc.reason == "" && r != nil:
				t.Errorf("refused: %v", r)
			case tc.reason != "" && (r == nil || r.Check != CheckMeasurement || !strings.Contains(r.Reason, tc.reason) || !strings.Contains(r.Reason, "keep image")):
				t.Errorf("got %v, want a measurement refusal saying %q and naming the entry", r, tc.reason)
			}
		})
	}
}
