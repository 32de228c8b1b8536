package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/client"
	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/workload"
)

// attestTimeout bounds the whole exchange with the attestation service.
const attestTimeout = 30 * time.Second

// keepCertificate gives the keep its certificate before the workload
// starts. With an attestation service (--attest or the config's steward)
// the keep proves itself with the backend's evidence and gets a certificate
// whose claims the service checked; without one, a self-signed certificate
// that says it is not attested, made only when a TLS descriptor needs it.
func keepCertificate(e *Env, ro *runOptions, cfg *config.Config, art *workload.Artifact) (*tls.Certificate, int) {
	backend, err := tee.Open(ro.backend)
	if err != nil {
		return nil, e.Usagef("--backend: %v", err)
	}
	if err := backend.Available(); err != nil {
		e.Errorf("backend %s: %v", backend.Name(), err)
		e.Hintf("'castellan platform info' lists the backends usable on this host")
		return nil, ExitError
	}
	url := ro.attest
	if url == "" && cfg != nil {
		url = cfg.Steward
	}
	if url == "" {
		if !usesTLS(cfg) {
			return nil, ExitOK
		}
		cert, err := client.SelfSigned(art.Digest.String())
		if err != nil {
			return nil, e.Errorf("keep certificate: %v", err)
		}
		e.Warningf("no attestation service (--attest or steward in the config): the keep's TLS certificate is self-signed and not attested")
		return cert, ExitOK
	}
	if !strings.HasPrefix(url, "https://") {
		return nil, e.Usagef("attestation service %q: must be an https:// URL", url)
	}
	var roots *x509.CertPool
	if ro.attestCA != "" {
		pem, err := os.ReadFile(ro.attestCA)
		if err != nil {
			return nil, e.Errorf("--attest-ca: %v", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, e.Errorf("--attest-ca: %s: no PEM certificate in it", ro.attestCA)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), attestTimeout)
	defer cancel()
	cert, claims, err := client.Obtain(ctx, url, roots, backend, art.Digest.String(), "")
	if err != nil {
		return nil, e.Errorf("attestation with %s: %v", url, err)
	}
	what := claims.Platform
	if claims.Insecure {
		what += ", insecure"
	}
	until := ""
	if cert.Leaf != nil {
		until = fmt.Sprintf(", valid until %s", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	e.Infof("attested by %s (%s%s)", url, what, until)
	return cert, ExitOK
}

// usesTLS reports whether any descriptor ends or starts TLS in the keep.
func usesTLS(cfg *config.Config) bool {
	if cfg == nil {
		return false
	}
	for _, f := range cfg.Files {
		if (f.Kind == config.KindListen || f.Kind == config.KindConnect) && f.Prot == config.ProtTLS {
			return true
		}
	}
	return false
}
