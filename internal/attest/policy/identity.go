package policy

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// The identity sections of the policy: the SPIFFE ID every certificate
// carries, and the DNS names and IP addresses each workload's keeps may
// claim in their CSRs (issue 10, defect 3: allow_sans = true let a keep
// claim any name).
//
//	[spiffe]
//	trust_domain = "castellan.example"
//	path = "/workload/{name}"      # {digest}: the workload digest's hex; {name}: the identity's name
//
//	[[identity]]
//	workload = "sha256:..."
//	name = "web"
//	dns = ["web.example.com", "*.web.example.com"]
//	ips = ["10.0.0.5"]

// Defaults of the [spiffe] table.
const (
	DefaultTrustDomain = "castellan.invalid"
	DefaultSPIFFEPath  = "/workload/{digest}"
)

// SPIFFE is the [spiffe] table.
type SPIFFE struct {
	TrustDomain string `toml:"trust_domain"`
	// Path is the SPIFFE ID's path template: segments of letters, digits,
	// '.', '-' and '_', and the placeholders {digest} and {name}.
	Path string `toml:"path"`
}

// Identity is one [[identity]] entry: what keeps running one workload may
// be called.
type Identity struct {
	Workload string   `toml:"workload"`
	Name     string   `toml:"name"`
	DNS      []string `toml:"dns"`
	IPs      []string `toml:"ips"`

	ips []net.IP
}

var (
	trustDomainRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9._-]{1,255}$`) })
	pathSegmentRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9._-]+$`) })
	nameRE        = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`) })
	dnsLabelRE    = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`) })
)

// checkIdentity checks and completes the identity sections.
func (s *Snapshot) checkIdentity(file string) error {
	p := &s.Policy
	if p.AllowSANs {
		return fmt.Errorf("%s: allow_sans = true is no longer accepted: list the names each workload may claim in [[identity]] entries", file)
	}
	sp := &p.SPIFFE
	if sp.TrustDomain == "" {
		sp.TrustDomain = DefaultTrustDomain
	}
	if sp.Path == "" {
		sp.Path = DefaultSPIFFEPath
	}
	if !trustDomainRE().MatchString(sp.TrustDomain) || strings.Trim(sp.TrustDomain, ".") != sp.TrustDomain {
		return fmt.Errorf("%s: spiffe.trust_domain %q: want lowercase letters, digits, '.', '-' and '_'", file, sp.TrustDomain)
	}
	if err := checkPathTemplate(sp.Path); err != nil {
		return fmt.Errorf("%s: spiffe.path %q: %w", file, sp.Path, err)
	}
	usesName := strings.Contains(sp.Path, "{name}")
	s.identities = map[string]*Identity{}
	for i := range p.Identity {
		id := &p.Identity[i]
		where := fmt.Sprintf("%s: identity %d", file, i+1)
		if !digestRE().MatchString(id.Workload) {
			return fmt.Errorf("%s: workload %q is not a sha256:<64 hex> digest", where, id.Workload)
		}
		if !s.AnyWorkload && !slices.Contains(p.Workloads, id.Workload) {
			return fmt.Errorf("%s: workload %s is not in workloads", where, id.Workload)
		}
		if s.identities[id.Workload] != nil {
			return fmt.Errorf("%s: workload %s has an identity already", where, id.Workload)
		}
		if id.Name != "" && !nameRE().MatchString(id.Name) {
			return fmt.Errorf("%s: name %q: want up to 128 letters, digits, '.', '-' and '_'", where, id.Name)
		}
		if usesName && id.Name == "" {
			return fmt.Errorf("%s: no name, and spiffe.path uses {name}", where)
		}
		for _, d := range id.DNS {
			if err := checkDNSPattern(d); err != nil {
				return fmt.Errorf("%s: dns %q: %w", where, d, err)
			}
		}
		for _, a := range id.IPs {
			ip := net.ParseIP(a)
			if ip == nil {
				return fmt.Errorf("%s: ips: %q is not an IP address", where, a)
			}
			id.ips = append(id.ips, ip)
		}
		s.identities[id.Workload] = id
	}
	if usesName && !s.AnyWorkload {
		for _, w := range p.Workloads {
			if s.identities[w] == nil {
				return fmt.Errorf("%s: spiffe.path uses {name}, and workload %s has no [[identity]] with a name", file, w)
			}
		}
	}
	return nil
}

func checkPathTemplate(t string) error {
	if !strings.HasPrefix(t, "/") || len(t) > 512 {
		return fmt.Errorf("want a path starting with /")
	}
	for _, seg := range strings.Split(t[1:], "/") {
		rest := strings.NewReplacer("{digest}", "x", "{name}", "x").Replace(seg)
		if !pathSegmentRE().MatchString(rest) {
			return fmt.Errorf("segment %q: want letters, digits, '.', '-', '_', {digest} or {name}, and no empty segment", seg)
		}
	}
	return nil
}

// checkDNSPattern accepts a lowercase host name, optionally with a leading
// "*." (a wildcard over one label).
func checkDNSPattern(d string) error {
	if len(d) > 253 {
		return fmt.Errorf("longer than 253 characters")
	}
	labels := strings.Split(strings.TrimPrefix(d, "*."), ".")
	if len(labels) < 2 && strings.HasPrefix(d, "*.") {
		return fmt.Errorf("a wildcard needs at least two labels after it")
	}
	for _, l := range labels {
		if !dnsLabelRE().MatchString(l) {
			return fmt.Errorf("label %q: want lowercase letters, digits and '-' (a wildcard only as the whole first label)", l)
		}
	}
	return nil
}

// CheckNames decides whether a keep running workload may be called by the
// DNS names and IP addresses its CSR asks for. A name must be listed
// exactly in the workload's [[identity]], or match a listed "*.domain"
// pattern by one label; a wildcard name is allowed only if listed as such.
// The error names the first name refused.
func (s *Snapshot) CheckNames(workload string, dns []string, ips []net.IP) error {
	id := s.identities[workload]
	for _, d := range dns {
		if id == nil || !dnsAllowed(strings.ToLower(d), id.DNS) {
			return fmt.Errorf("the CSR asks for DNS name %q, which the policy does not list for workload %s", d, workload)
		}
	}
	for _, ip := range ips {
		if id == nil || !slices.ContainsFunc(id.ips, ip.Equal) {
			return fmt.Errorf("the CSR asks for IP address %s, which the policy does not list for workload %s", ip, workload)
		}
	}
	return nil
}

func dnsAllowed(name string, allowed []string) bool {
	for _, a := range allowed {
		if name == a {
			return true
		}
		if base, ok := strings.CutPrefix(a, "*."); ok && !strings.HasPrefix(name, "*.") {
			if label, rest, ok := strings.Cut(name, "."); ok && rest == base && dnsLabelRE().MatchString(label) {
				return true
			}
		}
	}
	return false
}

// SPIFFEID returns the SPIFFE ID of keeps running workload (a digest the
// policy allowed): spiffe://TRUST-DOMAIN/PATH with the path template's
// {digest} replaced by the digest's hex and {name} by the workload's
// identity name.
func (s *Snapshot) SPIFFEID(workload string) (*url.URL, error) {
	sp := &s.Policy.SPIFFE
	hexDigest, ok := strings.CutPrefix(workload, "sha256:")
	if !ok || !digestRE().MatchString(workload) {
		return nil, fmt.Errorf("workload digest %q is not sha256:<64 hex>", workload)
	}
	path := strings.ReplaceAll(sp.Path, "{digest}", hexDigest)
	if strings.Contains(path, "{name}") {
		id := s.identities[workload]
		if id == nil || id.Name == "" {
			return nil, fmt.Errorf("spiffe.path uses {name}, and workload %s has no [[identity]] with a name", workload)
		}
		path = strings.ReplaceAll(path, "{name}", id.Name)
	}
	return &url.URL{Scheme: "spiffe", Host: sp.TrustDomain, Path: path}, nil
}
