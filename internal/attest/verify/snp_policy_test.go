package verify

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
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

// TestSNPReportFields checks each decision on an SEV-SNP report's fields:
// a simulated report, validly signed under the trusted root but with one
// field changed, is refused under the default (or a stricter) policy with a
// reason naming the field, and accepted where the policy allows it.
func TestSNPReportFields(t *testing.T) {
	c := ca(t, testCA)
	le := binary.LittleEndian
	setBit := func(off int, bit uint) func([]byte) {
		return func(r []byte) { le.PutUint64(r[off:], le.Uint64(r[off:])|1<<bit) }
	}
	const (
		offPolicy, offPlatformInfo, offSignerInfo = 0x08, 0x40, 0x48
		offHostData, offIDKey, offCommittedTCB    = 0xC0, 0xE0, 0x1E0
		offCommittedBuild                         = 0x1EC
	)
	idKey := bytes.Repeat([]byte{0x1d}, 48)
	tests := []struct {
		name   string
		edit   func([]byte)
		strict func(*SNPPolicy) // nil: the default policy
		want   string           // in the refusal's reason
		allow  func(*SNPPolicy) // a policy that accepts it; nil: none
	}{
		{"migration agent allowed", setBit(offPolicy, 18), nil, "migration agent", func(p *SNPPolicy) { p.AllowMigrateMA = true }},
		{"CXL allowed", setBit(offPolicy, 21), nil, "CXL", func(p *SNPPolicy) { p.AllowCXL = true }},
		{"SMT where the policy forbids it", nil, func(p *SNPPolicy) { p.ForbidSMT = true }, "symmetric multithreading", nil},
		{"SMT enabled on the platform where the policy forbids it", func(r []byte) {
			le.PutUint64(r[offPolicy:], le.Uint64(r[offPolicy:])&^(1<<16))
		}, func(p *SNPPolicy) { p.ForbidSMT = true }, "SMT enabled", nil},
		{"no single-socket restriction", nil, func(p *SNPPolicy) { p.RequireSingleSocket = true }, "single socket", nil},
		{"SEV-TIO enabled", setBit(offPlatformInfo, 7), nil, "SEV-TIO", nil},
		{"no ciphertext hiding", nil, func(p *SNPPolicy) { p.RequireCiphertextHiding = true }, "ciphertext hiding", nil},
		{"no memory alias check", nil, func(p *SNPPolicy) { p.RequireAliasCheck = true }, "alias check", nil},
		{"host data other than expected", func(r []byte) { copy(r[offHostData:], "other host data") },
			func(p *SNPPolicy) { p.HostData = bytes.Repeat([]byte{7}, 32) }, "HOST_DATA", nil},
		{"committed TCB below current", func(r []byte) { le.PutUint64(r[offCommittedTCB:], 0) }, nil, "COMMITTED_TCB",
			func(p *SNPPolicy) { p.AllowProvisionalFirmware = true }},
		{"committed build below current", func(r []byte) { r[offCommittedBuild] = 20 }, nil, "committed build",
			func(p *SNPPolicy) { p.AllowProvisionalFirmware = true }},
		{"firmware below the minimum", nil, func(p *SNPPolicy) { p.MinFirmware = 1<<8 | 56 }, "firmware API version", nil},
		{"firmware build below the minimum", nil, func(p *SNPPolicy) { p.MinBuild = 22 }, "build number 21", nil},
		{"guest policy ABI below the minimum", nil, func(p *SNPPolicy) { p.MinPolicyABI = 1<<8 | 56 }, "ABI version", nil},
		{"guest SVN below the minimum", nil, func(p *SNPPolicy) { p.MinGuestSVN = 2 }, "GUEST_SVN", nil},
		{"no ID block where one is required", nil, func(p *SNPPolicy) { p.IDKeyDigests = [][]byte{idKey} }, "ID key not trusted", nil},
		{"ID block signed by an untrusted key", func(r []byte) { copy(r[offIDKey:], bytes.Repeat([]byte{0xee}, 48)) },
			func(p *SNPPolicy) { p.IDKeyDigests = [][]byte{idKey} }, "ID key not trusted", nil},
		{"untrusted author key", func(r []byte) {
			le.PutUint32(r[offSignerInfo:], le.Uint32(r[offSignerInfo:])|1) // AUTHOR_KEY_EN
		}, func(p *SNPPolicy) { p.AuthorKeyDigests = [][]byte{idKey} }, "not trusted", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{snp: sim.SNPOptions{Edit: tc.edit}})
			opts := trusting(c)
			if tc.strict != nil {
				tc.strict(&opts.SNP)
			}
			_, err := Envelope(env, opts)
			var ve *Error
			if !errors.As(err, &ve) || ve.Check != CheckReportFields || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a %s refusal naming %q", err, CheckReportFields, tc.want)
			}
			if tc.allow != nil {
				opts := trusting(c)
				tc.allow(&opts.SNP)
				if _, err := Envelope(env, opts); err != nil {
					t.Errorf("under a policy that allows it: %v", err)
				}
			}
		})
	}
	// What the ID block checks accept: a report whose ID key is trusted.
	env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{snp: sim.SNPOptions{Edit: func(r []byte) { copy(r[offIDKey:], idKey) }}})
	opts := trusting(c)
	opts.SNP.IDKeyDigests = [][]byte{idKey}
	opts.SNP.HostData = make([]byte, 32)
	cl, err := Envelope(env, opts)
	if err != nil {
		t.Fatalf("trusted ID key: %v", err)
	}
	if cl.Details["id_key_digest"] != hex.EncodeToString(idKey) || cl.Details["vmpl"] != "0" || cl.Details["host_data"] != strings.Repeat("00", 32) {
		t.Errorf("details %v", cl.Details)
	}
}

// TestSNPLaunchTCB: a guest launched on firmware below the policy's minimum
// TCB, whose firmware was then updated (and committed, and its new VCEK
// provisioned), reports a REPORTED_TCB that passes min_tcb; its LAUNCH_TCB
// must be held to the minimum too, since the host may have read the guest's
// secrets (its VMPCKs among them) under the old firmware.
func TestSNPLaunchTCB(t *testing.T) {
	c := ca(t, testCA)
	const offLaunchTCB = 0x1F0
	old := sim.DefaultSNPTCB
	old.SNP = 8
	oldV, err := old.Version()
	if err != nil {
		t.Fatal(err)
	}
	env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{snp: sim.SNPOptions{Edit: func(r []byte) {
		binary.LittleEndian.PutUint64(r[offLaunchTCB:], oldV)
	}}})
	opts := trusting(c)
	opts.SNP.MinLaunchTCB = map[string]uint64{"snp": uint64(sim.DefaultSNPTCB.SNP)}
	_, err = Envelope(env, opts)
	var ve *Error
	if !errors.As(err, &ve) || ve.Check != CheckTCB || !strings.Contains(err.Error(), "LAUNCH_TCB") || !strings.Contains(err.Error(), "snp is 8") {
		t.Fatalf("launch TCB below the minimum: got %v, want a %s refusal naming LAUNCH_TCB", err, CheckTCB)
	}
	// The same report passes a minimum the launch TCB meets, and a report
	// launched at the current TCB passes the first minimum.
	opts.SNP.MinLaunchTCB = map[string]uint64{"snp": 8, "microcode": uint64(sim.DefaultSNPTCB.Microcode)}
	if _, err := Envelope(env, opts); err != nil {
		t.Errorf("launch TCB at the minimum: %v", err)
	}
	opts.SNP.MinLaunchTCB = map[string]uint64{"snp": uint64(sim.DefaultSNPTCB.SNP)}
	if _, err := Envelope(simEnvelope(t, c, evidence.PlatformSNP, simOpts{}), opts); err != nil {
		t.Errorf("launch TCB equal to the reported one: %v", err)
	}
	// A component the layout does not have is refused, not skipped.
	opts.SNP.MinLaunchTCB = map[string]uint64{"fmc": 1}
	if _, err := Envelope(simEnvelope(t, c, evidence.PlatformSNP, simOpts{}), opts); err == nil || !strings.Contains(err.Error(), "no component fmc") {
		t.Errorf("a component Milan's layout lacks: %v", err)
	}
}
