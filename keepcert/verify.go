package keepcert

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Expect is what a relying party requires of a keep.
type Expect struct {
	// Digest is the workload digest ("sha256:...") the keep must run; empty
	// accepts any workload.
	Digest string
	// Platforms lists the platforms accepted ("snp", "tdx", "none"); empty
	// accepts any platform.
	Platforms []string
	// AllowInsecure accepts certificates whose claims say insecure: platform
	// none, simulated hardware, or self-signed (not attested). Without Roots,
	// it also accepts a self-signed leaf whose claims say not attested.
	AllowInsecure bool
	// Roots are the attestation service CAs to trust.
	Roots *x509.CertPool
	// Now is the time to check validity at; zero means time.Now().
	Now time.Time
}

// Checks named by Error.
const (
	CheckChain    = "chain"    // the chain does not verify to Roots
	CheckClaims   = "claims"   // the claims are missing or malformed
	CheckDigest   = "digest"   // another workload
	CheckPlatform = "platform" // another platform
	CheckInsecure = "insecure" // insecure claims without AllowInsecure
)

// Error is a refusal by VerifyChain, naming the check that failed.
type Error struct {
	Check string
	Err   error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

func refuse(check, format string, a ...any) error {
	return &Error{Check: check, Err: fmt.Errorf(format, a...)}
}

// VerifyChain checks a keep's certificate chain (leaf first, as a TLS peer
// sends it) to exp.Roots and its claims against exp, and returns the claims.
// Errors are *Error.
func VerifyChain(chain []*x509.Certificate, exp Expect) (*Claims, error) {
	if len(chain) == 0 {
		return nil, refuse(CheckChain, "no certificate")
	}
	leaf := chain[0]
	now := exp.Now
	if now.IsZero() {
		now = time.Now()
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	roots := exp.Roots
	if roots == nil {
		if !exp.AllowInsecure {
			return nil, refuse(CheckChain, "no attestation service CA given")
		}
		// Insecure development mode: the self-signed leaf is its own root.
		roots = x509.NewCertPool()
		roots.AddCert(leaf)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, &Error{Check: CheckChain, Err: fmt.Errorf("keep certificate: %w", err)}
	}
	c, err := FromCertificate(leaf)
	if err != nil {
		return nil, &Error{Check: CheckClaims, Err: fmt.Errorf("keep certificate: %w", err)}
	}
	if exp.Roots == nil && c.Attested {
		// Anyone can self-sign claims; only a service's CA makes them attested.
		return nil, refuse(CheckChain, "self-signed keep certificate claims to be attested")
	}
	if exp.Digest != "" && c.WorkloadDigest != exp.Digest {
		return c, refuse(CheckDigest, "keep runs workload %s, expected %s", c.WorkloadDigest, exp.Digest)
	}
	if len(exp.Platforms) > 0 && !slices.Contains(exp.Platforms, c.Platform) {
		return c, refuse(CheckPlatform, "keep runs on platform %s, expected one of %v", c.Platform, exp.Platforms)
	}
	if c.Insecure && !exp.AllowInsecure {
		return c, refuse(CheckInsecure, "keep is insecure (%s) and insecure keeps are not allowed", insecureReason(c))
	}
	return c, nil
}

func insecureReason(c *Claims) string {
	switch {
	case !c.Attested:
		return "not attested"
	case c.Platform == PlatformNone:
		return "no TEE"
	case c.Simulated:
		return "simulated " + c.Platform
	}
	return "marked insecure"
}

// VerifyConnectionState checks the peer of a TLS connection, for a client
// that dialled a keep with InsecureSkipVerify and a relying party check
// instead (keeps are named by their claims, not by host names).
func VerifyConnectionState(cs tls.ConnectionState, exp Expect) (*Claims, error) {
	if len(cs.PeerCertificates) == 0 {
		return nil, refuse(CheckChain, "peer sent no certificate")
	}
	return VerifyChain(cs.PeerCertificates, exp)
}

// VerifyPeerCertificate returns a function for tls.Config.VerifyPeerCertificate
// that accepts only a keep meeting exp (set InsecureSkipVerify too, since
// keeps are not named by host names).
func VerifyPeerCertificate(exp Expect) func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
	return func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
		var chain []*x509.Certificate
		for _, raw := range rawCerts {
			c, err := x509.ParseCertificate(raw)
			if err != nil {
				return refuse(CheckChain, "peer certificate: %v", err)
			}
			chain = append(chain, c)
		}
		_, err := VerifyChain(chain, exp)
		return err
	}
}

var _ error = (*Error)(nil)

// IsCheck reports whether err is a refusal by the named check.
func IsCheck(err error, check string) bool {
	var e *Error
	return errors.As(err, &e) && e.Check == check
}
