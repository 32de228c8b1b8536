package host

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
)

// DeployOptions is one confidential deployment through an agent.
type DeployOptions struct {
	Backend  string
	Limits   Limits
	Name     string
	Verifier delivery.Verifier
	Delivery delivery.Delivery
	// OnKeep and OnVerified, if set, are told of progress.
	OnKeep     func(*Keep)
	OnVerified func(*delivery.Verified)
}

// Deploy runs the confidential delivery protocol against the agent: nonce,
// a check of the secrets against those the package's config declares,
// create, verify the keep's evidence (nothing is sent to a keep that fails
// verification), attach, TLS to the keep with its key pinned, package and
// secrets, output. When any step after the keep was created fails, the
// keep is stopped before Deploy returns. It returns the keep as created and
// the workload's result.
func (c *Client) Deploy(ctx context.Context, o DeployOptions) (*Keep, *delivery.Result, error) {
	art := o.Delivery.Artifact
	if art == nil {
		return nil, nil, errors.New("deploy: no package")
	}
	// Refuse before asking for a keep when the secrets are not exactly
	// those the package's config declares (the keep checks again).
	if _, err := delivery.CheckSecrets(art, o.Delivery.Secrets); err != nil {
		return nil, nil, fmt.Errorf("deploy: %w", err)
	}
	sess, err := delivery.NewSession()
	if err != nil {
		return nil, nil, err
	}
	nonce, err := o.Verifier.Nonce(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("nonce: %w", err)
	}
	k, err := c.Create(ctx, &CreateRequest{Backend: o.Backend, Nonce: nonce, Digest: art.Digest.String(),
		ClientKey: sess.KeyHash, Limits: o.Limits, Name: o.Name})
	if err != nil {
		return nil, nil, err
	}
	// From here every failure stops the keep: a keep whose deployer gave
	// up (refused evidence, a relay in the middle, a broken channel, a
	// cancelled context) must not sit ready until the attach timeout.
	delivered := false
	defer func() {
		if !delivered {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
			defer cancel()
			c.Stop(sctx, k.ID)
		}
	}()
	if o.OnKeep != nil {
		o.OnKeep(k)
	}
	hello, _, err := delivery.ParseHello(k.Hello)
	if err != nil {
		return k, nil, fmt.Errorf("keep %s: %w", k.ID, err)
	}
	v, err := o.Verifier.Verify(ctx, hello, nonce, art.Digest.String())
	if err != nil {
		return k, nil, fmt.Errorf("keep %s: %w", k.ID, err)
	}
	if o.OnVerified != nil {
		o.OnVerified(v)
	}
	conn, err := c.Attach(ctx, k.ID)
	if err != nil {
		return k, nil, err
	}
	res, err := sess.Deliver(ctx, conn, v, o.Delivery)
	if err != nil {
		return k, nil, fmt.Errorf("keep %s: %w", k.ID, err)
	}
	delivered = true
	return k, res, nil
}
