package cli

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/atomicfile"
	"github.com/castellan-dev/castellan/internal/attest/client"
	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/keepreport"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/workload"
	"github.com/castellan-dev/castellan/keepcert"
)

// defaultAttestTimeout bounds the whole exchange with the attestation
// service (--attest-timeout).
const defaultAttestTimeout = 30 * time.Second

// keepCertificate gives the keep its certificate before the workload
// starts. With an attestation service (--attest or the config's steward)
// the keep proves itself with the backend's evidence and gets a certificate
// whose claims the service checked; without one, a self-signed certificate
// that says it is not attested, made only when a TLS descriptor or
// --report needs it. With --report, the keep then writes what it is and
// what proves it (keepreport.Report) before the workload starts.
func keepCertificate(ctx context.Context, e *Env, ro *runOptions, cfg *config.Config, art *workload.Artifact) (*tls.Certificate, int) {
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
	digest := art.Digest.String()
	var cert *tls.Certificate
	switch {
	case url != "":
		if cert, err = attestedCertificate(ctx, e, ro, url, backend, digest); err != nil {
			if _, ok := stoppedBy(ctx); ok {
				return nil, ExitError // the caller says what was stopped
			}
			err = fmt.Errorf("attestation with %s: %w", url, err)
			switch {
			case unknownAuthority(err):
				return nil, e.ErrorWithHint(err, hintAttestCA)
			case refusedCheck(err) == keepcert.CheckInsecure:
				return nil, e.ErrorWithHint(err, fmt.Sprintf(hintPolicyInsecure, "the attestation service's policy"))
			}
			return nil, e.Errorf("%v", err)
		}
	case usesTLS(cfg) || ro.report != "":
		if cert, err = client.SelfSigned(digest); err != nil {
			return nil, e.Errorf("keep certificate: %v", err)
		}
		if usesTLS(cfg) {
			e.Warningf("no attestation service (--attest or steward in the config): the keep's TLS certificate is self-signed and not attested")
		}
	}
	if ro.report != "" {
		if err := writeKeepReport(ctx, ro, cert, backend, url, digest); err != nil {
			return nil, e.Errorf("--report %s: %v", ro.report, err)
		}
	}
	return cert, ExitOK
}

func attestedCertificate(ctx context.Context, e *Env, ro *runOptions, url string, backend tee.Backend, digest string) (*tls.Certificate, error) {
	if !strings.HasPrefix(url, "https://") {
		return nil, fmt.Errorf("must be an https:// URL")
	}
	roots, err := attestRoots(ro)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeoutCause(ctx, ro.attestTime, errAttestTimeout(ro.attestTime))
	defer cancel()
	cert, claims, err := client.Obtain(ctx, url, roots, backend, digest, "")
	if err != nil {
		return nil, namedTimeout(ctx, err)
	}
	what := claims.Platform
	if claims.Insecure {
		what += ", insecure"
	}
	e.Infof("attested by %s (%s, certificate valid until %s)", url, what, cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	return cert, nil
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

func writeKeepReport(ctx context.Context, ro *runOptions, cert *tls.Certificate, backend tee.Backend, url, digest string) error {
	path := ro.report
	r := keepreport.Report{WorkloadDigest: digest, Backend: backend.Name(), Platform: backend.Platform(), Attested: url != "", AttestationService: url}
	for _, der := range cert.Certificate {
		r.CertificateChain = append(r.CertificateChain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	}
	claims, err := keepcert.FromCertificate(cert.Leaf)
	if err != nil {
		return err
	}
	r.Claims = claims
	if backend.Name() != tee.NameNil || url != "" {
		spki, err := x509.MarshalPKIXPublicKey(cert.Leaf.PublicKey)
		if err != nil {
			return err
		}
		nonce := make([]byte, 32)
		rand.Read(nonce)
		ctx, cancel := context.WithTimeoutCause(ctx, ro.attestTime, errAttestTimeout(ro.attestTime))
		defer cancel()
		env, err := tee.Attest(ctx, backend, spki, nonce, digest)
		if err != nil {
			return fmt.Errorf("evidence: %w", namedTimeout(ctx, err))
		}
		if r.Evidence, err = env.Marshal(); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o644)
}
