package service

import (
	"crypto/x509"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/keepcert"
)

const identityPolicy = `
[spiffe]
trust_domain = "test.example"
path = "/keep/{name}/{digest}"

[[identity]]
workload = "%s"
name = "web"
dns = ["keep.example", "*.svc.example"]
ips = ["10.0.0.5", "fd00::5"]
`

func withIdentity(h *harness) {
	h.setPolicy(func(s string) string {
		return s + strings.Replace(identityPolicy, "%s", goodDigest, 1)
	})
}

// Issue 10, defect 3: allow_sans = true let a CSR name *.example.com and
// www.google.com. Names now come from the policy's [[identity]] of the
// workload; every certificate carries the SPIFFE ID the policy gives.
func TestNamesAllowed(t *testing.T) {
	h := newHarness(t)
	withIdentity(h)
	wantID := "spiffe://test.example/keep/web/" + strings.TrimPrefix(goodDigest, "sha256:")
	tests := []struct {
		name string
		dns  []string
		ips  []net.IP
		want []string // DNS names in the certificate
	}{
		{"no names", nil, nil, nil},
		{"listed", []string{"keep.example"}, nil, []string{"keep.example"}},
		{"one label under a listed wildcard", []string{"a.svc.example"}, nil, []string{"a.svc.example"}},
		{"the listed wildcard itself", []string{"*.svc.example"}, nil, []string{"*.svc.example"}},
		{"upper case, issued in lower case", []string{"KEEP.Example"}, nil, []string{"keep.example"}},
		{"listed IPs", nil, []net.IP{net.ParseIP("10.0.0.5"), net.ParseIP("fd00::5")}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			code, e, cr := h.post(h.body(keepReq{csrTpl: &x509.CertificateRequest{DNSNames: tt.dns, IPAddresses: tt.ips}}))
			if code != http.StatusOK {
				t.Fatalf("%d %+v", code, e)
			}
			leaf := parsePEM(t, cr.Chain[0])
			if strings.Join(leaf.DNSNames, ",") != strings.Join(tt.want, ",") || len(leaf.IPAddresses) != len(tt.ips) {
				t.Errorf("names %v %v", leaf.DNSNames, leaf.IPAddresses)
			}
			id, err := keepcert.SPIFFEID(leaf)
			if err != nil || id.String() != wantID || len(leaf.URIs) != 1 {
				t.Errorf("SPIFFE ID %v, %v (URIs %v); want %s", id, err, leaf.URIs, wantID)
			}
		})
	}
}

func TestNamesRefused(t *testing.T) {
	h := newHarness(t)
	withIdentity(h)
	mustURL := func(s string) *url.URL { u, _ := url.Parse(s); return u }
	tests := []struct {
		name   string
		tpl    x509.CertificateRequest
		reason string
	}{
		{"a wildcard not listed", x509.CertificateRequest{DNSNames: []string{"*.example.com"}}, `"*.example.com"`},
		{"someone else's name", x509.CertificateRequest{DNSNames: []string{"keep.example", "www.google.com"}}, `"www.google.com"`},
		{"a wildcard under a listed name", x509.CertificateRequest{DNSNames: []string{"*.keep.example"}}, `"*.keep.example"`},
		{"two labels under a listed wildcard", x509.CertificateRequest{DNSNames: []string{"a.b.svc.example"}}, `"a.b.svc.example"`},
		{"the wildcard's base", x509.CertificateRequest{DNSNames: []string{"svc.example"}}, `"svc.example"`},
		{"a wildcard over a listed wildcard", x509.CertificateRequest{DNSNames: []string{"*.*.svc.example"}}, `"*.*.svc.example"`},
		{"an IP not listed", x509.CertificateRequest{IPAddresses: []net.IP{net.ParseIP("10.0.0.6")}}, "10.0.0.6"},
		{"a URI", x509.CertificateRequest{URIs: []*url.URL{mustURL("spiffe://test.example/admin")}}, "spiffe://test.example/admin"},
		{"an e-mail address", x509.CertificateRequest{EmailAddresses: []string{"a@keep.example"}}, "a@keep.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			e := h.mustRefuse(h.body(keepReq{csrTpl: &tt.tpl}), CheckCSR)
			if !strings.Contains(e.Error, tt.reason) {
				t.Errorf("reason %q does not name %s", e.Error, tt.reason)
			}
		})
	}
	// A workload with no [[identity]] may claim no name.
	h.t = t
	h.setPolicy(func(s string) string {
		return strings.Replace(s, `workloads = ["`+goodDigest+`"]`, `workloads = ["any"]`, 1) + strings.Replace(identityPolicy, "%s", otherDigest, 1)
	})
	e := h.mustRefuse(h.body(keepReq{csrTpl: &x509.CertificateRequest{DNSNames: []string{"keep.example"}}}), CheckCSR)
	if !strings.Contains(e.Error, `"keep.example"`) || !strings.Contains(e.Error, goodDigest) {
		t.Errorf("reason %q", e.Error)
	}
	// With {name} in the path, "any" workload without a name gets no certificate.
	h.mustRefuse(h.body(keepReq{}), "workload")
}

// Without a [spiffe] table, the SPIFFE ID names the workload digest under
// the default trust domain.
func TestDefaultSPIFFEID(t *testing.T) {
	h := newHarness(t)
	code, e, cr := h.post(h.body(keepReq{}))
	if code != http.StatusOK {
		t.Fatalf("%d %+v", code, e)
	}
	id, err := keepcert.SPIFFEID(parsePEM(t, cr.Chain[0]))
	if want := "spiffe://castellan.invalid/workload/" + strings.TrimPrefix(goodDigest, "sha256:"); err != nil || id.String() != want {
		t.Errorf("SPIFFE ID %v, %v; want %s", id, err, want)
	}
}
