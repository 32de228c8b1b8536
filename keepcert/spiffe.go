package keepcert

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
)

// SPIFFEID returns the SPIFFE ID of a keep certificate issued by an
// attestation service: its one URI SAN, spiffe://TRUST-DOMAIN/PATH, with
// the trust domain and path the service's policy gave the workload. It is
// the identity service meshes and SPIFFE-aware proxies check; read it only
// from a certificate VerifyChain accepted. Self-signed keep certificates
// carry none (an error).
func SPIFFEID(leaf *x509.Certificate) (*url.URL, error) {
	var id *url.URL
	for _, u := range leaf.URIs {
		if u.Scheme != "spiffe" {
			continue
		}
		if id != nil {
			return nil, errors.New("keep certificate: more than one SPIFFE ID")
		}
		if u.Host == "" || u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
			return nil, fmt.Errorf("keep certificate: SPIFFE ID %q is malformed", u)
		}
		id = u
	}
	if id == nil {
		return nil, errors.New("keep certificate: no SPIFFE ID")
	}
	return id, nil
}
