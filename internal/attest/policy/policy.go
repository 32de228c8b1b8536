// Package policy reads the attestation service's two owner-written files,
// the policy and the measurement database (TOML, unknown keys are errors
// with their line), keeps the current version of both for the service, and
// reloads them on request or when they change; a bad edit keeps the old
// version in force. Snapshot.Check makes the decisions that depend only on
// verified claims: platform allowed and not revoked, insecure, debug, TCB
// minimum and revoked TCBs, measurement listed and not revoked, workload
// allowed.
package policy

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/castellan-dev/castellan/internal/pemcerts"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/pelletier/go-toml/v2"
)

// Defaults for fields a policy leaves out.
const (
	DefaultNonceLifetime       = 60 * time.Second
	DefaultMaxNonces           = 1000000
	DefaultCertificateLifetime = time.Hour
)

// Duration is a time.Duration written as a Go duration string ("60s", "1h").
type Duration time.Duration

// UnmarshalText parses a duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	if v <= 0 {
		return fmt.Errorf("duration %q is not positive", b)
	}
	*d = Duration(v)
	return nil
}

// Policy is the parsed policy file.
type Policy struct {
	NonceLifetime       Duration             `toml:"nonce_lifetime"`
	MaxNonces           int                  `toml:"max_nonces"`
	CertificateLifetime Duration             `toml:"certificate_lifetime"`
	AllowSANs           bool                 `toml:"allow_sans"`
	AllowInsecure       bool                 `toml:"allow_insecure"`
	Workloads           []string             `toml:"workloads"`
	Platforms           map[string]*Platform `toml:"platforms"`

	// Identity sections (identity.go).
	SPIFFE   SPIFFE     `toml:"spiffe"`
	Identity []Identity `toml:"identity"`

	// Secrets released to attested keeps (secrets.go).
	Secrets []Secret `toml:"secret"`
}

// Platform is a [platforms.snp] or [platforms.tdx] table.
type Platform struct {
	// Revoked refuses every request from the platform.
	Revoked bool `toml:"revoked"`
	// SimRoots are PEM files of Castellan simulation roots trusted for this
	// platform; relative paths are resolved against the policy's folder.
	SimRoots []string `toml:"sim_roots"`
	// MinTCB is the minimum security version per TCB component.
	MinTCB map[string]uint64 `toml:"min_tcb"`
	// RevokedTCB lists TCBs refused: an entry matches when every component
	// it names has exactly that value.
	RevokedTCB []map[string]uint64 `toml:"revoked_tcb"`

	// CCA only; see platforms.go.
	CPAKs            []string `toml:"cpaks"`             // cca: PEM files of trusted CPAKs
	PlatformSoftware []string `toml:"platform_software"` // cca: accepted platform firmware measurements (hex)

	// Checks on the hardware report's own fields (platform.go).
	HardwareChecks
}

// Measurements is the parsed measurement database.
type Measurements struct {
	Measurement []Measurement `toml:"measurement"`
}

// Measurement is one [[measurement]] entry.
type Measurement struct {
	Platform string `toml:"platform"`
	Value    string `toml:"value"` // hex, 48 bytes
	Name     string `toml:"name"`
	Revoked  bool   `toml:"revoked"`

	// SGX enclaves may be listed by signer instead of MRENCLAVE: MRSIGNER,
	// ISVPRODID and the lowest ISVSVN accepted (value left out).
	MRSigner  string  `toml:"mrsigner"`
	ISVProdID *uint16 `toml:"isv_prod_id"`
	MinISVSVN uint16  `toml:"min_isv_svn"`
	// CCA: the four Realm Extensible Measurements expected with the Realm
	// Initial Measurement (hex); left out, all four must be zero.
	REMs []string `toml:"rems"`
	// TDX: runtime measurement registers the entry's image leaves at
	// launch ('castellan keep-image measure --platform tdx' prints rtmr1
	// and rtmr2 of a VM keep's direct boot). Those given must match the
	// quote's; those left out are not checked by the entry.
	RTMR0 string `toml:"rtmr0"`
	RTMR1 string `toml:"rtmr1"`
	RTMR2 string `toml:"rtmr2"`
	RTMR3 string `toml:"rtmr3"`
}

// rtmrs lists the entry's expected RTMRs by index ("" = not checked).
func (m *Measurement) rtmrs() [4]*string {
	return [4]*string{&m.RTMR0, &m.RTMR1, &m.RTMR2, &m.RTMR3}
}

// Snapshot is one consistent version of the policy and measurement database,
// with the simulation roots they name loaded.
type Snapshot struct {
	Policy       Policy
	Measurements map[string]map[string]Measurement // platform → hex value → entry
	SimRoots     map[string][]*x509.Certificate    // platform → trusted simulation roots
	// SimCollateral are the collateral folders beside the simulation
	// roots files (platform.go), by platform.
	SimCollateral map[string][]string
	AnyWorkload   bool

	identities map[string]*Identity    // workload digest → its [[identity]] (identity.go)
	secrets    map[string]*secretEntry // resource path → its [[secret]] and value (secrets.go)

	// SGXSigners are the SGX measurement entries by signer.
	SGXSigners []Measurement
	// CCAPlatformKeys are the CPAKs platforms.cca.cpaks lists.
	CCAPlatformKeys []crypto.PublicKey
}

// Refusal is a decision against a request, naming the check that failed.
type Refusal struct {
	Check  string
	Reason string
}

func (r *Refusal) Error() string { return r.Reason }

// Checks named by refusals (the service adds format, csr, key, nonce,
// chain, signature and report_data).
const (
	CheckRevoked     = "revoked"
	CheckInsecure    = "insecure"
	CheckDebug       = "debug"
	CheckTCB         = "tcb"
	CheckMeasurement = "measurement"
	CheckWorkload    = "workload"
)

func refuse(check, format string, a ...any) *Refusal {
	return &Refusal{Check: check, Reason: fmt.Sprintf(format, a...)}
}

// tcbComponents matches the component names that the verifier reports;
// compiled on first use, not at every castellan start.
var tcbComponents = sync.OnceValue(func() map[string]*regexp.Regexp {
	return map[string]*regexp.Regexp{
		evidence.PlatformSNP: regexp.MustCompile(`^(fmc|bootloader|tee|snp|microcode)$`), // fmc: Turin only
		evidence.PlatformTDX: regexp.MustCompile(`^(tee_tcb_svn\.([0-9]|1[0-5])|qe_svn|pce_svn)$`),
		evidence.PlatformSGX: regexp.MustCompile(`^(cpu_svn\.([0-9]|1[0-5])|qe_svn|pce_svn|isv_svn|config_svn)$`),
		evidence.PlatformCCA: regexp.MustCompile(`^$`), // none: platform_software judges the firmware
	}
})

var digestRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^sha256:[0-9a-f]{64}$`) })

// Load reads and checks both files.
func Load(policyFile, measurementsFile string) (*Snapshot, error) {
	pb, err := os.ReadFile(policyFile)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	mb, err := os.ReadFile(measurementsFile)
	if err != nil {
		return nil, fmt.Errorf("measurement database: %w", err)
	}
	return parse(policyFile, pb, measurementsFile, mb)
}

func parse(policyFile string, pb []byte, measurementsFile string, mb []byte) (*Snapshot, error) {
	var p Policy
	if err := decodeStrict(policyFile, pb, &p); err != nil {
		return nil, err
	}
	var m Measurements
	if err := decodeStrict(measurementsFile, mb, &m); err != nil {
		return nil, err
	}
	s := &Snapshot{Policy: p, Measurements: map[string]map[string]Measurement{}, SimRoots: map[string][]*x509.Certificate{}}
	if err := s.checkPolicy(policyFile); err != nil {
		return nil, err
	}
	for i, e := range m.Measurement {
		where := fmt.Sprintf("%s: measurement %d", measurementsFile, i+1)
		if err := checkMeasurement(&e); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if e.Value == "" { // an SGX entry by signer
			s.SGXSigners = append(s.SGXSigners, e)
			continue
		}
		byVal := s.Measurements[e.Platform]
		if byVal == nil {
			byVal = map[string]Measurement{}
			s.Measurements[e.Platform] = byVal
		}
		if _, dup := byVal[e.Value]; dup {
			return nil, fmt.Errorf("%s: value listed twice for platform %s", where, e.Platform)
		}
		byVal[e.Value] = e
	}
	return s, nil
}

func (s *Snapshot) checkPolicy(file string) error {
	p := &s.Policy
	if p.NonceLifetime == 0 {
		p.NonceLifetime = Duration(DefaultNonceLifetime)
	}
	if p.CertificateLifetime == 0 {
		p.CertificateLifetime = Duration(DefaultCertificateLifetime)
	}
	if p.MaxNonces < 0 {
		return fmt.Errorf("%s: max_nonces is negative", file)
	}
	if p.MaxNonces == 0 {
		p.MaxNonces = DefaultMaxNonces
	}
	if len(p.Workloads) == 0 {
		return fmt.Errorf(`%s: workloads is empty: list the allowed digests, or ["any"]`, file)
	}
	for _, w := range p.Workloads {
		switch {
		case w == "any":
			if len(p.Workloads) != 1 {
				return fmt.Errorf(`%s: workloads: "any" must be alone`, file)
			}
			s.AnyWorkload = true
		case !digestRE().MatchString(w):
			return fmt.Errorf("%s: workloads: %q is not a sha256:<64 hex> digest", file, w)
		}
	}
	names := make([]string, 0, len(p.Platforms))
	for n := range p.Platforms {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		pl := p.Platforms[name]
		re, ok := tcbComponents()[name]
		if !ok {
			return fmt.Errorf("%s: platforms.%s: unknown platform (want snp, tdx, sgx or cca; platform none is allowed by allow_insecure)", file, name)
		}
		if pl == nil {
			pl = &Platform{}
			p.Platforms[name] = pl
		}
		for comp := range pl.MinTCB {
			if !re.MatchString(comp) {
				return fmt.Errorf("%s: platforms.%s.min_tcb: unknown component %q", file, name, comp)
			}
		}
		for i, r := range pl.RevokedTCB {
			if len(r) == 0 {
				return fmt.Errorf("%s: platforms.%s.revoked_tcb %d: names no component", file, name, i+1)
			}
			for comp := range r {
				if !re.MatchString(comp) {
					return fmt.Errorf("%s: platforms.%s.revoked_tcb %d: unknown component %q", file, name, i+1, comp)
				}
			}
		}
		if err := pl.HardwareChecks.check(name); err != nil {
			return fmt.Errorf("%s: platforms.%s.%w", file, name, err)
		}
		if name == evidence.PlatformSNP {
			// The verifier holds the LAUNCH_TCB to min_tcb as well.
			pl.HardwareChecks.snp.MinLaunchTCB = pl.MinTCB
		}
		for _, rf := range pl.SimRoots {
			if !filepath.IsAbs(rf) {
				rf = filepath.Join(filepath.Dir(file), rf)
			}
			certs, err := readCerts(rf)
			if err != nil {
				return fmt.Errorf("%s: platforms.%s.sim_roots: %w", file, name, err)
			}
			s.SimRoots[name] = append(s.SimRoots[name], certs...)
			s.addSimCollateral(name, rf)
		}
		if err := s.checkPlatformExtras(file, name, pl); err != nil {
			return err
		}
	}
	if err := s.checkSecrets(file); err != nil {
		return err
	}
	return s.checkIdentity(file)
}

func readCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out, err := pemcerts.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// decodeStrict decodes TOML into v, refusing unknown keys; errors carry the
// file name and line.
func decodeStrict(file string, b []byte, v any) error {
	d := toml.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	err := d.Decode(v)
	if err == nil {
		return nil
	}
	var sm *toml.StrictMissingError
	if errors.As(err, &sm) && len(sm.Errors) > 0 {
		e := sm.Errors[0]
		row, _ := e.Position()
		return fmt.Errorf("%s:%d: unknown key %s", file, row, strings.Join(e.Key(), "."))
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, _ := de.Position()
		return fmt.Errorf("%s:%d: %s", file, row, strings.TrimPrefix(de.Error(), "toml: "))
	}
	return fmt.Errorf("%s: %w", file, err)
}

// Check decides on verified claims. It returns nil when the policy and
// measurement database accept them.
func (s *Snapshot) Check(c *evidence.Claims) *Refusal {
	p := &s.Policy
	if c.Platform == evidence.PlatformNone {
		if !p.AllowInsecure {
			return refuse(CheckInsecure, "platform none (no TEE) is refused: the policy does not allow insecure keeps")
		}
	} else {
		pl := p.Platforms[c.Platform]
		if pl == nil {
			return refuse(CheckRevoked, "platform %s is not enabled by the policy", c.Platform)
		}
		if pl.Revoked {
			return refuse(CheckRevoked, "platform %s is revoked by the policy", c.Platform)
		}
		if c.Simulated && len(s.SimRoots[c.Platform]) == 0 {
			// The verifier only accepts simulation roots the policy lists;
			// this guards against a verifier that did otherwise.
			return refuse(CheckInsecure, "simulated %s evidence without a simulation root in the policy", c.Platform)
		}
		if r := pl.HardwareChecks.checkClaims(c); r != nil {
			return r
		}
		if c.Debug {
			return refuse(CheckDebug, "the %s guest allows debugging: the host could read the keep", c.Platform)
		}
		comps := make([]string, 0, len(pl.MinTCB))
		for k := range pl.MinTCB {
			comps = append(comps, k)
		}
		sort.Strings(comps)
		for _, k := range comps {
			got, ok := c.TCB[k]
			if !ok {
				return refuse(CheckTCB, "tcb component %s is not reported by the evidence", k)
			}
			if got < pl.MinTCB[k] {
				return refuse(CheckTCB, "tcb component %s is %d, below the minimum %d", k, got, pl.MinTCB[k])
			}
		}
		for i, r := range pl.RevokedTCB {
			if tcbMatches(c.TCB, r) {
				return refuse(CheckRevoked, "tcb %s matches revoked_tcb entry %d", formatTCB(r), i+1)
			}
		}
		if r := s.checkPlatformClaims(pl, c); r != nil {
			return r
		}
		v := hex.EncodeToString(c.Measurement)
		m, ok := s.Measurements[c.Platform][v]
		if !ok && c.Platform == evidence.PlatformSGX {
			if r := s.checkSGXSigner(c, v); r != nil {
				return r
			}
		} else {
			if !ok {
				return refuse(CheckMeasurement, "%s measurement %s is not in the measurement database", c.Platform, v)
			}
			if m.Revoked {
				return refuse(CheckRevoked, "%s measurement %s (%s) is revoked", c.Platform, v, m.Name)
			}
			if r := checkREMs(c, &m); r != nil {
				return r
			}
			if r := checkRTMRs(c, &m); r != nil {
				return r
			}
		}
	}
	if !s.AnyWorkload && !slices.Contains(p.Workloads, c.WorkloadDigest) {
		return refuse(CheckWorkload, "workload %s is not allowed by the policy", c.WorkloadDigest)
	}
	return nil
}

func tcbMatches(have, entry map[string]uint64) bool {
	for k, v := range entry {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func formatTCB(t map[string]uint64) string {
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + "=" + strconv.FormatUint(t[k], 10))
	}
	return b.String()
}
