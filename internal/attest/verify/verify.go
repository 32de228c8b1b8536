// Package verify turns an evidence envelope into claims: it checks the
// hardware report's signature chain up to a trusted root (AMD's ARKs for
// SEV-SNP, Intel's SGX root for TDX, or a Castellan simulation root that the
// caller's policy names), the report's signature, and that the report data
// binds the keep's key, the verifier's nonce and the workload digest.
//
// Real and simulated evidence go through the same code, built on
// go-sev-guest's verify.SnpAttestation and go-tdx-guest's verify.TdxQuote;
// only the trusted roots differ. Policy (TCB minimums, debug, measurements,
// nonce freshness) is not decided here: it is decided on the Claims.
package verify

import (
	"bytes"
	"crypto/subtle"
	"crypto/x509"
	_ "embed"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/google/go-sev-guest/verify/trust"
)

// Names of the checks an Error reports.
const (
	CheckFormat     = "format"      // the envelope or the report is malformed
	CheckPlatform   = "platform"    // unknown or unsupported platform or report kind
	CheckChain      = "chain"       // the certificate chain does not end at a trusted root
	CheckSignature  = "signature"   // the report's signature does not verify
	CheckReportData = "report_data" // the report data does not bind key, nonce and digest
	CheckCollateral = "collateral"  // vendor collateral is missing, stale, or revokes the chain
)

// Error is a failed verification: Check names the step, Err says why.
type Error struct {
	Check string
	Err   error
}

func (e *Error) Error() string {
	return e.Check + ": " + strings.Join(strings.Fields(e.Err.Error()), " ")
}

func (e *Error) Unwrap() error { return e.Err }

func fail(check string, format string, a ...any) *Error {
	return &Error{Check: check, Err: fmt.Errorf(format, a...)}
}

// Options says what to trust.
type Options struct {
	// SimRoots are the simulation roots the caller's policy trusts (see
	// package tee/sim). Empty: simulated evidence is refused.
	SimRoots []*x509.Certificate
	// Now is the time at which certificates must be valid; zero = time.Now().
	Now time.Time
	// AMDRoots replaces the AMD ARK/ASK pairs embedded in go-sev-guest
	// (Milan, Genoa, Turin), by product line. Nil = the embedded ones.
	AMDRoots map[string][]*trust.AMDRootCerts
	// IntelRoots replaces the Intel SGX Root CA. Nil = Intel's root.
	IntelRoots []*x509.Certificate
	// Collateral is where vendor collateral for real evidence comes from:
	// VCEK certificates an envelope lacks, AMD's CRLs, Intel's TCB info,
	// QE identity and CRLs (package collateral: the network behind a disk
	// cache, or an offline folder). Nil: nothing is fetched; an SEV-SNP
	// envelope without its VCEK is refused, and the claims say
	// "collateral": "none", which a policy refuses by default.
	Collateral collateral.Source
	// SimCollateral is the collateral the trusted simulation CAs publish
	// (CRLs, TCB info, QE identity, signed under the simulation roots),
	// used for simulated evidence through the same code as Collateral for
	// real evidence. Nil: simulated evidence is checked without it.
	SimCollateral collateral.Source
	// ChainCache keeps SEV-SNP endorsement chains that verified, so that
	// the next report from the same chip and TCB skips the chain's RSA
	// checks (never the report's signature or its binding). Nil = a
	// process-wide cache of DefaultChainCacheSize chains;
	// NewChainCache(0) turns caching off.
	ChainCache *ChainCache
	// SNP decides on an SEV-SNP report's fields (VMPL, ...); the zero
	// value is the safe default.
	SNP SNPPolicy
	// TDX decides on a TDX quote's fields and Intel's TCB status; the zero
	// value is the safe default.
	TDX TDXPolicy
}

func (o *Options) now() time.Time {
	if o.Now.IsZero() {
		return time.Now()
	}
	return o.Now
}

//go:embed intel_sgx_root_ca.pem
var intelRootPEM []byte

// IntelRoot is Intel's SGX Root CA, the root of every TDX PCK chain (the
// same certificate go-tdx-guest embeds).
var IntelRoot = func() *x509.Certificate {
	b, _ := pem.Decode(intelRootPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		panic(err)
	}
	return c
}()

// Envelope verifies env and returns its claims. For PlatformNone there is
// no report: the claims carry the key, nonce and digest, Platform none, and
// are insecure by definition.
func Envelope(env *evidence.Envelope, opts Options) (*evidence.Claims, error) {
	if env == nil {
		return nil, fail(CheckFormat, "no envelope")
	}
	want := evidence.ReportData(env.Key, env.Nonce, env.WorkloadDigest)
	var c *evidence.Claims
	switch env.Platform {
	case evidence.PlatformNone:
		if len(env.Evidence) != 0 || len(env.Endorsements) != 0 {
			return nil, fail(CheckFormat, "platform none carries no evidence or endorsements")
		}
		c = &evidence.Claims{Platform: evidence.PlatformNone, ReportData: want}
	default:
		var err error
		if c, err = Report(env.Platform, env.Evidence, env.Endorsements, opts); err != nil {
			return nil, err
		}
		if subtle.ConstantTimeCompare(c.ReportData[:], want[:]) != 1 {
			return nil, fail(CheckReportData, "the report data does not bind this key, nonce and workload digest")
		}
	}
	c.Key = bytes.Clone(env.Key)
	c.Nonce = bytes.Clone(env.Nonce)
	c.WorkloadDigest = env.WorkloadDigest
	return c, nil
}

// Report verifies a raw SEV-SNP report or TDX quote and its endorsements
// (DER, leaf first; a TDX quote carries its chain inside) and returns the
// claims, without the binding check that Envelope adds: the caller learns
// the ReportData and must compare it itself.
func Report(platform string, raw []byte, endorsements [][]byte, opts Options) (*evidence.Claims, error) {
	switch platform {
	case evidence.PlatformSNP:
		return verifySNP(raw, endorsements, &opts)
	case evidence.PlatformTDX:
		if len(endorsements) != 0 {
			return nil, fail(CheckFormat, "a TDX quote carries its certificates inside; the envelope has %d endorsements", len(endorsements))
		}
		return verifyTDX(raw, &opts)
	case evidence.PlatformNone:
		return nil, fail(CheckPlatform, "platform none has no report to verify")
	default:
		return nil, fail(CheckPlatform, "unknown platform %q", platform)
	}
}

// isSimulated reports whether c claims to come from a Castellan simulation
// CA, to explain a refusal; trust is never decided by it.
func isSimulated(c *x509.Certificate) bool {
	if c == nil {
		return false
	}
	for _, o := range c.Subject.Organization {
		if strings.Contains(o, "Castellan simulation") {
			return true
		}
	}
	return strings.HasPrefix(c.Subject.SerialNumber, "castellan-sim-")
}

func errSimNotTrusted() error {
	return errors.New("simulated evidence whose root the policy does not list (simulated evidence is trusted only by a policy that names its root)")
}
