package verify

import (
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
)

// Checks an SEV-SNP report's fields fail.
const (
	// CheckVMPL: the report was requested from a VM privilege level the
	// policy does not allow.
	CheckVMPL = "vmpl"
	// CheckReportFields: a field of the report (guest policy, platform
	// info, firmware versions, TCB relations, host data, ID block) is not
	// what the policy requires.
	CheckReportFields = "report_fields"
	// CheckTCB: the LAUNCH_TCB is below the policy's minimum TCB; the
	// same name as the policy's refusal of a REPORTED_TCB below it.
	CheckTCB = "tcb"
)

// SNPPolicy is what the caller's policy decides on an SEV-SNP report's own
// fields, beyond its signature chain and the claims Snapshot.Check sees
// (measurement, reported TCB minimum, debug). The zero value is the safe
// default: VMPL 0 only; no migration agent, no CXL; SMT allowed; committed
// firmware equal to the current one; any host data, no ID block required.
// docs/attest.md has the decision for every field of the report.
type SNPPolicy struct {
	// VMPLs are the VM privilege levels (0 to 3) a report may come from.
	// Empty: only VMPL 0, the guest's most privileged level, where the
	// measured keep runs; a report from another level was asked for by
	// code the launch measurement does not cover.
	VMPLs []uint32
	// AllowMigrateMA accepts a guest policy that allows a migration agent
	// (which could move the guest's memory to another machine).
	AllowMigrateMA bool
	// ForbidSMT refuses a guest policy that allows SMT and a platform that
	// has it enabled (sibling hyper-threads share caches with the host).
	ForbidSMT bool
	// RequireSingleSocket requires the guest policy's SINGLE_SOCKET bit.
	RequireSingleSocket bool
	// AllowCXL accepts a guest policy that allows CXL devices or memory.
	AllowCXL bool
	// RequireCiphertextHiding requires ciphertext hiding for DRAM in the
	// platform info.
	RequireCiphertextHiding bool
	// RequireAliasCheck requires the platform's memory alias check to have
	// completed (the BadRAM mitigation, AMD-SB-3015).
	RequireAliasCheck bool
	// AllowProvisionalFirmware accepts a committed TCB, firmware version
	// and build below the current ones (firmware loaded but not committed,
	// which the host can roll back). Off: committed must equal current.
	AllowProvisionalFirmware bool
	// MinFirmware is the minimum firmware API version (major<<8 | minor)
	// the report's CURRENT version must reach; MinBuild its build.
	MinFirmware uint16
	MinBuild    uint8
	// MinPolicyABI is the minimum ABI version (major<<8 | minor) the
	// guest's policy must have required at launch.
	MinPolicyABI uint16
	// MinGuestSVN is the minimum GUEST_SVN (from the ID block).
	MinGuestSVN uint32
	// MinLaunchTCB is the minimum security version per TCB component
	// (bootloader, tee, snp, microcode; Turin also fmc) the LAUNCH_TCB must
	// reach: the policy's min_tcb, which the claims check on the REPORTED_TCB.
	// A guest launched on firmware below it may have had its secrets,
	// VMPCKs among them, read by the host before an update, and the host
	// can then ask the new firmware for reports in the guest's name.
	MinLaunchTCB map[string]uint64
	// HostData is the HOST_DATA the report must carry (32 bytes); nil:
	// any (the claims show it).
	HostData []byte
	// FamilyID and ImageID are the ID block values the report must carry
	// (16 bytes each); nil: any.
	FamilyID, ImageID []byte
	// IDKeyDigests and AuthorKeyDigests are SHA-384 digests of trusted ID
	// block signing keys and author keys (SEV-SNP public key format). Any
	// listed: the guest must have been launched with an ID block signed by
	// one of the ID keys, or by an ID key that one of the author keys signed.
	IDKeyDigests, AuthorKeyDigests [][]byte
}

func (p *SNPPolicy) vmpls() []uint32 {
	if len(p.VMPLs) == 0 {
		return []uint32{0}
	}
	return p.VMPLs
}

// validateOptions are go-sev-guest's field checks for this policy.
func (p *SNPPolicy) validateOptions() *validate.Options {
	o := &validate.Options{
		GuestPolicy: abi.SnpPolicy{
			ABIMajor:     uint8(p.MinPolicyABI >> 8),
			ABIMinor:     uint8(p.MinPolicyABI),
			SMT:          !p.ForbidSMT,
			MigrateMA:    p.AllowMigrateMA,
			Debug:        true, // decided on the claims (policy.Snapshot.Check), with its own reason
			SingleSocket: p.RequireSingleSocket,
			CXLAllowed:   p.AllowCXL,
		},
		MinimumGuestSvn:           p.MinGuestSVN,
		HostData:                  p.HostData,
		FamilyID:                  p.FamilyID,
		ImageID:                   p.ImageID,
		MinimumBuild:              p.MinBuild,
		MinimumVersion:            p.MinFirmware,
		PermitProvisionalFirmware: p.AllowProvisionalFirmware,
		PlatformInfo: &abi.SnpPlatformInfo{
			SMTEnabled:                  !p.ForbidSMT,
			TSMEEnabled:                 true,
			CiphertextHidingDRAMEnabled: p.RequireCiphertextHiding,
			AliasCheckComplete:          p.RequireAliasCheck,
			TIOEnabled:                  false,
		},
		TrustedIDKeyHashes:     p.IDKeyDigests,
		TrustedAuthorKeyHashes: p.AuthorKeyDigests,
		RequireIDBlock:         len(p.IDKeyDigests) > 0 || len(p.AuthorKeyDigests) > 0,
	}
	return o
}

// checkSNPFields decides on the fields of a report whose signature and
// chain verified, and returns what it decided on as claim details.
func checkSNPFields(report *spb.Report, c *snpChain, p *SNPPolicy) (map[string]string, error) {
	if v := report.GetVmpl(); !slices.Contains(p.vmpls(), v) {
		return nil, fail(CheckVMPL, "SEV-SNP report was requested at VMPL %d; the policy allows VMPL %s (code at a less privileged level than the measured keep could have asked for it)", v, joinUints(p.vmpls()))
	}
	chain := &spb.CertificateChain{VcekCert: c.vcek.Raw}
	if c.key == abi.VlekReportSigner {
		chain = &spb.CertificateChain{VlekCert: c.vcek.Raw}
	}
	att := &spb.Attestation{Report: report, CertificateChain: chain}
	if err := validate.SnpAttestation(att, p.validateOptions()); err != nil {
		return nil, fail(CheckReportFields, "SEV-SNP report: %s", strings.ReplaceAll(err.Error(), "; ", ", "))
	}
	if err := checkLaunchTCB(report.GetLaunchTcb(), c.productLine, p.MinLaunchTCB); err != nil {
		return nil, err
	}
	return snpDetails(report, c), nil
}

// checkLaunchTCB refuses a LAUNCH_TCB with a component below min (a
// component min names that the product line's layout lacks is refused too).
func checkLaunchTCB(launch uint64, productLine string, min map[string]uint64) error {
	comps := make([]string, 0, len(min))
	for k := range min {
		comps = append(comps, k)
	}
	slices.Sort(comps)
	have := snpTCB(productLine, launch)
	for _, k := range comps {
		got, ok := have[k]
		if !ok {
			return fail(CheckTCB, "SEV-SNP report: LAUNCH_TCB has no component %s", k)
		}
		if got < min[k] {
			return fail(CheckTCB, "SEV-SNP report: LAUNCH_TCB %#016x: component %s is %d, below the minimum %d (the guest was launched on older firmware)", launch, k, got, min[k])
		}
	}
	return nil
}

// snpDetails names the report fields the policy decided on, for the claims.
func snpDetails(r *spb.Report, c *snpChain) map[string]string {
	tcb := func(v uint64) string { return fmt.Sprintf("%#016x", v) }
	d := map[string]string{
		"report_version":     strconv.FormatUint(uint64(r.GetVersion()), 10),
		"signing_key":        c.key.String(),
		"vmpl":               strconv.FormatUint(uint64(r.GetVmpl()), 10),
		"guest_policy":       fmt.Sprintf("%#x", r.GetPolicy()),
		"platform_info":      fmt.Sprintf("%#x", r.GetPlatformInfo()),
		"guest_svn":          strconv.FormatUint(uint64(r.GetGuestSvn()), 10),
		"firmware":           fmt.Sprintf("%d.%d build %d", r.GetCurrentMajor(), r.GetCurrentMinor(), r.GetCurrentBuild()),
		"firmware_committed": fmt.Sprintf("%d.%d build %d", r.GetCommittedMajor(), r.GetCommittedMinor(), r.GetCommittedBuild()),
		"reported_tcb":       tcb(r.GetReportedTcb()),
		"current_tcb":        tcb(r.GetCurrentTcb()),
		"committed_tcb":      tcb(r.GetCommittedTcb()),
		"launch_tcb":         tcb(r.GetLaunchTcb()),
		"host_data":          hex.EncodeToString(r.GetHostData()),
	}
	if r.GetVersion() >= 5 {
		d["launch_mit_vector"] = fmt.Sprintf("%#x", r.GetLaunchMitVector())
		d["current_mit_vector"] = fmt.Sprintf("%#x", r.GetCurrentMitVector())
	}
	if info, err := abi.ParseSignerInfo(r.GetSignerInfo()); err == nil && info.AuthorKeyEn {
		d["author_key_digest"] = hex.EncodeToString(r.GetAuthorKeyDigest())
	}
	for name, v := range map[string][]byte{"id_key_digest": r.GetIdKeyDigest(), "family_id": r.GetFamilyId(), "image_id": r.GetImageId()} {
		if !allZero(v) {
			d[name] = hex.EncodeToString(v)
		}
	}
	return d
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func joinUints(v []uint32) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatUint(uint64(x), 10)
	}
	return strings.Join(s, ", ")
}
