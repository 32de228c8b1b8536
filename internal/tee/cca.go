package tee

import (
	"context"
	"fmt"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/google/go-configfs-tsm/configfs/configfsi"
)

// providerCCAGuest is the configfs-tsm provider of Linux's Arm CCA guest
// driver (drivers/virt/coco/arm-cca-guest), which writes the CCA
// attestation token to outblob.
const providerCCAGuest = "arm_cca_guest"

// CCA is the backend inside an Arm CCA realm: the attestation token comes
// from configfs-tsm, the only interface the kernel offers realms.
type CCA struct {
	kernelSource
}

var _ Backend = (*CCA)(nil)

// NewCCA returns the cca backend reading configfs-tsm at tsmRoot ("" = the default).
func NewCCA(tsmRoot string) *CCA { return &CCA{kernelSource: kernelSource{TSMRoot: tsmRoot}} }

// WithTSM sets the configfs-tsm client (tests).
func (c *CCA) WithTSM(t configfsi.Client) *CCA { c.TSM = t; return c }

func (*CCA) Name() string     { return NameCCA }
func (*CCA) Platform() string { return evidence.PlatformCCA }

func (c *CCA) tsmRoot() string {
	if c.TSMRoot != "" {
		return c.TSMRoot
	}
	return DefaultTSMRoot
}

func (c *CCA) Available() error {
	t, ok := c.tsm()
	if !ok {
		return fmt.Errorf("no %s/report: not inside an Arm CCA realm (Linux 6.13+ has the arm_cca_guest provider)", c.tsmRoot())
	}
	p, err := provider(t)
	if err != nil {
		return fmt.Errorf("%s/report: %w", c.tsmRoot(), err)
	}
	if p != providerCCAGuest {
		return fmt.Errorf("%s/report provider is %q: not an Arm CCA realm", c.tsmRoot(), p)
	}
	return nil
}

// Evidence returns the CCA attestation token whose realm challenge is rd.
func (c *CCA) Evidence(ctx context.Context, rd [64]byte) ([]byte, [][]byte, error) {
	t, ok := c.tsm()
	if !ok {
		return nil, nil, fmt.Errorf("no %s/report: not inside an Arm CCA realm", c.tsmRoot())
	}
	resp, err := tsmReport(t, providerCCAGuest, rd, false)
	if err != nil {
		return nil, nil, err
	}
	if len(resp.OutBlob) == 0 || len(resp.OutBlob) > evidence.MaxEvidenceSize {
		return nil, nil, fmt.Errorf("CCA token is %d bytes, want 1 to %d", len(resp.OutBlob), evidence.MaxEvidenceSize)
	}
	return resp.OutBlob, nil, nil
}
