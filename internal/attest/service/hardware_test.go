package service

import (
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

// TestVMPL is issue 10's defect 1 at the service: an SEV-SNP report from
// VMPL 1 or 3, otherwise valid, gets no certificate, and the refusal names
// the check and the level; a policy that lists the level accepts it and the
// certificate says which level it was.
func TestVMPL(t *testing.T) {
	h := newHarness(t)
	for _, vmpl := range []uint32{1, 3} {
		e := h.mustRefuse(h.body(keepReq{snp: sim.SNPOptions{VMPL: vmpl}}), "vmpl")
		if !strings.Contains(e.Error, "VMPL") {
			t.Errorf("VMPL %d: reason %q", vmpl, e.Error)
		}
	}
	h.setPolicy(func(p string) string {
		return strings.Replace(p, "[platforms.snp]\n", "[platforms.snp]\nvmpl = [0, 3]\n", 1)
	})
	c := h.mustIssue(keepReq{snp: sim.SNPOptions{VMPL: 3}})
	if c.Details["vmpl"] != "3" {
		t.Errorf("certificate details %v", c.Details)
	}
}

// TestHardwareFieldRefusals: the service passes the verifier's field
// checks through with their own names.
func TestHardwareFieldRefusals(t *testing.T) {
	h := newHarness(t)
	h.mustRefuse(h.body(keepReq{snp: sim.SNPOptions{Edit: func(r []byte) { r[0x08+2] |= 1 << 2 }}}), "report_fields") // MIGRATE_MA
	noSEPT := uint64(0)
	h.mustRefuse(h.body(keepReq{platform: evidence.PlatformTDX, tdx: sim.TDXOptions{Attributes: &noSEPT}}), "td_fields")
}
