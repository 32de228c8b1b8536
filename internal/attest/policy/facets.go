package policy

import (
	"encoding/hex"
	"slices"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
)

// Facets is the policy's view of verified claims facet by facet, for
// results that report each one (the EAR's trustworthiness vector) rather
// than only the first refusal, which Check returns.
type Facets struct {
	PlatformRevoked    bool // the platform is not enabled, or revoked
	TCBBelowMinimum    bool // a component below min_tcb, or not reported; CCA firmware not listed
	TCBRevoked         bool // the TCB matches a revoked_tcb entry
	MeasurementListed  bool // in the measurement database (SGX also by signer; CCA with its REMs)
	MeasurementRevoked bool
	WorkloadListed     bool // named in workloads
	AnyWorkload        bool // workloads = ["any"]
}

// Facets evaluates c against each part of the policy.
func (s *Snapshot) Facets(c *evidence.Claims) Facets {
	f := Facets{AnyWorkload: s.AnyWorkload, WorkloadListed: slices.Contains(s.Policy.Workloads, c.WorkloadDigest)}
	if c.Platform == evidence.PlatformNone {
		return f
	}
	pl := s.Policy.Platforms[c.Platform]
	if pl == nil || pl.Revoked {
		f.PlatformRevoked = true
		return f
	}
	for k, min := range pl.MinTCB {
		if got, ok := c.TCB[k]; !ok || got < min {
			f.TCBBelowMinimum = true
		}
	}
	for _, r := range pl.RevokedTCB {
		if tcbMatches(c.TCB, r) {
			f.TCBRevoked = true
		}
	}
	v := hex.EncodeToString(c.Measurement)
	m, ok := s.Measurements[c.Platform][v]
	f.MeasurementListed, f.MeasurementRevoked = ok, ok && m.Revoked
	switch c.Platform {
	case evidence.PlatformSGX:
		// An enclave not listed by MRENCLAVE may be by signer.
		if !ok {
			r := s.checkSGXSigner(c, v)
			f.MeasurementListed = r == nil || r.Check == CheckRevoked
			f.MeasurementRevoked = r != nil && r.Check == CheckRevoked
		}
	case evidence.PlatformCCA:
		// A realm whose extensible measurements are not the entry's is
		// not the listed one; platform firmware the policy does not list
		// is a TCB below its minimum.
		if ok && checkREMs(c, &m) != nil {
			f.MeasurementListed = false
		}
		if s.checkPlatformClaims(pl, c) != nil {
			f.TCBBelowMinimum = true
		}
	}
	return f
}
