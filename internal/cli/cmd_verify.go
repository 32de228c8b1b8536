package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"flag"
	"fmt"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"net"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/eartoken"
	"github.com/castellan-dev/castellan/internal/packages"
	"github.com/castellan-dev/castellan/keepcert"
)

var verifyCmd = &Command{
	Name:    "verify",
	Usage:   "verify (https://host:port | --ear FILE) --ca ca.pem [--digest sha256:...] [--platform snp,tdx,sgx,cca] [--allow-insecure] [--json]",
	Summary: "check a keep's certificate, or an EAR, and print what it proves",
	Help: `Connects to a keep's TLS listener, checks that its certificate chains to the
attestation service's CA (--ca), and that its claims match what is expected:
the workload digest (--digest), the platform (--platform), and that it is not
insecure (no TEE, simulated hardware, or self-signed) unless --allow-insecure.
Prints the claims, with the hardware fields the attestation service checked
(for SGX keeps also MRSIGNER and Intel's TCB status, for CCA keeps the realm's
extensible measurements and the platform's firmware); exits non-zero with the reason on any mismatch.

Keeps are identified by their claims, not by host names: the host name in
the URL is not checked against the certificate.

With --ear FILE ("-" for stdin) it checks an EAR (IETF RATS attestation
result) the attestation service returned instead: its signature with the
key of --ca, its expiry, its status (affirming; warning, for simulated or
insecure keeps, only with --allow-insecure; never contraindicated), and the
workload and platform asked for, and prints its claims.`,
}

type verifyFlags struct {
	ca, digest, platform, ear *string
	allowInsecure, json       *bool
	timeout                   *time.Duration
}

func addVerifyFlags(fs *flag.FlagSet) *verifyFlags {
	return &verifyFlags{
		ca:            fs.String("ca", "", "the attestation service's CA certificate (PEM)"),
		digest:        fs.String("digest", "", "workload digest the keep must run (sha256:...)"),
		platform:      fs.String("platform", "", "comma-separated platforms accepted (snp, tdx, sgx, cca, none)"),
		allowInsecure: fs.Bool("allow-insecure", false, "accept keeps without a TEE, on simulated hardware, or self-signed"),
		json:          fs.Bool("json", false, "print JSON"),
		timeout:       fs.Duration("timeout", 10*time.Second, "connection timeout"),
		ear:           fs.String("ear", "", "check this EAR file (- for stdin) from the attestation service instead of a keep"),
	}
}

// verifyOutput is what --json prints.
type verifyOutput struct {
	URL            string            `json:"url"`
	Verified       bool              `json:"verified"`
	Error          string            `json:"error,omitempty"`
	Check          string            `json:"check,omitempty"`
	Attested       bool              `json:"attested"`
	Platform       string            `json:"platform"`
	Simulated      bool              `json:"simulated"`
	Insecure       bool              `json:"insecure"`
	Debug          bool              `json:"debug"`
	TCB            map[string]uint64 `json:"tcb,omitempty"`
	Measurement    string            `json:"measurement,omitempty"`
	WorkloadDigest string            `json:"workload_digest"`
	Package        string            `json:"package,omitempty"`
	SPIFFEID       string            `json:"spiffe_id,omitempty"`
	Status         string            `json:"ear_status,omitempty"` // what an EAR would say of these claims
	DNSNames       []string          `json:"dns_names,omitempty"`
	IPAddresses    []string          `json:"ip_addresses,omitempty"`
	// Details are the hardware fields and collateral the attestation
	// service checked (keepcert.Claims.Details).
	Details  map[string]string `json:"details,omitempty"`
	Issuer   string            `json:"issuer"`
	Serial   string            `json:"serial"`
	NotAfter time.Time         `json:"not_after"`
}

func init() {
	Register(verifyCmd)
	DefineFlags(verifyCmd.Name, func(fs *flag.FlagSet) { addVerifyFlags(fs) })
	verifyCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(verifyCmd)
		f := addVerifyFlags(fs)
		pos, status, ok := e.Parse(verifyCmd, fs, args)
		if !ok {
			return status
		}
		if *f.ear != "" && len(pos) != 0 {
			return e.Usagef("verify: give an https://host:port argument or --ear, not both")
		}
		if *f.ear == "" && len(pos) != 1 {
			return e.Usagef("verify: want one https://host:port argument")
		}
		exp := keepcert.Expect{Digest: *f.digest, AllowInsecure: *f.allowInsecure}
		if *f.platform != "" {
			for _, p := range strings.Split(*f.platform, ",") {
				p = strings.TrimSpace(p)
				switch p {
				case keepcert.PlatformSNP, keepcert.PlatformTDX, keepcert.PlatformSGX, keepcert.PlatformCCA, keepcert.PlatformNone:
				default:
					return e.Usagef("--platform: unknown platform %q (snp, tdx, sgx, cca, none)", p)
				}
				exp.Platforms = append(exp.Platforms, p)
			}
		}
		if *f.digest != "" && evidence.CheckDigest(*f.digest) != nil {
			return e.Usagef("--digest: %v", evidence.CheckDigest(*f.digest))
		}
		if *f.ear != "" {
			return verifyEAR(e, f, expectFlags{digest: exp.Digest, platforms: exp.Platforms, allowInsecure: exp.AllowInsecure})
		}
		addr, err := keepAddress(pos[0])
		if err != nil {
			return e.Usagef("verify: %v", err)
		}
		if *f.ca != "" {
			b, err := os.ReadFile(*f.ca)
			if err != nil {
				return e.Errorf("--ca: %v", err)
			}
			exp.Roots = x509.NewCertPool()
			if !exp.Roots.AppendCertsFromPEM(b) {
				return e.Errorf("--ca: %s: no PEM certificate in it", *f.ca)
			}
		} else if !*f.allowInsecure {
			e.Errorf("verify: no --ca: nothing to check the keep's certificate chain against")
			e.Hintf("%s; or, for a keep run without an attestation service (self-signed), --allow-insecure", hintVerifyCA)
			return ExitUsage
		}

		ctx, cancel := context.WithTimeout(context.Background(), *f.timeout)
		defer cancel()
		host, _, _ := net.SplitHostPort(addr)
		d := tls.Dialer{Config: &tls.Config{
			// The chain and claims are checked below by keepcert; keeps are
			// not named by host names.
			InsecureSkipVerify: true,
			ServerName:         host,
			MinVersion:         tls.VersionTLS12,
		}}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return e.Errorf("verify: connecting to %s: %v", addr, err)
		}
		cs := conn.(*tls.Conn).ConnectionState()
		conn.Close()
		claims, verr := keepcert.VerifyConnectionState(cs, exp)
		out := verifyOutput{URL: pos[0], Verified: verr == nil}
		if len(cs.PeerCertificates) > 0 {
			leaf := cs.PeerCertificates[0]
			out.Issuer = leaf.Issuer.String()
			out.Serial = hex.EncodeToString(leaf.SerialNumber.Bytes())
			out.NotAfter = leaf.NotAfter.UTC()
			certificateNames(&out, leaf)
		}
		if claims != nil {
			out.Attested, out.Platform, out.Simulated, out.Insecure, out.Debug = claims.Attested, claims.Platform, claims.Simulated, claims.Insecure, claims.Debug
			out.TCB, out.WorkloadDigest, out.Package = claims.TCB, claims.WorkloadDigest, claims.Package
			out.Details = claims.Details
			out.Measurement = hex.EncodeToString(claims.Measurement)
			if claims.Attested {
				out.Status = eartoken.CertificateStatus(claims.Platform, claims.Simulated, claims.Debug).String()
			}
		}
		if verr != nil {
			out.Error = verr.Error()
			if ke, ok := verr.(*keepcert.Error); ok {
				out.Check = ke.Check
			}
		}
		switch {
		case *f.json:
			e.PrintJSON(out)
		case claims != nil:
			printClaims(e, &out)
		}
		if verr != nil {
			err := fmt.Errorf("keep at %s: %w", pos[0], verr)
			switch {
			case refusedCheck(verr) == keepcert.CheckInsecure:
				return e.ErrorWithHint(err, hintAllowInsecure)
			case refusedCheck(verr) == keepcert.CheckChain && *f.ca == "":
				return e.ErrorWithHint(err, hintVerifyCA)
			case unknownAuthority(verr) && *f.ca != "":
				return e.ErrorWithHint(err, hintVerifyCA+"; a keep run without an attestation service has a self-signed certificate, accepted only with --allow-insecure and no --ca")
			}
			return e.Errorf("%v", err)
		}
		return ExitOK
	}
}

// certificateNames copies the names the service put in the leaf: its
// SPIFFE ID and the DNS names and IP addresses the policy allowed.
func certificateNames(o *verifyOutput, leaf *x509.Certificate) {
	if id, err := keepcert.SPIFFEID(leaf); err == nil {
		o.SPIFFEID = id.String()
	}
	o.DNSNames = leaf.DNSNames
	for _, ip := range leaf.IPAddresses {
		o.IPAddresses = append(o.IPAddresses, ip.String())
	}
}

// keepAddress turns https://host:port (or host:port) into a dial address.
func keepAddress(s string) (string, error) {
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%q: %v", s, err)
	}
	if u.Scheme != "https" {
		return "", fmt.Errorf("%q: want an https:// URL", s)
	}
	if u.Host == "" {
		return "", fmt.Errorf("%q: no host", s)
	}
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), "443"), nil
	}
	return u.Host, nil
}

func printClaims(e *Env, o *verifyOutput) {
	w := e.Stdout
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	platform := o.Platform
	if o.Simulated {
		platform += " (simulated)"
	}
	fmt.Fprintf(w, "keep:        %s\n", o.URL)
	// The certificate's text is printed escaped (packages.Printable): with
	// --allow-insecure and no --ca any self-signed certificate gets here,
	// and its text must not print lines of its own or move the cursor.
	fmt.Fprintf(w, "workload:    %s\n", packages.Printable(o.WorkloadDigest))
	if o.Package != "" {
		fmt.Fprintf(w, "package:     %s\n", packages.Printable(o.Package))
	}
	if o.SPIFFEID != "" {
		fmt.Fprintf(w, "spiffe id:   %s\n", packages.Printable(o.SPIFFEID))
	}
	if len(o.DNSNames)+len(o.IPAddresses) > 0 {
		fmt.Fprintf(w, "names:       %s\n", printableJoin(append(append([]string(nil), o.DNSNames...), o.IPAddresses...)))
	}
	fmt.Fprintf(w, "platform:    %s\n", platform)
	fmt.Fprintf(w, "attested:    %s\n", yes(o.Attested))
	fmt.Fprintf(w, "insecure:    %s\n", yes(o.Insecure))
	if o.Status != "" {
		fmt.Fprintf(w, "ear status:  %s\n", o.Status)
	}
	fmt.Fprintf(w, "debug:       %s\n", yes(o.Debug))
	if o.Measurement != "" {
		fmt.Fprintf(w, "measurement: %s\n", o.Measurement)
	}
	if len(o.TCB) > 0 {
		fmt.Fprintf(w, "tcb:         %s\n", sortedPairs(o.TCB))
	}
	if len(o.Details) > 0 {
		keys := make([]string, 0, len(o.Details))
		for k := range o.Details {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "checked:     %s=%s\n", packages.Printable(k), packages.Printable(o.Details[k]))
		}
	}
	fmt.Fprintf(w, "issuer:      %s\n", packages.Printable(o.Issuer))
	fmt.Fprintf(w, "serial:      %s\n", o.Serial)
	fmt.Fprintf(w, "valid until: %s\n", o.NotAfter.Format(time.RFC3339))
	if o.Verified {
		fmt.Fprintf(w, "verified:    yes\n")
	} else {
		fmt.Fprintf(w, "verified:    no\n")
	}
}

// sortedPairs prints a map as "k=v k=v", sorted by key.
func sortedPairs[V uint64 | int](m map[string]V) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}
