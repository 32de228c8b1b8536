package verify

import (
	"errors"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/tee/sim"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
)

// TestSimSNPCollateral runs simulated SEV-SNP evidence through the same CRL
// check as real evidence, with the collateral the simulation CA publishes.
func TestSimSNPCollateral(t *testing.T) {
	c, other := ca(t, testCA), ca(t, otherCA)
	coll, err := c.Collateral()
	if err != nil {
		t.Fatal(err)
	}
	otherColl, err := other.Collateral()
	if err != nil {
		t.Fatal(err)
	}
	env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{})
	opts := trusting(c)
	opts.SimCollateral = coll
	cl, err := Envelope(env, opts)
	if err != nil {
		t.Fatal(err)
	}
	if cl.Details["collateral"] != "verified" || cl.Details["crl_next_update"] == "" {
		t.Errorf("details %v", cl.Details)
	}
	// A VLEK-signed report is checked against the VLEK CRL (the ASVK's).
	vl, err := Envelope(simEnvelope(t, c, evidence.PlatformSNP, simOpts{snp: sim.SNPOptions{VLEK: true}}), opts)
	if err != nil || vl.Details["collateral"] != "verified" || vl.Details["signing_key"] != "VLEK" {
		t.Errorf("VLEK: %v, details %v", err, vl.Details)
	}
	// The real-evidence source is not used for simulated evidence.
	opts.Collateral = collateral.Map{}
	if _, err := Envelope(env, opts); err != nil {
		t.Errorf("with an empty real source: %v", err)
	}
	revoking, err := c.RevokingCollateral()
	if err != nil {
		t.Fatal(err)
	}
	crlURL := kds.CrlLinkByKey("Milan", abi.VcekReportSigner)
	for name, src := range map[string]collateral.Source{
		"CRL missing":              collateral.Map{},
		"ASK revoked":              revoking,
		"CRL signed by another CA": collateral.Map{crlURL: otherColl[crlURL]},
		"CRL not a CRL":            collateral.Map{crlURL: {Body: []byte("<html>rate limited</html>")}},
	} {
		t.Run(name, func(t *testing.T) {
			opts := trusting(c)
			opts.SimCollateral = src
			_, err := Envelope(env, opts)
			var ve *Error
			if !errors.As(err, &ve) || ve.Check != CheckCollateral || !strings.Contains(err.Error(), "CRL") {
				t.Errorf("got %v, want a collateral refusal", err)
			}
		})
	}
	// Without any simulation collateral the claims say so.
	cl, err = Envelope(env, trusting(c))
	if err != nil || cl.Details["collateral"] != "none" {
		t.Errorf("no collateral: %v, details %v", err, cl.Details)
	}
}
