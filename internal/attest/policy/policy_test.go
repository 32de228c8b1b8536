package policy

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
)

func TestExample(t *testing.T) {
	s, err := Load("testdata/policy.toml", "testdata/measurements.toml")
	if err != nil {
		t.Fatal(err)
	}
	p := s.Policy
	if time.Duration(p.NonceLifetime) != time.Minute || p.MaxNonces != 10000 || time.Duration(p.CertificateLifetime) != time.Hour {
		t.Errorf("policy %+v", p)
	}
	if len(s.SimRoots["snp"]) != 1 || len(s.SimRoots["tdx"]) != 1 || s.AnyWorkload {
		t.Errorf("snapshot %+v", s)
	}
	if len(s.Measurements["snp"]) != 2 || len(s.Measurements["tdx"]) != 1 {
		t.Errorf("measurements %+v", s.Measurements)
	}
}

func TestDefaults(t *testing.T) {
	s, err := parse("p.toml", []byte(`workloads = ["any"]`), "m.toml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if time.Duration(s.Policy.NonceLifetime) != DefaultNonceLifetime || s.Policy.MaxNonces != DefaultMaxNonces ||
		time.Duration(s.Policy.CertificateLifetime) != DefaultCertificateLifetime || !s.AnyWorkload {
		t.Errorf("defaults %+v", s.Policy)
	}
}

func TestLoadErrors(t *testing.T) {
	const okPolicy = "workloads = [\"any\"]\n"
	tests := []struct {
		name, policy, meas, want string
	}{
		{"unknown top-level key", "workloads = [\"any\"]\n\nallow_insecur = true\n", "", "p.toml:3: unknown key allow_insecur"},
		{"unknown nested key", "workloads = [\"any\"]\n[platforms.snp]\nmin_tbc = {}\n", "", "p.toml:3: unknown key platforms.snp.min_tbc"},
		{"unknown measurement key", okPolicy, "[[measurement]]\nplatform = \"snp\"\nvalu = \"00\"\n", "m.toml:3: unknown key measurement.valu"},
		{"syntax", "workloads = [\n", "", "p.toml:"},
		{"bad duration", "workloads = [\"any\"]\nnonce_lifetime = \"soon\"\n", "", "p.toml:2"},
		{"no workloads", "allow_insecure = true\n", "", "workloads is empty"},
		{"any with others", "workloads = [\"any\", \"sha256:" + strings.Repeat("0", 64) + "\"]\n", "", `"any" must be alone`},
		{"bad digest", "workloads = [\"sha256:xyz\"]\n", "", "is not a sha256"},
		{"unknown platform", okPolicy + "[platforms.sev]\n", "", "platforms.sev: unknown platform"},
		{"none as a platform", okPolicy + "[platforms.none]\n", "", "allow_insecure"},
		{"unknown tcb component", okPolicy + "[platforms.snp.min_tcb]\nqe_svn = 1\n", "", `unknown component "qe_svn"`},
		{"tdx svn out of range", okPolicy + "[platforms.tdx.min_tcb]\n\"tee_tcb_svn.16\" = 1\n", "", "unknown component"},
		{"empty revoked tcb", okPolicy + "[[platforms.snp.revoked_tcb]]\n", "", "names no component"},
		{"missing sim root", okPolicy + "[platforms.snp]\nsim_roots = [\"nope.pem\"]\n", "", "nope.pem"},
		{"vmpl out of range", okPolicy + "[platforms.snp]\nvmpl = [0, 4]\n", "", "platforms.snp.vmpl: 4 is not a VM privilege level"},
		{"vmpl for tdx", okPolicy + "[platforms.tdx]\nvmpl = [0]\n", "", "platforms.tdx.vmpl: a setting for platform snp, not tdx"},
		{"bad host data", okPolicy + "[platforms.snp]\nhost_data = \"00\"\n", "", "platforms.snp.host_data: \"00\" is not 64 hex digits"},
		{"bad id key digest", okPolicy + "[platforms.snp]\nid_key_digests = [\"zz\"]\n", "", "platforms.snp.id_key_digests: \"zz\" is not 96 hex digits"},
		{"bad firmware version", okPolicy + "[platforms.snp]\nmin_firmware = \"1\"\n", "", "platforms.snp.min_firmware: \"1\" is not a version"},
		{"bad policy abi", okPolicy + "[platforms.snp]\nmin_policy_abi = \"1.300\"\n", "", "platforms.snp.min_policy_abi"},
		{"snp setting for tdx", okPolicy + "[platforms.tdx]\nforbid_smt = true\n", "", "platforms.tdx.forbid_smt: a setting for platform snp"},
		{"revoked tcb status", okPolicy + "[platforms.tdx]\ntcb_statuses = [\"UpToDate\", \"Revoked\"]\n", "", "platforms.tdx.tcb_statuses: \"Revoked\" is not a TCB status a policy can accept"},
		{"bad rtmr", okPolicy + "[platforms.tdx]\nrtmr1 = \"abc\"\n", "", "platforms.tdx.rtmr1: \"abc\" is not 96 hex digits"},
		{"tdx setting for snp", okPolicy + "[platforms.snp]\nmr_owner = \"00\"\n", "", "platforms.snp.mr_owner: a setting for platform tdx"},
		{"negative max nonces", okPolicy + "max_nonces = -1\n", "", "max_nonces"},
		{"short measurement", okPolicy, "[[measurement]]\nplatform = \"snp\"\nvalue = \"0011\"\n", "m.toml: measurement 1: value must be 96 hex digits"},
		{"measurement platform", okPolicy, "[[measurement]]\nplatform = \"none\"\nvalue = \"" + strings.Repeat("00", 48) + "\"\n", "measurement 1: platform \"none\""},
		{"duplicate measurement", okPolicy, strings.Repeat("[[measurement]]\nplatform = \"tdx\"\nvalue = \""+strings.Repeat("AB", 48)+"\"\n", 2), "measurement 2: value listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse("p.toml", []byte(tt.policy), "m.toml", []byte(tt.meas))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error on more than one line: %q", err)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	s, err := Load("testdata/policy.toml", "testdata/measurements.toml")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := hex.DecodeString("8c1a4ed06a0ab8d1ef4a7f4c25b4ec1e2f1b0a9f0c4d2e3b6a7988c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5")
	revokedM, _ := hex.DecodeString("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f")
	wl := s.Policy.Workloads[0]
	good := func() *evidence.Claims {
		return &evidence.Claims{Platform: "snp", Simulated: true, Measurement: m, WorkloadDigest: wl,
			TCB: map[string]uint64{"bootloader": 4, "tee": 0, "snp": 22, "microcode": 213}}
	}
	tests := []struct {
		name  string
		edit  func(c *evidence.Claims)
		check string
	}{
		{"good", func(c *evidence.Claims) {}, ""},
		{"none", func(c *evidence.Claims) { c.Platform = "none" }, CheckInsecure},
		{"debug", func(c *evidence.Claims) { c.Debug = true }, CheckDebug},
		{"tcb low", func(c *evidence.Claims) { c.TCB["microcode"] = 208 }, CheckTCB},
		{"tcb missing", func(c *evidence.Claims) { delete(c.TCB, "snp") }, CheckTCB},
		{"tcb revoked", func(c *evidence.Claims) { c.TCB["snp"] = 21 }, CheckRevoked},
		{"measurement unknown", func(c *evidence.Claims) { c.Measurement = bytes.Repeat([]byte{9}, 48) }, CheckMeasurement},
		{"measurement of the other platform", func(c *evidence.Claims) {
			c.Platform = "tdx"
			c.TCB = map[string]uint64{"tee_tcb_svn.0": 5, "qe_svn": 8, "pce_svn": 11}
		}, CheckMeasurement},
		{"measurement revoked", func(c *evidence.Claims) { c.Measurement = revokedM }, CheckRevoked},
		{"workload", func(c *evidence.Claims) { c.WorkloadDigest = "sha256:" + strings.Repeat("1", 64) }, CheckWorkload},
		{"real evidence without collateral", func(c *evidence.Claims) { c.Simulated = false }, CheckCollateral},
		{"real evidence with collateral", func(c *evidence.Claims) {
			c.Simulated = false
			c.Details = map[string]string{"collateral": "verified"}
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good()
			tt.edit(c)
			r := s.Check(c)
			switch {
			case tt.check == "" && r != nil:
				t.Fatalf("refused: %v", r)
			case tt.check != "" && (r == nil || r.Check != tt.check):
				t.Fatalf("refusal %+v, want %s", r, tt.check)
			}
		})
	}
	// require_collateral = false accepts real evidence without collateral.
	lax, err := parse("p.toml", []byte("workloads = [\"any\"]\n[platforms.snp]\nrequire_collateral = false\n"), "m.toml",
		[]byte(fmt.Sprintf("[[measurement]]\nplatform = \"snp\"\nvalue = \"%x\"\n", m)))
	if err != nil {
		t.Fatal(err)
	}
	realClaims := good()
	realClaims.Simulated = false
	if r := lax.Check(realClaims); r != nil {
		t.Errorf("require_collateral = false: %v", r)
	}
	// A platform the policy does not name is refused.
	s2, _ := parse("p.toml", []byte(`workloads = ["any"]`), "m.toml", nil)
	if r := s2.Check(good()); r == nil || r.Check != CheckRevoked {
		t.Errorf("unlisted platform: %+v", r)
	}
}

// Watch picks up a change and keeps the old snapshot on a bad edit.
func TestWatch(t *testing.T) {
	dir := t.TempDir()
	pf, mf := filepath.Join(dir, "p.toml"), filepath.Join(dir, "m.toml")
	write := func(path, s string) {
		// Atomically, as an owner's deploy tool would; Watch also waits
		// for contents to settle, but a test must not depend on timing.
		if err := os.WriteFile(path+".new", []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".new", path); err != nil {
			t.Fatal(err)
		}
	}
	write(pf, `workloads = ["any"]`)
	write(mf, "")
	st, err := Open(pf, mf)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reports := make(chan error, 10)
	go st.Watch(ctx, 5*time.Millisecond, func(err error) { reports <- err })
	wait := func() error {
		select {
		case err := <-reports:
			return err
		case <-time.After(2 * time.Minute):
			t.Fatal("no reload reported")
		}
		return nil
	}
	write(pf, "workloads = [\"any\"]\nallow_insecure = true\n")
	if err := wait(); err != nil || !st.Current().Policy.AllowInsecure {
		t.Fatalf("reload: %v, allow_insecure %v", err, st.Current().Policy.AllowInsecure)
	}
	write(pf, "workloads = [\"any\"]\nallow_insecure = false\nnope = 1\n")
	if err := wait(); err == nil || !strings.Contains(err.Error(), ":3: unknown key nope") {
		t.Fatalf("bad edit reported as %v", err)
	}
	if !st.Current().Policy.AllowInsecure {
		t.Error("a bad edit replaced the policy")
	}
}

func TestHardwareChecks(t *testing.T) {
	p := `workloads = ["any"]
[platforms.snp]
vmpl = [0, 2]
allow_migrate_ma = true
forbid_smt = true
require_single_socket = true
allow_provisional_firmware = true
min_firmware = "1.55"
min_build = 21
min_policy_abi = "1.51"
min_guest_svn = 3
host_data = "` + strings.Repeat("ab", 32) + `"
id_key_digests = ["` + strings.Repeat("01", 48) + `"]
`
	s, err := parse("p.toml", []byte(p), "m.toml", nil)
	if err != nil {
		t.Fatal(err)
	}
	o := s.VerifyOptions("snp").SNP
	if len(o.VMPLs) != 2 || o.VMPLs[1] != 2 || !o.AllowMigrateMA || !o.ForbidSMT || !o.RequireSingleSocket || !o.AllowProvisionalFirmware ||
		o.MinFirmware != 1<<8|55 || o.MinBuild != 21 || o.MinPolicyABI != 1<<8|51 || o.MinGuestSVN != 3 ||
		len(o.HostData) != 32 || o.HostData[0] != 0xab || len(o.IDKeyDigests) != 1 || len(o.IDKeyDigests[0]) != 48 {
		t.Errorf("SNP options %+v", o)
	}
	if d := s.VerifyOptions("tdx").SNP; d.ForbidSMT || d.VMPLs != nil {
		t.Errorf("tdx options carry SNP settings: %+v", d)
	}
	s, err = parse("p.toml", []byte(`workloads = ["any"]
[platforms.tdx]
tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
allow_sept_ve = true
rtmr2 = "`+strings.Repeat("ab", 48)+`"
xfam = "e71a060000000000"
`), "m.toml", nil)
	if err != nil {
		t.Fatal(err)
	}
	td := s.VerifyOptions("tdx").TDX
	if len(td.TCBStatuses) != 2 || !td.AllowSEPTVE || td.AllowMigratable || len(td.RTMRs[2]) != 48 || td.RTMRs[0] != nil || len(td.XFAM) != 8 || td.XFAM[0] != 0xe7 {
		t.Errorf("TDX options %+v", td)
	}
}

// TestSNPMinTCBCoversLaunchTCB: the SEV-SNP min_tcb reaches the verifier as
// the LAUNCH_TCB's minimum, so that a guest launched on firmware below it
// is refused even once the firmware is updated (verify.TestSNPLaunchTCB).
func TestSNPMinTCBCoversLaunchTCB(t *testing.T) {
	s, err := parse("p.toml", []byte("workloads = [\"any\"]\n[platforms.snp.min_tcb]\nsnp = 22\nmicrocode = 213\n"), "m.toml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if m := s.VerifyOptions("snp").SNP.MinLaunchTCB; len(m) != 2 || m["snp"] != 22 || m["microcode"] != 213 {
		t.Errorf("SNP launch TCB minimum %v, want the min_tcb", m)
	}
	if m := s.VerifyOptions("tdx").SNP.MinLaunchTCB; m != nil {
		t.Errorf("tdx options carry an SNP launch TCB minimum: %v", m)
	}
}

// TestSNPMinTCBFMC: Turin's TCB_VERSION has a component Milan and Genoa
// lack, the FMC's; a policy can require it (its name was refused as
// unknown, so a vulnerable FMC could not be kept out), and evidence that
// does not report it is refused.
func TestSNPMinTCBFMC(t *testing.T) {
	s, err := parse("p.toml", []byte("workloads = [\"any\"]\n[platforms.snp.min_tcb]\nfmc = 2\n"), "m.toml", nil)
	if err != nil {
		t.Fatal(err)
	}
	verified := map[string]string{"collateral": "verified"}
	turin := &evidence.Claims{Platform: evidence.PlatformSNP, Details: verified, TCB: map[string]uint64{"fmc": 1, "bootloader": 9, "tee": 9, "snp": 9, "microcode": 9}}
	if r := s.Check(turin); r == nil || r.Check != CheckTCB || !strings.Contains(r.Reason, "fmc is 1") {
		t.Errorf("Turin FMC below the minimum: %v", r)
	}
	milan := &evidence.Claims{Platform: evidence.PlatformSNP, Details: verified, TCB: map[string]uint64{"bootloader": 9, "tee": 9, "snp": 9, "microcode": 9}}
	if r := s.Check(milan); r == nil || r.Check != CheckTCB || !strings.Contains(r.Reason, "not reported") {
		t.Errorf("Milan evidence under an FMC minimum: %v", r)
	}
}
