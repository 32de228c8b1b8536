package kbs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"time"
)

// ErrNoEvidence refuses [secrets.kbs] to a keep of the nil backend: a
// KBS releases secrets only against evidence.
var ErrNoEvidence = errors.New("[secrets.kbs]: backend nil has no evidence: a KBS releases secrets only to keeps in a TEE (sim-* for development)")

// HTTPClient is a keep's HTTP client of a KBS: TLS 1.2 or later to roots
// (nil: the system's), each request within timeout. dial, if not nil,
// makes its connections (a VM keep's go through the host's relay); TLS
// runs over them and still checks the URL's host name. Callers close its
// idle connections when done.
func HTTPClient(roots *x509.CertPool, timeout time.Duration, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: dial,
		TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true}}
}

// Attester is what a keep's Client needs of its TEE backend (tee.Backend
// has these methods): the platform and evidence over report data.
type Attester interface {
	Platform() string
	Evidence(ctx context.Context, reportData [64]byte) (raw []byte, endorsements [][]byte, err error)
}

// NewKeepClient is the Client of a keep of a Castellan service: its
// evidence, from a, goes in Castellan's form of tee-evidence, and digest
// (the workload's) is bound into the runtime data, since a Castellan
// service releases secrets by it.
func NewKeepClient(url string, hc *http.Client, a Attester, digest string) *Client {
	return newKeepClient(url, hc, a, digest, MarshalEvidence)
}

// NewTrusteeClient is the Client of a keep of a Trustee KBS: its evidence
// goes in the form guest-components' attester sends for its platform, the
// only one Trustee's verifier reads, and no workload digest is bound
// (Trustee's runtime data has none).
func NewTrusteeClient(url string, hc *http.Client, a Attester) *Client {
	return newKeepClient(url, hc, a, "", MarshalTrusteeEvidence)
}

func newKeepClient(url string, hc *http.Client, a Attester, digest string,
	form func(platform string, raw []byte, end [][]byte) (json.RawMessage, error)) *Client {
	platform := a.Platform()
	return &Client{URL: url, HTTP: hc, TEE: platform, WorkloadDigest: digest,
		Evidence: func(ctx context.Context, rd [64]byte) (json.RawMessage, error) {
			raw, end, err := a.Evidence(ctx, rd)
			if err != nil {
				return nil, err
			}
			return form(platform, raw, end)
		}}
}

// FetchAll fetches the resources refs names (secret name to kbs:///
// reference), in name order over one attested session, each value at most
// max bytes. Errors name the secret and the service, never a value.
func (c *Client) FetchAll(ctx context.Context, refs map[string]string, max int) (map[string]string, error) {
	names := make([]string, 0, len(refs))
	for n := range refs {
		names = append(names, n)
	}
	sort.Strings(names)
	vals := make(map[string]string, len(names))
	for _, n := range names {
		ref, err := ParseRef(refs[n])
		if err != nil {
			return nil, fmt.Errorf("secret %s: %w", n, err)
		}
		v, err := c.Resource(ctx, ref)
		if err != nil {
			return nil, fmt.Errorf("secret %s from %s: %w", n, c.URL, err)
		}
		if len(v) > max {
			return nil, fmt.Errorf("secret %s from %s: %s is over %d bytes", n, c.URL, ref, max)
		}
		vals[n] = string(v)
	}
	return vals, nil
}
