package console

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/keepreport"
	"github.com/castellan-dev/castellan/keepcert"
)

// Proof is a keep's report, checked and put in words for the page.
type Proof struct {
	WorkloadDigest     string `json:"workload_digest"`
	Backend            string `json:"backend"`
	Platform           string `json:"platform"`      // none, snp, tdx
	PlatformName       string `json:"platform_name"` // for people
	Simulated          bool   `json:"simulated"`
	Insecure           bool   `json:"insecure"`
	Verdict            string `json:"verdict"` // one sentence: may this keep be trusted
	Explanation        string `json:"explanation"`
	Attested           bool   `json:"attested"`
	AttestationService string `json:"attestation_service,omitempty"`
	Debug              bool   `json:"debug"`
	Measurement        string `json:"measurement,omitempty"` // hex
	TCB                []TCB  `json:"tcb,omitempty"`
	// Checked are the other hardware fields the verifier decided on
	// (evidence.Claims.Details: VMPL, guest policy, TD attributes, RTMRs,
	// whether collateral was used...).
	Checked map[string]string `json:"checked,omitempty"`

	// KeyFingerprint is the SHA-256 of the keep's attested key; Nonce the
	// challenge its evidence answers (hex).
	KeyFingerprint string `json:"key_fingerprint,omitempty"`
	Nonce          string `json:"nonce,omitempty"`
	// VerifiedBy says who checked the evidence and which checks ran.
	VerifiedBy string `json:"verified_by"`
	// Delivery says how the workload reached the keep; "" when it was not
	// delivered confidentially (--direct).
	Delivery string `json:"delivery,omitempty"`

	Evidence    EvidenceCheck `json:"evidence"`
	Certificate CertInfo      `json:"certificate"`
}

// TCB is one security version number of the platform.
type TCB struct {
	Component string `json:"component"`
	SVN       uint64 `json:"svn"`
}

// EvidenceCheck is what the console found when it verified the evidence.
type EvidenceCheck struct {
	Present  bool   `json:"present"`
	Verified bool   `json:"verified"`
	Summary  string `json:"summary"`
	Error    string `json:"error,omitempty"`
}

// CertInfo describes the keep's certificate.
type CertInfo struct {
	Present    bool      `json:"present"`
	Subject    string    `json:"subject"`
	Issuer     string    `json:"issuer"`
	SelfSigned bool      `json:"self_signed"`
	NotBefore  time.Time `json:"not_before"`
	NotAfter   time.Time `json:"not_after"`
	ValidNow   bool      `json:"valid_now"`
	Chain      int       `json:"chain_length"`
	Summary    string    `json:"summary"`
}

// Verifier checks evidence; the console's is verify.Envelope with the local
// simulation roots.
type Verifier func(env *evidence.Envelope) (*evidence.Claims, error)

// decodeReport parses and checks a keep's report. Errors are about a report
// that cannot be read at all; failed checks are reported inside the Proof.
func decodeReport(b []byte, check Verifier, now time.Time) (*Proof, error) {
	var r keepreport.Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("keep report: %w", err)
	}
	if err := evidence.CheckDigest(r.WorkloadDigest); err != nil {
		return nil, fmt.Errorf("keep report: %w", err)
	}
	if len(r.CertificateChain) == 0 {
		return nil, errors.New("keep report: no certificate")
	}
	var chain []*x509.Certificate
	for i, p := range r.CertificateChain {
		blk, rest := pem.Decode([]byte(p))
		if blk == nil || blk.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
			return nil, fmt.Errorf("keep report: certificate %d: not one PEM certificate", i)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("keep report: certificate %d: %w", i, err)
		}
		chain = append(chain, c)
	}
	leaf := chain[0]
	claims, err := keepcert.FromCertificate(leaf)
	if err != nil {
		return nil, fmt.Errorf("keep report: certificate: %w", err)
	}
	if claims.WorkloadDigest != r.WorkloadDigest {
		return nil, fmt.Errorf("keep report: the certificate names workload %s, the report %s", claims.WorkloadDigest, r.WorkloadDigest)
	}
	p := &Proof{
		WorkloadDigest:     r.WorkloadDigest,
		Backend:            r.Backend,
		Platform:           claims.Platform,
		Simulated:          claims.Simulated,
		Insecure:           claims.Insecure,
		Attested:           claims.Attested,
		AttestationService: r.AttestationService,
		Debug:              claims.Debug,
		Measurement:        hex.EncodeToString(claims.Measurement),
		TCB:                tcbList(claims.TCB),
		Certificate:        certInfo(chain, claims, now),
		VerifiedBy:         "This console, from the keep's report (direct mode: no host agent, no confidential delivery): the evidence's signatures, and that it binds the certificate's key and the workload digest. The nonce is the keep's own: this shows a binding, not freshness.",
	}

	// The certificate of a keep without an attestation service says
	// platform none; the evidence says what the hardware (or simulation)
	// signed, so it decides the platform shown.
	if len(r.Evidence) == 0 {
		p.Evidence.Summary = "No hardware evidence: the nil backend has no TEE that could sign a report."
		if r.Backend != "nil" {
			p.Evidence.Summary = "The keep sent no evidence."
		}
	} else {
		p.Evidence.Present = true
		env, err := evidence.Parse(r.Evidence)
		if err == nil {
			var ec *evidence.Claims
			ec, err = check(env)
			if err == nil {
				err = bindsCertificate(env, leaf, r.WorkloadDigest)
			}
			if err == nil {
				p.Evidence.Verified = true
				p.Platform = ec.Platform
				p.Simulated = ec.Simulated
				p.Debug = ec.Debug
				p.Measurement = hex.EncodeToString(ec.Measurement)
				p.TCB = tcbList(ec.TCB)
				p.Checked = ec.Details
				p.Insecure = p.Insecure || ec.Insecure()
			}
		}
		if err != nil {
			p.Evidence.Error = err.Error()
			p.Evidence.Summary = "The evidence did not check out: " + err.Error() + "."
			p.Insecure = true
		} else {
			p.Evidence.Summary = evidenceSummary(p)
		}
	}
	if p.Platform == "" {
		p.Platform = r.Platform
	}
	p.PlatformName = platformName(p.Platform, p.Simulated)
	p.Verdict, p.Explanation = verdict(p)
	return p, nil
}

// bindsCertificate checks that verified evidence is about this keep: its
// key is the certificate's and its workload the report's.
func bindsCertificate(env *evidence.Envelope, leaf *x509.Certificate, digest string) error {
	spki, err := x509.MarshalPKIXPublicKey(leaf.PublicKey)
	if err != nil {
		return fmt.Errorf("certificate key: %w", err)
	}
	if !bytes.Equal(spki, env.Key) {
		return errors.New("the evidence is about another key than the keep certificate's")
	}
	if env.WorkloadDigest != digest {
		return fmt.Errorf("the evidence names workload %s, the keep %s", env.WorkloadDigest, digest)
	}
	return nil
}

func tcbList(m map[string]uint64) []TCB {
	out := make([]TCB, 0, len(m))
	for k, v := range m {
		out = append(out, TCB{Component: k, SVN: v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Component < out[j].Component })
	return out
}

func platformName(platform string, simulated bool) string {
	var n string
	switch platform {
	case evidence.PlatformNone:
		return "None: an ordinary process, no TEE"
	case evidence.PlatformSNP:
		n = "AMD SEV-SNP"
	case evidence.PlatformTDX:
		n = "Intel TDX"
	default:
		return platform
	}
	if simulated {
		return n + ", simulated on this machine"
	}
	return n
}

func evidenceSummary(p *Proof) string {
	if p.Simulated {
		return "Checked by this console: the report's signature chains to this machine's local simulation root (trusted here only because the console is a local demo), and the report binds this keep's certificate key and workload digest."
	}
	return "Checked by this console: the report is signed by a chain to the CPU vendor's root, and it binds this keep's certificate key and workload digest."
}

func certInfo(chain []*x509.Certificate, claims *keepcert.Claims, now time.Time) CertInfo {
	leaf := chain[0]
	c := CertInfo{
		Present:    true,
		Subject:    leaf.Subject.String(),
		Issuer:     leaf.Issuer.String(),
		SelfSigned: bytes.Equal(leaf.RawIssuer, leaf.RawSubject) && len(chain) == 1,
		NotBefore:  leaf.NotBefore.UTC(),
		NotAfter:   leaf.NotAfter.UTC(),
		ValidNow:   !now.Before(leaf.NotBefore) && !now.After(leaf.NotAfter),
		Chain:      len(chain),
	}
	switch {
	case c.SelfSigned:
		c.Summary = "Made by the keep itself, not by an attestation service: nobody checked its evidence before it was issued, so it says \"not attested\" and \"insecure\"."
	case claims.Attested:
		c.Summary = "Issued by an attestation service after it checked the keep's evidence."
	default:
		c.Summary = "Signed by " + leaf.Issuer.String() + "."
	}
	return c
}

func verdict(p *Proof) (string, string) {
	switch {
	case p.Evidence.Error != "":
		return "Not trustworthy: the evidence failed its checks.",
			"Whatever this keep claims, the console could not confirm it. Do not send it secrets."
	case p.Platform == evidence.PlatformNone:
		return "Insecure: no hardware protection.",
			"This keep is an ordinary process on this machine. Its owner, or anyone who controls the machine, can read and change its memory. Good for trying things out, never for secrets."
	case p.Simulated:
		return "Insecure: simulated hardware.",
			"The evidence has the exact format of a real " + platformName(p.Platform, false) + " report, so every check runs, but it is signed by a test key made on this machine, not by the CPU vendor. It proves the checks work, not that the keep is protected."
	case p.Debug:
		return "Insecure: debugging allowed.",
			"The hardware report says the keep may be debugged, which lets the host read its memory."
	default:
		return "Protected by " + platformName(p.Platform, false) + ".",
			"The CPU vendor's key signed a report of the measured runtime and this keep's key: the host cannot read or change the keep's memory."
	}
}
