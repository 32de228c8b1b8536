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
	TCBBelowMinimum    bool // a component below min_tcb, or not reported
	TCBRevoked         bool // the TCB matches a revoked_tcb entry
	MeasurementListed  bool // in the measurement database
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
	m, ok := s.Measurements[c.Platform][hex.EncodeToString(c.Measurement)]
	f.MeasurementListed, f.MeasurementRevoked = ok, ok && m.Revoked
	return f
}
