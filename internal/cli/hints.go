package cli

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/castellan-dev/castellan/internal/attest/client"
	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/keepcert"
)

// Hints that name the flag a refusal is missing. Each refusal keeps its own
// error line; the hint says what to pass (or to change) to get past it.
const (
	hintAttestCA = "pass --attest-ca with the attestation service's CA certificate (ca.pem in its --state-dir)"
	hintVerifyCA = "pass --ca with the CA certificate of the attestation service that issued the keep's certificate (ca.pem in its --state-dir)"
	// A keep run without an attestation service has a self-signed
	// certificate; a simulated or no-TEE keep is insecure by design.
	hintAllowInsecure  = "pass --allow-insecure to accept a keep that is not attested by a TEE (no TEE, simulated hardware, or self-signed; development only)"
	hintDeployInsecure = "pass --insecure to accept a keep whose certificate says insecure (no TEE or simulated hardware; development only)"
	hintPolicyInsecure = "%s refuses insecure keeps: for development, allow_insecure = true accepts platform none (no TEE), and sim_roots under [platforms.snp] or [platforms.tdx] accept simulated evidence ('castellan attest dev-policy' writes such a policy)"
)

// unknownAuthority reports whether err is a TLS peer whose certificate
// chains to no root given.
func unknownAuthority(err error) bool {
	var ua x509.UnknownAuthorityError
	return errors.As(err, &ua)
}

// refusedCheck returns the check a refusal names ("insecure", "chain", ...)
// whether it came from keepcert, the attestation service or a delivery
// verifier, or "".
func refusedCheck(err error) string {
	var ke *keepcert.Error
	var re *client.RefusedError
	var ve *delivery.VerificationError
	switch {
	case errors.As(err, &ve):
		return ve.Check
	case errors.As(err, &re):
		return re.Check
	case errors.As(err, &ke):
		return ke.Check
	}
	return ""
}

// serviceError marks an error of the attestation service's side of a
// deployment, so that a TLS failure there is not taken for the host
// agent's.
type serviceError struct{ err error }

func (e *serviceError) Error() string { return e.err.Error() }
func (e *serviceError) Unwrap() error { return e.err }

// markedVerifier tags the errors of the verifier it wraps as serviceError.
type markedVerifier struct{ delivery.Verifier }

var _ delivery.Verifier = markedVerifier{}

func (v markedVerifier) Nonce(ctx context.Context) ([]byte, error) {
	n, err := v.Verifier.Nonce(ctx)
	if err != nil {
		return nil, &serviceError{err}
	}
	return n, nil
}

func (v markedVerifier) Verify(ctx context.Context, h *delivery.Hello, nonce []byte, digest string) (*delivery.Verified, error) {
	r, err := v.Verifier.Verify(ctx, h, nonce, digest)
	if err != nil {
		var ve *delivery.VerificationError
		if errors.As(err, &ve) {
			return nil, err // a refusal, reported as such
		}
		return nil, &serviceError{err}
	}
	return r, nil
}

// deployHint names the fix for a deployment's failed verification or a
// failure to reach the attestation service, or returns "".
func deployHint(err error, do *deployOptions) string {
	var se *serviceError
	if errors.As(err, &se) && unknownAuthority(err) {
		return hintAttestCA
	}
	var ve *delivery.VerificationError
	if !errors.As(err, &ve) || ve.Check != keepcert.CheckInsecure {
		return ""
	}
	switch {
	case do.remote.policyFile != "":
		return fmt.Sprintf(hintPolicyInsecure, do.remote.policyFile)
	case strings.HasPrefix(ve.Reason, "attestation service:"):
		// The service's policy refused before issuing a certificate.
		return fmt.Sprintf(hintPolicyInsecure, "the attestation service's policy")
	}
	return hintDeployInsecure
}
