// Package collateral gets the vendors' attestation collateral: what a
// verifier needs beside the evidence to judge it (AMD's VCEK certificates
// and CRLs from its Key Distribution Service; Intel's TCB info, QE identity
// and CRLs from its Provisioning Certification Service or a PCCS). A
// Source answers a URL with a body and headers; the implementations are
// the network (HTTP: timeouts, backoff, Retry-After), a disk cache in
// front of another source (Cache), and the same folder read without any
// network (Cache with no upstream: the offline mode), and a budget of
// fetches (Limit). The SEV-SNP verifier fetches through it directly; the
// TDX verifier (and an SGX one later) through TDXGetter, go-tdx-guest's
// getter interface, so the library's own collateral code runs unchanged on
// top of this.
//
// The folder layout is the URL: host, then path, then "@" and the query if
// there is one (https://kdsintf.amd.com/vcek/v1/Milan/crl is
// kdsintf.amd.com/vcek/v1/Milan/crl), and beside it a hidden file, "."
// + its name + ".headers", with the response headers that matter (JSON),
// for Intel's responses whose signing chain travels in a header. A cache
// folder filled on a machine with network is an offline folder for one
// without.
package collateral

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"
)

// Response is a collateral document.
type Response struct {
	Header http.Header // the headers kept (see keptHeaders); nil if none
	Body   []byte
	// Fetched is when the document was fetched from its origin.
	Fetched time.Time
}

// Source gets the document at a URL.
type Source interface {
	Get(ctx context.Context, url string) (*Response, error)
}

// ErrNotFound is returned (wrapped) when a source knows a document does
// not exist (HTTP 404, or not in an offline folder).
var ErrNotFound = errors.New("not found")

// MaxSize bounds a collateral document; Intel's largest (a TCB info) is a
// few tens of kilobytes, a CRL a few hundred at most.
const MaxSize = 4 << 20

// keptHeaders are the response headers stored with a document: Intel PCS
// puts the issuer chain of a signed response in them.
var keptHeaders = []string{
	"Sgx-Pck-Crl-Issuer-Chain",
	"Tcb-Info-Issuer-Chain",
	"Sgx-Enclave-Identity-Issuer-Chain",
	"Sgx-Tcb-Info-Issuer-Chain",
	"Content-Type",
}

func keep(h http.Header) http.Header {
	out := http.Header{}
	for _, k := range keptHeaders {
		if v := h.Values(k); len(v) > 0 {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// FileName returns the path, relative to a collateral folder, of the
// document at u.
func FileName(u string) (string, error) {
	p, err := url.Parse(u)
	if err != nil || p.Host == "" || (p.Scheme != "https" && p.Scheme != "http") {
		return "", fmt.Errorf("collateral URL %q: want an http(s) URL with a host", u)
	}
	clean := path.Clean("/" + p.Path)
	if clean == "/" || strings.HasPrefix(p.Host, ".") || strings.ContainsAny(p.Host, `/\`) {
		return "", fmt.Errorf("collateral URL %q: names no document", u)
	}
	for _, part := range strings.Split(clean[1:], "/") {
		if strings.HasPrefix(part, ".") {
			return "", fmt.Errorf("collateral URL %q: path %q cannot name a file", u, clean)
		}
	}
	name := p.Host + clean
	if p.RawQuery != "" {
		name += "@" + strings.ReplaceAll(strings.ReplaceAll(p.RawQuery, "%", "%25"), "/", "%2F")
	}
	return name, nil
}
