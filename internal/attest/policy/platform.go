package policy

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/verify"
)

// HardwareChecks are the settings of a [platforms.snp] or [platforms.tdx]
// table that decide on the hardware report's own fields; the verifier
// applies them (verify.SNPPolicy). Left out, each has its safe default.
// The `platform` tag says which platform a setting is for.
type HardwareChecks struct {
	// SEV-SNP (docs/attest.md, "SEV-SNP report fields").
	VMPL                     []uint32 `toml:"vmpl" platform:"snp"`
	AllowMigrateMA           bool     `toml:"allow_migrate_ma" platform:"snp"`
	ForbidSMT                bool     `toml:"forbid_smt" platform:"snp"`
	RequireSingleSocket      bool     `toml:"require_single_socket" platform:"snp"`
	AllowCXL                 bool     `toml:"allow_cxl" platform:"snp"`
	RequireCiphertextHiding  bool     `toml:"require_ciphertext_hiding" platform:"snp"`
	RequireAliasCheck        bool     `toml:"require_alias_check" platform:"snp"`
	AllowProvisionalFirmware bool     `toml:"allow_provisional_firmware" platform:"snp"`
	MinFirmware              string   `toml:"min_firmware" platform:"snp"`   // "major.minor"
	MinBuild                 uint8    `toml:"min_build" platform:"snp"`      // firmware build
	MinPolicyABI             string   `toml:"min_policy_abi" platform:"snp"` // "major.minor"
	MinGuestSVN              uint32   `toml:"min_guest_svn" platform:"snp"`
	HostData                 string   `toml:"host_data" platform:"snp"` // 64 hex digits
	FamilyID                 string   `toml:"family_id" platform:"snp"` // 32 hex digits
	ImageID                  string   `toml:"image_id" platform:"snp"`  // 32 hex digits
	IDKeyDigests             []string `toml:"id_key_digests" platform:"snp"`
	AuthorKeyDigests         []string `toml:"author_key_digests" platform:"snp"`

	// TDX (docs/attest.md, "TDX quote fields").
	TCBStatuses     []string `toml:"tcb_statuses" platform:"tdx"`
	AllowSEPTVE     bool     `toml:"allow_sept_ve" platform:"tdx"`
	AllowMigratable bool     `toml:"allow_migratable" platform:"tdx"`
	RTMR0           string   `toml:"rtmr0" platform:"tdx"` // 96 hex digits each
	RTMR1           string   `toml:"rtmr1" platform:"tdx"`
	RTMR2           string   `toml:"rtmr2" platform:"tdx"`
	RTMR3           string   `toml:"rtmr3" platform:"tdx"`
	MRConfigID      string   `toml:"mr_config_id" platform:"tdx"`
	MROwner         string   `toml:"mr_owner" platform:"tdx"`
	MROwnerConfig   string   `toml:"mr_owner_config" platform:"tdx"`
	XFAM            string   `toml:"xfam" platform:"tdx"` // 16 hex digits, little-endian bytes as in the quote

	// RequireCollateral refuses real evidence verified without vendor
	// collateral (AMD's CRL; Intel's TCB info, QE identity and CRLs).
	// Default true.
	RequireCollateral *bool `toml:"require_collateral"`

	snp verify.SNPPolicy
	tdx verify.TDXPolicy
}

// tcbStatuses are the TCB statuses a policy may accept (Intel PCS API v4);
// Revoked is never accepted.
var tcbStatuses = []string{"UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"}

func (h *HardwareChecks) checkTDX() error {
	p := verify.TDXPolicy{AllowSEPTVE: h.AllowSEPTVE, AllowMigratable: h.AllowMigratable}
	for _, st := range h.TCBStatuses {
		if !slices.Contains(tcbStatuses, st) {
			return fmt.Errorf("tcb_statuses: %q is not a TCB status a policy can accept (%s)", st, strings.Join(tcbStatuses, ", "))
		}
		p.TCBStatuses = append(p.TCBStatuses, st)
	}
	var err error
	for _, b := range []struct {
		key, val string
		size     int
		dst      *[]byte
	}{
		{"rtmr0", h.RTMR0, 48, &p.RTMRs[0]}, {"rtmr1", h.RTMR1, 48, &p.RTMRs[1]}, {"rtmr2", h.RTMR2, 48, &p.RTMRs[2]}, {"rtmr3", h.RTMR3, 48, &p.RTMRs[3]},
		{"mr_config_id", h.MRConfigID, 48, &p.MRConfigID}, {"mr_owner", h.MROwner, 48, &p.MROwner}, {"mr_owner_config", h.MROwnerConfig, 48, &p.MROwnerConfig},
		{"xfam", h.XFAM, 8, &p.XFAM},
	} {
		if b.val == "" {
			continue
		}
		if *b.dst, err = hexBytes(b.key, b.val, b.size); err != nil {
			return err
		}
	}
	h.tdx = p
	return nil
}

// check refuses settings out of range or for the other platform, and
// decodes them; the error starts with the key's name.
func (h *HardwareChecks) check(platform string) error {
	v := reflect.ValueOf(h).Elem()
	for i := 0; i < v.NumField(); i++ {
		f := v.Type().Field(i)
		want := f.Tag.Get("platform")
		if want != "" && want != platform && !v.Field(i).IsZero() {
			return fmt.Errorf("%s: a setting for platform %s, not %s", strings.Split(f.Tag.Get("toml"), ",")[0], want, platform)
		}
	}
	if platform == evidence.PlatformTDX {
		return h.checkTDX()
	}
	if platform != evidence.PlatformSNP {
		return nil
	}
	for _, x := range h.VMPL {
		if x > 3 {
			return fmt.Errorf("vmpl: %d is not a VM privilege level (0 to 3)", x)
		}
	}
	p := verify.SNPPolicy{
		VMPLs:                    h.VMPL,
		AllowMigrateMA:           h.AllowMigrateMA,
		ForbidSMT:                h.ForbidSMT,
		RequireSingleSocket:      h.RequireSingleSocket,
		AllowCXL:                 h.AllowCXL,
		RequireCiphertextHiding:  h.RequireCiphertextHiding,
		RequireAliasCheck:        h.RequireAliasCheck,
		AllowProvisionalFirmware: h.AllowProvisionalFirmware,
		MinBuild:                 h.MinBuild,
		MinGuestSVN:              h.MinGuestSVN,
	}
	var err error
	if p.MinFirmware, err = parseVersion("min_firmware", h.MinFirmware); err != nil {
		return err
	}
	if p.MinPolicyABI, err = parseVersion("min_policy_abi", h.MinPolicyABI); err != nil {
		return err
	}
	for _, b := range []struct {
		key, val string
		size     int
		dst      *[]byte
	}{{"host_data", h.HostData, 32, &p.HostData}, {"family_id", h.FamilyID, 16, &p.FamilyID}, {"image_id", h.ImageID, 16, &p.ImageID}} {
		if b.val == "" {
			continue
		}
		if *b.dst, err = hexBytes(b.key, b.val, b.size); err != nil {
			return err
		}
	}
	for _, l := range []struct {
		key  string
		vals []string
		dst  *[][]byte
	}{{"id_key_digests", h.IDKeyDigests, &p.IDKeyDigests}, {"author_key_digests", h.AuthorKeyDigests, &p.AuthorKeyDigests}} {
		for _, s := range l.vals {
			d, err := hexBytes(l.key, s, 48)
			if err != nil {
				return err
			}
			*l.dst = append(*l.dst, d)
		}
	}
	h.snp = p
	return nil
}

// parseVersion reads "major.minor" into major<<8 | minor; "" is 0.
func parseVersion(key, s string) (uint16, error) {
	if s == "" {
		return 0, nil
	}
	maj, min, ok := strings.Cut(s, ".")
	a, err1 := strconv.ParseUint(maj, 10, 8)
	b, err2 := strconv.ParseUint(min, 10, 8)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("%s: %q is not a version major.minor (each 0 to 255)", key, s)
	}
	return uint16(a)<<8 | uint16(b), nil
}

func hexBytes(key, s string, size int) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != size {
		return nil, fmt.Errorf("%s: %q is not %d hex digits (%d bytes)", key, s, 2*size, size)
	}
	return b, nil
}

// CheckCollateral names a refusal of evidence verified without the vendor
// collateral the policy requires.
const CheckCollateral = "collateral"

// checkClaims decides what the verifier left to the policy: whether real
// evidence went without collateral. Simulated evidence is insecure by
// definition; it is checked against its CA's collateral when the CA
// publishes some (a stored CA does, beside its roots file).
func (h *HardwareChecks) checkClaims(c *evidence.Claims) *Refusal {
	if c.Simulated || (h.RequireCollateral != nil && !*h.RequireCollateral) {
		return nil
	}
	if c.Details["collateral"] != "verified" {
		return refuse(CheckCollateral, "the %s evidence was verified without the vendor's collateral (CRLs, TCB status), which the policy requires: give the service network access or an offline collateral folder, or set require_collateral = false", c.Platform)
	}
	return nil
}

// addSimCollateral notes the collateral folder beside a simulation roots
// file, if there is one (sim.CollateralDir).
func (s *Snapshot) addSimCollateral(platform, rootsFile string) {
	dir := filepath.Join(filepath.Dir(rootsFile), "collateral")
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		if s.SimCollateral == nil {
			s.SimCollateral = map[string][]string{}
		}
		s.SimCollateral[platform] = append(s.SimCollateral[platform], dir)
	}
}

// VerifyOptions returns the verifier's options for evidence of platform
// under this snapshot: the simulation roots it trusts and its checks on
// the report's fields. The caller adds the time and where collateral
// comes from.
func (s *Snapshot) VerifyOptions(platform string) verify.Options {
	o := verify.Options{SimRoots: s.SimRoots[platform]}
	if pl := s.Policy.Platforms[platform]; pl != nil {
		o.SNP, o.TDX = pl.snp, pl.tdx
	}
	if dirs := s.SimCollateral[platform]; len(dirs) > 0 {
		var src collateral.Sources
		for _, d := range dirs {
			src = append(src, collateral.Offline(d))
		}
		o.SimCollateral = src
	}
	return o
}
