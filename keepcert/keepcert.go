// Package keepcert is what a relying party needs to check a keep's
// certificate: Castellan's OID arc, the claims a certificate carries, and
// VerifyChain, which checks a certificate chain to an attestation service's
// CA and the claims to what the caller expects.
//
// A keep's certificate is issued by a Castellan attestation service after it
// checked the keep's hardware evidence (internal/attest/service), or made by
// the keep itself when no service is configured (then it says it is not
// attested and insecure). Its claims travel in the certificate policies
// extension (2.5.29.32) as one PolicyInformation:
//
//	PolicyInformation {
//	  policyIdentifier  2.25.321506541973243509828669607104222138251.1   -- OIDPolicy
//	  policyQualifiers  { PolicyQualifierInfo {
//	    policyQualifierId 2.25.321506541973243509828669607104222138251.1.1 -- OIDClaims
//	    qualifier         OCTET STRING (DER of KeepClaims, see Claims) } }
//	}
//
// The claims are not a private extension of their own because Go's
// crypto/x509 refuses to parse any certificate carrying an extension whose
// OID has a component of 2^31 or more, and every OID under a 2.25 UUID arc
// does; certificate policy identifiers and qualifiers are the one place Go
// accepts them. Other X.509 stacks (OpenSSL, webpki) ignore the qualifier.
package keepcert

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"sort"
	"strings"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Arc is Castellan's OID arc: 2.25 followed by the UUID
// f1dfe85b-c491-44fa-93f7-7584f8cd0f8b as a decimal integer. It is fixed
// forever.
const Arc = "2.25.321506541973243509828669607104222138251"

// OIDs under Arc.
var (
	// OIDPolicy identifies the certificate policy "keep certificate with
	// Castellan claims" (Arc.1).
	OIDPolicy = mustOID(Arc + ".1")
	// OIDClaims identifies the policy qualifier that carries the DER of the
	// claims (Arc.1.1).
	OIDClaims = mustOID(Arc + ".1.1")
)

// OIDCertificatePolicies is the standard certificate policies extension.
var OIDCertificatePolicies = asn1.ObjectIdentifier{2, 5, 29, 32}

func mustOID(s string) x509.OID {
	o, err := x509.ParseOID(s)
	if err != nil {
		panic(err)
	}
	return o
}

// Platforms named in claims.
const (
	PlatformNone = "none"
	PlatformSNP  = "snp"
	PlatformTDX  = "tdx"
	PlatformSGX  = "sgx"
	PlatformCCA  = "cca"
)

// ClaimsVersion is the version of the KeepClaims structure this package writes.
const ClaimsVersion = 1

// Claims is what a keep's certificate says about the keep. On the wire it is
// the DER of
//
//	KeepClaims ::= SEQUENCE {
//	  version         INTEGER,        -- 1
//	  attested        BOOLEAN,        -- issued by a service that checked evidence
//	  platform        UTF8String,     -- "none", "snp", "tdx", "sgx", "cca"
//	  simulated       BOOLEAN,        -- evidence chained to a Castellan simulation root
//	  insecure        BOOLEAN,        -- not attested, platform none, or simulated
//	  debug           BOOLEAN,
//	  tcb             SEQUENCE OF SEQUENCE { component UTF8String, svn INTEGER },
//	  measurement     OCTET STRING,   -- SNP MEASUREMENT, TDX MRTD, SGX MRENCLAVE, CCA RIM; empty for none
//	  workloadDigest  UTF8String,     -- "sha256:..." package digest
//	  package         UTF8String,     -- package reference, empty if unknown
//	  details     [0] EXPLICIT SEQUENCE OF SEQUENCE { name UTF8String, value UTF8String } OPTIONAL
//	}
//
// with tcb and details sorted by name. Details are the other hardware
// fields and collateral the attestation service checked (SEV-SNP "vmpl",
// "guest_policy", "host_data"...; TDX "tcb_status", "rtmr0"...; SGX
// "mrsigner", "tcb_status"...; CCA "rem.0" .. "rem.3", "platform_sw.N",
// "lifecycle"...; "collateral" and its dates; docs/attest.md lists them). They were added
// after version 1 without changing it: parsers of version 1 that predate
// them ignore trailing fields, as Go's encoding/asn1 does.
type Claims struct {
	Attested       bool              `json:"attested"`
	Platform       string            `json:"platform"`
	Simulated      bool              `json:"simulated"`
	Insecure       bool              `json:"insecure"`
	Debug          bool              `json:"debug"`
	TCB            map[string]uint64 `json:"tcb,omitempty"`
	Measurement    []byte            `json:"measurement,omitempty"`
	WorkloadDigest string            `json:"workload_digest"`
	Package        string            `json:"package,omitempty"`
	Details        map[string]string `json:"details,omitempty"`
}

type tcbComponent struct {
	Component string `asn1:"utf8"`
	SVN       int64
}

type detail struct {
	Name  string `asn1:"utf8"`
	Value string `asn1:"utf8"`
}

type wireClaims struct {
	Version        int
	Attested       bool
	Platform       string `asn1:"utf8"`
	Simulated      bool
	Insecure       bool
	Debug          bool
	TCB            []tcbComponent
	Measurement    []byte
	WorkloadDigest string   `asn1:"utf8"`
	Package        string   `asn1:"utf8"`
	Details        []detail `asn1:"optional,explicit,tag:0"`
}

// Limits on what ParseClaims accepts, so that a hostile certificate cannot
// make a relying party allocate much.
const (
	maxTCBComponents = 64
	maxDetails       = 64
	maxString        = 1024
)

// Marshal returns the DER of c. It sets Insecure when the claims are not
// attested, name platform none, or are simulated, whatever the field said.
func (c *Claims) Marshal() ([]byte, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	w := wireClaims{
		Version:        ClaimsVersion,
		Attested:       c.Attested,
		Platform:       c.Platform,
		Simulated:      c.Simulated,
		Insecure:       c.Insecure || c.mustBeInsecure(),
		Debug:          c.Debug,
		TCB:            []tcbComponent{},
		Measurement:    c.Measurement,
		WorkloadDigest: c.WorkloadDigest,
		Package:        c.Package,
	}
	if w.Measurement == nil {
		w.Measurement = []byte{}
	}
	names := make([]string, 0, len(c.TCB))
	for k := range c.TCB {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if c.TCB[k] > 1<<63-1 {
			return nil, fmt.Errorf("claims: tcb component %q: svn %d too large", k, c.TCB[k])
		}
		w.TCB = append(w.TCB, tcbComponent{Component: k, SVN: int64(c.TCB[k])})
	}
	names = names[:0]
	for k := range c.Details {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		w.Details = append(w.Details, detail{Name: k, Value: c.Details[k]})
	}
	return asn1.Marshal(w)
}

func (c *Claims) mustBeInsecure() bool {
	return !c.Attested || c.Platform == PlatformNone || c.Simulated
}

func (c *Claims) check() error {
	switch c.Platform {
	case PlatformNone, PlatformSNP, PlatformTDX, PlatformSGX, PlatformCCA:
	default:
		return fmt.Errorf("claims: unknown platform %q", c.Platform)
	}
	if len(c.TCB) > maxTCBComponents {
		return fmt.Errorf("claims: %d tcb components, at most %d", len(c.TCB), maxTCBComponents)
	}
	for k := range c.TCB {
		if k == "" || len(k) > maxString {
			return fmt.Errorf("claims: tcb component name of %d bytes", len(k))
		}
	}
	if len(c.Details) > maxDetails {
		return fmt.Errorf("claims: %d details, at most %d", len(c.Details), maxDetails)
	}
	for k, v := range c.Details {
		if k == "" || len(k) > maxString || len(v) > maxString {
			return fmt.Errorf("claims: detail %.40q: name empty or a field longer than 1024 bytes", k)
		}
	}
	if len(c.Measurement) > maxString || len(c.WorkloadDigest) > maxString || len(c.Package) > maxString {
		return errors.New("claims: a field is longer than 1024 bytes")
	}
	// A digest is sha256: and 64 lowercase hex digits, as a package's: a
	// relying party compares it with a string and prints it, so it must
	// not carry anything else (a second line, a terminal escape).
	if h, ok := strings.CutPrefix(c.WorkloadDigest, "sha256:"); !ok || len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "" {
		return fmt.Errorf("claims: workload digest %q is not sha256: and 64 lowercase hex digits", c.WorkloadDigest)
	}
	return nil
}

// ParseClaims parses the DER of KeepClaims. It refuses trailing bytes,
// unknown versions and platforms, negative or repeated TCB components, and
// claims that say secure where they cannot be.
func ParseClaims(der []byte) (*Claims, error) {
	var w wireClaims
	rest, err := asn1.Unmarshal(der, &w)
	if err != nil {
		return nil, fmt.Errorf("claims: %w", err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("claims: %d trailing bytes", len(rest))
	}
	if w.Version != ClaimsVersion {
		return nil, fmt.Errorf("claims: unsupported version %d", w.Version)
	}
	if len(w.TCB) > maxTCBComponents {
		return nil, fmt.Errorf("claims: %d tcb components, at most %d", len(w.TCB), maxTCBComponents)
	}
	if len(w.Details) > maxDetails {
		return nil, fmt.Errorf("claims: %d details, at most %d", len(w.Details), maxDetails)
	}
	c := &Claims{
		Attested:       w.Attested,
		Platform:       w.Platform,
		Simulated:      w.Simulated,
		Insecure:       w.Insecure,
		Debug:          w.Debug,
		Measurement:    w.Measurement,
		WorkloadDigest: w.WorkloadDigest,
		Package:        w.Package,
	}
	if len(w.TCB) > 0 {
		c.TCB = make(map[string]uint64, len(w.TCB))
	}
	for _, t := range w.TCB {
		if t.SVN < 0 {
			return nil, fmt.Errorf("claims: tcb component %q: negative svn", t.Component)
		}
		if _, dup := c.TCB[t.Component]; dup {
			return nil, fmt.Errorf("claims: tcb component %q repeated", t.Component)
		}
		c.TCB[t.Component] = uint64(t.SVN)
	}
	if len(w.Details) > 0 {
		c.Details = make(map[string]string, len(w.Details))
	}
	for _, d := range w.Details {
		if _, dup := c.Details[d.Name]; dup {
			return nil, fmt.Errorf("claims: detail %.40q repeated", d.Name)
		}
		c.Details[d.Name] = d.Value
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	if c.mustBeInsecure() && !c.Insecure {
		return nil, errors.New("claims: insecure flag is off for unattested, none or simulated claims")
	}
	return c, nil
}

// Extension returns the certificate policies extension that carries c, for
// x509.Certificate.ExtraExtensions (leave the template's Policies empty).
func Extension(c *Claims) (pkix.Extension, error) {
	der, err := c.Marshal()
	if err != nil {
		return pkix.Extension{}, err
	}
	pol, err := OIDPolicy.MarshalBinary()
	if err != nil {
		return pkix.Extension{}, err
	}
	qid, err := OIDClaims.MarshalBinary()
	if err != nil {
		return pkix.Extension{}, err
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // certificatePolicies
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // PolicyInformation
			b.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(b *cryptobyte.Builder) { b.AddBytes(pol) })
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // policyQualifiers
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // PolicyQualifierInfo
					b.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(b *cryptobyte.Builder) { b.AddBytes(qid) })
					b.AddASN1OctetString(der)
				})
			})
		})
	})
	v, err := b.Bytes()
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("claims: building extension: %w", err)
	}
	return pkix.Extension{Id: OIDCertificatePolicies, Value: v}, nil
}

// FromCertificate returns the claims that cert carries. It does not check
// the certificate's chain; VerifyChain does.
func FromCertificate(cert *x509.Certificate) (*Claims, error) {
	var found []byte
	n := 0
	for _, e := range cert.Extensions {
		if !e.Id.Equal(OIDCertificatePolicies) {
			continue
		}
		der, err := claimsFromPolicies(e.Value)
		if err != nil {
			return nil, err
		}
		if der != nil {
			found = der
			n++
		}
	}
	if n == 0 {
		return nil, errors.New("certificate carries no castellan claims")
	}
	if n > 1 {
		return nil, errors.New("certificate carries castellan claims more than once")
	}
	return ParseClaims(found)
}

// claimsFromPolicies returns the claims DER in a certificate policies
// extension value, nil if there is none.
func claimsFromPolicies(v []byte) ([]byte, error) {
	pol, _ := OIDPolicy.MarshalBinary()
	qid, _ := OIDClaims.MarshalBinary()
	in := cryptobyte.String(v)
	var seq cryptobyte.String
	if !in.ReadASN1(&seq, cbasn1.SEQUENCE) || !in.Empty() {
		return nil, errors.New("certificate policies: malformed")
	}
	var found []byte
	for !seq.Empty() {
		var pi, id cryptobyte.String
		if !seq.ReadASN1(&pi, cbasn1.SEQUENCE) || !pi.ReadASN1(&id, cbasn1.OBJECT_IDENTIFIER) {
			return nil, errors.New("certificate policies: malformed policy information")
		}
		if string(id) != string(pol) {
			continue
		}
		var quals cryptobyte.String
		if !pi.ReadASN1(&quals, cbasn1.SEQUENCE) || !pi.Empty() {
			return nil, errors.New("castellan policy: missing or malformed qualifiers")
		}
		for !quals.Empty() {
			var q, qi cryptobyte.String
			if !quals.ReadASN1(&q, cbasn1.SEQUENCE) || !q.ReadASN1(&qi, cbasn1.OBJECT_IDENTIFIER) {
				return nil, errors.New("castellan policy: malformed qualifier")
			}
			if string(qi) != string(qid) {
				continue
			}
			var der cryptobyte.String
			if !q.ReadASN1(&der, cbasn1.OCTET_STRING) || !q.Empty() {
				return nil, errors.New("castellan claims qualifier: not an octet string")
			}
			if found != nil {
				return nil, errors.New("certificate carries castellan claims more than once")
			}
			found = []byte(der)
		}
		if found == nil {
			return nil, errors.New("castellan policy without a claims qualifier")
		}
	}
	return found, nil
}
