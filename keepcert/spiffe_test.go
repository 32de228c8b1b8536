package keepcert

import (
	"crypto/x509"
	"net/url"
	"strings"
	"testing"
)

func TestSPIFFEID(t *testing.T) {
	u := func(s string) *url.URL {
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name string
		uris []*url.URL
		want string // SPIFFE ID, or "error: ..." substring
	}{
		{"one", []*url.URL{u("spiffe://castellan.example/workload/web")}, "spiffe://castellan.example/workload/web"},
		{"beside other URIs", []*url.URL{u("https://x.example/"), u("spiffe://td/p")}, "spiffe://td/p"},
		{"none", nil, "error: no SPIFFE ID"},
		{"two", []*url.URL{u("spiffe://td/a"), u("spiffe://td/b")}, "error: more than one"},
		{"with a port", []*url.URL{u("spiffe://td:8/a")}, "error: malformed"},
		{"with a query", []*url.URL{u("spiffe://td/a?x=1")}, "error: malformed"},
		{"no trust domain", []*url.URL{u("spiffe:///a")}, "error: malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := SPIFFEID(&x509.Certificate{URIs: tt.uris})
			if want, ok := strings.CutPrefix(tt.want, "error: "); ok {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("got %v, %v; want error %q", id, err, want)
				}
				return
			}
			if err != nil || id.String() != tt.want {
				t.Errorf("got %v, %v; want %s", id, err, tt.want)
			}
		})
	}
}
