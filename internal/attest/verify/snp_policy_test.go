package verify

import (
	"errors"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

// TestSNPVMPL is the attack of issue 10, defect 1: a report requested from
// VMPL 1 or 3, otherwise valid and signed by a trusted VCEK, must not be
// accepted, since code below the measured keep's privilege level could
// have asked for it. Only a policy that lists the level accepts it.
func TestSNPVMPL(t *testing.T) {
	c := ca(t, testCA)
	for _, vmpl := range []uint32{1, 3} {
		env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{snp: sim.SNPOptions{VMPL: vmpl}})
		_, err := Envelope(env, trusting(c))
		var ve *Error
		if !errors.As(err, &ve) || ve.Check != CheckVMPL || !strings.Contains(err.Error(), "VMPL") {
			t.Errorf("VMPL %d under the default policy: got %v, want a %s refusal naming VMPL", vmpl, err, CheckVMPL)
		}
		opts := trusting(c)
		opts.SNP.VMPLs = []uint32{0, vmpl}
		if _, err := Envelope(env, opts); err != nil {
			t.Errorf("VMPL %d under a policy that lists it: %v", vmpl, err)
		}
	}
	// VMPL 0 stays accepted by default, and is refused by a policy that
	// lists only another level.
	env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{})
	if _, err := Envelope(env, trusting(c)); err != nil {
		t.Fatalf("VMPL 0: %v", err)
	}
	opts := trusting(c)
	opts.SNP.VMPLs = []uint32{2}
	if _, err := Envelope(env, opts); err == nil || !strings.Contains(err.Error(), "VMPL 0") {
		t.Errorf("VMPL 0 under a policy of VMPL 2: %v", err)
	}
}
