package cli

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/kbs"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/workload"
)

// addKBSFlag adds run's --kbs: where a keep fetches the secrets its
// config names by kbs:/// reference ([secrets.kbs]).
func addKBSFlag(fs *flag.FlagSet, ro *runOptions) {
	fs.StringVar(&ro.kbs, "kbs", "", "Trustee KBS URL to fetch the config's [secrets.kbs] from (default: the attestation service, which also binds the workload digest; TLS roots: --attest-ca)")
}

// attestRoots reads --attest-ca; nil means the system roots.
func attestRoots(ro *runOptions) (*x509.CertPool, error) {
	if ro.attestCA == "" {
		return nil, nil
	}
	b, err := os.ReadFile(ro.attestCA)
	if err != nil {
		return nil, fmt.Errorf("--attest-ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("--attest-ca: %s: no PEM certificate in it", ro.attestCA)
	}
	return roots, nil
}

// fetchSecrets fills vals with the secrets cfg's [secrets.kbs] names: the
// keep attests over the KBS protocol with a fresh key (the hardware report
// binds it with the challenge, and, from a Castellan service, the workload
// digest) and gets each value encrypted to that key. The values exist in
// plaintext only in this keep's memory.
func fetchSecrets(e *Env, ro *runOptions, cfg *config.Config, art *workload.Artifact, vals map[string]string) int {
	if cfg == nil || len(cfg.SecretRefs) == 0 {
		return ExitOK
	}
	url, trustee := ro.kbs, ro.kbs != ""
	if url == "" {
		if url = ro.attest; url == "" {
			url = cfg.Steward
		}
	}
	if url == "" {
		return e.ErrorWithHint(errors.New("the config fetches secrets by kbs:/// reference ([secrets.kbs]) but the keep has no attestation service"),
			"give --attest URL (or steward in the config), or --kbs URL for a Trustee KBS")
	}
	if !strings.HasPrefix(url, "https://") {
		return e.Errorf("kbs %s: must be an https:// URL", url)
	}
	backend, err := tee.Open(ro.backend)
	if err != nil {
		return e.Usagef("--backend: %v", err)
	}
	if backend.Name() == tee.NameNil {
		return e.Errorf("%v", kbs.ErrNoEvidence)
	}
	roots, err := attestRoots(ro)
	if err != nil {
		return e.Errorf("%v", err)
	}
	hc := kbs.HTTPClient(roots, ro.attestTime, nil)
	defer hc.CloseIdleConnections()
	c := kbs.NewKeepClient(url, hc, backend, art.Digest.String())
	if trustee { // Trustee's verifier reads only guest-components' forms
		c = kbs.NewTrusteeClient(url, hc, backend)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ro.attestTime)
	defer cancel()
	got, err := c.FetchAll(ctx, cfg.SecretRefs, delivery.MaxSecretSize)
	if err != nil {
		return e.Errorf("%v", err)
	}
	for n, v := range got {
		vals[n] = v
	}
	e.Infof("fetched %d secrets from %s after attestation (%s)", len(got), url, backend.Platform())
	return ExitOK
}
