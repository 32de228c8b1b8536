package cli

import (
	"bytes"
	"strings"
	"testing"
)

// TestPrintClaimsEscapes: castellan verify --allow-insecure accepts any
// self-signed keep certificate, so the text of its claims and names is the
// attacker's. A package name, check detail, DNS name or issuer holding a
// newline or a terminal escape must not print a line of its own (a fake
// "verified:    yes") or move the cursor over "attested:    no".
func TestPrintClaimsEscapes(t *testing.T) {
	evil := "x\nattested:    yes\x1b[1A\x1b[2K\r"
	var out bytes.Buffer
	e := &Env{Stdout: &out}
	printClaims(e, &verifyOutput{
		URL: "https://keep.example:8443", WorkloadDigest: "sha256:" + evil, Package: evil,
		SPIFFEID: "spiffe://td/" + evil, DNSNames: []string{evil}, Details: map[string]string{evil: evil},
		Issuer: "CN=" + evil, Platform: "snp",
	})
	if strings.ContainsAny(out.String(), "\x1b\r") || strings.Contains(out.String(), "\nattested:    yes") {
		t.Errorf("certificate text reached the terminal raw:\n%q", out.String())
	}
}
