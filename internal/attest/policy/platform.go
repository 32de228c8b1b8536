package policy

import (
	"fmt"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/verify"
)

// HardwareChecks are the settings of a [platforms.snp] or [platforms.tdx]
// table that decide on the hardware report's own fields. The verifier
// applies them (verify.SNPPolicy); leaving them out gives the safe
// defaults. Each names the platform it applies to.
type HardwareChecks struct {
	// VMPL lists the SEV-SNP VM privilege levels a report may come from;
	// empty: only 0.
	VMPL []uint32 `toml:"vmpl"`
}

// check refuses settings out of range or for the other platform; the
// error starts with the key's name.
func (h *HardwareChecks) check(platform string) error {
	if platform != evidence.PlatformSNP && len(h.VMPL) > 0 {
		return fmt.Errorf("vmpl: an SEV-SNP setting, not for %s", platform)
	}
	for _, v := range h.VMPL {
		if v > 3 {
			return fmt.Errorf("vmpl: %d is not a VM privilege level (0 to 3)", v)
		}
	}
	return nil
}

// VerifyOptions returns the verifier's options for evidence of platform
// under this snapshot: the simulation roots it trusts and its checks on
// the report's fields. The caller adds the time and where collateral
// comes from.
func (s *Snapshot) VerifyOptions(platform string) verify.Options {
	o := verify.Options{SimRoots: s.SimRoots[platform]}
	pl := s.Policy.Platforms[platform]
	if pl == nil {
		return o
	}
	if platform == evidence.PlatformSNP {
		o.SNP = verify.SNPPolicy{VMPLs: pl.VMPL}
	}
	return o
}
