package verify

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"fmt"
	"strings"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/veraison/ccatoken"
	"github.com/veraison/ccatoken/platform"
	"github.com/veraison/ccatoken/realm"
)

// CCA platform lifecycle states (Arm CCA Security Model, RME system
// lifecycle; the ranges are ccatoken's platform.Lifecycle*).
func ccaLifecycle(v uint16) (debug bool, err error) {
	switch platform.LifeCycleToState(v) {
	case platform.StateSecured:
		return false, nil
	case platform.StateNonCCAPlatformDebug, platform.StateRecoverableCCAPlatformDebug:
		// The platform is being debugged: a debugger can reach the
		// platform's firmware, and with it the realm.
		return true, nil
	default:
		return false, fmt.Errorf("CCA platform lifecycle %#04x (%s): only a secured platform can attest", v, platform.LifeCycleToState(v))
	}
}

// verifyCCA checks an Arm CCA attestation token (the CBOR collection of
// platform and realm tokens): the realm token's signature by the RAK it
// carries, the RAK's binding into the platform token (its challenge is the
// hash of the RAK), and the platform token's signature by a CPAK the
// caller trusts: one of opts.CCAPlatformKeys, or the key of a simulation
// root certificate that is not a CA (the simulated CPAK). It returns the
// realm's claims.
func verifyCCA(raw []byte, opts *Options) (*evidence.Claims, error) {
	if len(raw) > evidence.MaxEvidenceSize {
		return nil, fail(CheckFormat, "CCA token is %d bytes, more than the limit of %d", len(raw), evidence.MaxEvidenceSize)
	}
	ev, err := ccatoken.DecodeAndValidateEvidenceFromCBOR(raw)
	if err != nil {
		return nil, fail(CheckFormat, "CCA token: %v", err)
	}

	type cpak struct {
		key       crypto.PublicKey
		simulated bool
	}
	var keys []cpak
	for _, k := range opts.CCAPlatformKeys {
		keys = append(keys, cpak{key: k})
	}
	for _, c := range opts.SimRoots {
		if isSimCPAK(c) {
			keys = append(keys, cpak{key: c.PublicKey, simulated: true})
		}
	}
	var used *cpak
	var lastErr error
	for i := range keys {
		err := ev.Verify(keys[i].key)
		if err == nil {
			used = &keys[i]
			break
		}
		if !strings.HasPrefix(err.Error(), "unable to verify platform token") {
			// The platform token verified with this CPAK: what failed is
			// the realm token's signature or its binding to the platform.
			return nil, fail(CheckSignature, "CCA token: %v", err)
		}
		lastErr = err
	}
	if used == nil {
		if len(keys) == 0 {
			return nil, fail(CheckChain, "CCA token: the policy lists no trusted CPAK (CCA has no public vendor root: list the platforms' CPAKs)")
		}
		return nil, fail(CheckChain, "CCA token: the platform token is not signed by a CPAK the policy lists (a foreign platform, or an altered token): %v", lastErr)
	}

	p, r := ev.PlatformClaims, ev.RealmClaims
	lifecycle, err := p.GetSecurityLifeCycle()
	if err != nil {
		return nil, fail(CheckFormat, "CCA platform token: lifecycle: %v", err)
	}
	debug, err := ccaLifecycle(lifecycle)
	if err != nil {
		return nil, fail(CheckPlatform, "%v", err)
	}
	challenge, err := r.GetChallenge()
	if err != nil || len(challenge) != 64 {
		return nil, fail(CheckFormat, "CCA realm token: the challenge is %d bytes, want 64 (Castellan's report data)", len(challenge))
	}
	rim, err := r.GetInitialMeasurement()
	if err != nil {
		return nil, fail(CheckFormat, "CCA realm token: initial measurement: %v", err)
	}
	rems, err := r.GetExtensibleMeasurements()
	if err != nil || len(rems) != realm.MaxLenRealmExtendedMeas {
		return nil, fail(CheckFormat, "CCA realm token: %d extensible measurements, want %d", len(rems), realm.MaxLenRealmExtendedMeas)
	}
	rpv, err := r.GetPersonalizationValue()
	if err != nil {
		return nil, fail(CheckFormat, "CCA realm token: personalization value: %v", err)
	}
	implID, err := p.GetImplID()
	if err != nil {
		return nil, fail(CheckFormat, "CCA platform token: implementation ID: %v", err)
	}
	instID, err := p.GetInstID()
	if err != nil {
		return nil, fail(CheckFormat, "CCA platform token: instance ID: %v", err)
	}
	config, err := p.GetConfig()
	if err != nil {
		return nil, fail(CheckFormat, "CCA platform token: config: %v", err)
	}
	sw, err := p.GetSoftwareComponents()
	if err != nil {
		return nil, fail(CheckFormat, "CCA platform token: software components: %v", err)
	}

	c := &evidence.Claims{
		Platform:    evidence.PlatformCCA,
		Simulated:   used.simulated,
		Measurement: bytes.Clone(rim),
		Debug:       debug,
		TCB:         map[string]uint64{},
		Identity: map[string][]byte{
			"personalization":      bytes.Clone(rpv),
			"platform_impl_id":     bytes.Clone(implID),
			"platform_instance_id": bytes.Clone(instID),
			"platform_config":      bytes.Clone(config),
		},
	}
	for i, m := range rems {
		c.Identity[fmt.Sprintf("rem.%d", i)] = bytes.Clone(m)
	}
	for i, s := range sw {
		v, err := s.GetMeasurementValue()
		if err != nil {
			return nil, fail(CheckFormat, "CCA platform token: software component %d: %v", i, err)
		}
		c.Identity[fmt.Sprintf("platform_sw.%d", i)] = bytes.Clone(v)
	}
	copy(c.ReportData[:], challenge)
	identityDetails(c)
	c.Details["lifecycle"] = fmt.Sprintf("%#04x %s", lifecycle, platform.LifeCycleToState(lifecycle))
	return c, nil
}

// isSimCPAK reports whether a simulation root certificate is a simulated
// CPAK: a certificate that is not a CA, with an ECDSA key, from a
// Castellan simulation CA (package tee/sim writes one into its roots).
func isSimCPAK(c *x509.Certificate) bool {
	if c == nil || c.IsCA || !isSimulated(c) {
		return false
	}
	_, ok := c.PublicKey.(*ecdsa.PublicKey)
	return ok
}
