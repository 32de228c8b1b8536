package verify

import (
	"slices"
	"strconv"
	"strings"

	spb "github.com/google/go-sev-guest/proto/sevsnp"
)

// CheckVMPL names a refusal of an SEV-SNP report requested from a VM
// privilege level the policy does not allow.
const CheckVMPL = "vmpl"

// SNPPolicy is what the caller's policy decides on an SEV-SNP report's
// own fields, beyond its signature chain. The zero value is the safe
// default.
type SNPPolicy struct {
	// VMPLs are the VM privilege levels (0 to 3) a report may come from.
	// Empty: only VMPL 0, the guest's most privileged level, where the
	// measured keep runs; a report from another level was asked for by
	// code the launch measurement does not cover.
	VMPLs []uint32
}

func (p *SNPPolicy) vmpls() []uint32 {
	if len(p.VMPLs) == 0 {
		return []uint32{0}
	}
	return p.VMPLs
}

// checkSNPFields decides on the fields of a report whose signature
// verified.
func checkSNPFields(report *spb.Report, p *SNPPolicy) error {
	if v := report.GetVmpl(); !slices.Contains(p.vmpls(), v) {
		return fail(CheckVMPL, "SEV-SNP report was requested at VMPL %d; the policy allows VMPL %s (code at a less privileged level than the measured keep could have asked for it)", v, joinUints(p.vmpls()))
	}
	return nil
}

func joinUints(v []uint32) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatUint(uint64(x), 10)
	}
	return strings.Join(s, ", ")
}
