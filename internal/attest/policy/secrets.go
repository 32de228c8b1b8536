package policy

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/kbs"
)

// Secrets the service releases to keeps that attested ([[secret]]):
//
//	[[secret]]
//	resource = "default/db/password"   # kbs:///default/db/password
//	file = "secrets/db-password"       # its value; relative to the policy's folder, mode 0600
//	workloads = ["sha256:..."]         # released to these workload digests
//	platforms = ["snp", "tdx"]         # optional: only on these platforms
//	measurements = ["<hex>"]           # optional: only with these launch measurements
//
// An entry names workloads, measurements or both, never neither: a secret
// is never released to whatever attests. Values are read when the policy
// is loaded and held in the snapshot; they never reach a log or an error.

// CheckSecret names a refused release.
const CheckSecret = "secret"

// Secret is a [[secret]] entry.
type Secret struct {
	Resource     string   `toml:"resource"`
	File         string   `toml:"file"`
	Workloads    []string `toml:"workloads"`
	Platforms    []string `toml:"platforms"`
	Measurements []string `toml:"measurements"`
}

// maxSecretBytes bounds one value (as config secrets are bounded).
const maxSecretBytes = 64 << 10

type secretEntry struct {
	Secret
	value []byte
}

func (s *Snapshot) checkSecrets(file string) error {
	s.secrets = map[string]*secretEntry{}
	for i, e := range s.Policy.Secrets {
		where := fmt.Sprintf("%s: secret %d", file, i+1)
		ref, err := kbs.ParsePath(e.Resource)
		if err != nil {
			return fmt.Errorf("%s: resource: %w", where, err)
		}
		if _, dup := s.secrets[ref.Path()]; dup {
			return fmt.Errorf("%s: resource %s is listed twice", where, ref.Path())
		}
		if len(e.Workloads) == 0 && len(e.Measurements) == 0 {
			return fmt.Errorf("%s: %s names no workloads and no measurements; a secret is released only to keeps the entry names", where, ref.Path())
		}
		for _, w := range e.Workloads {
			if !digestRE().MatchString(w) {
				return fmt.Errorf("%s: workloads: %q is not a sha256:<64 hex> digest", where, w)
			}
		}
		for _, p := range e.Platforms {
			if _, ok := tcbComponents()[p]; !ok {
				return fmt.Errorf("%s: platforms: unknown platform %q (snp, tdx, sgx or cca)", where, p)
			}
		}
		for _, m := range e.Measurements {
			if b, err := hex.DecodeString(m); err != nil || len(b) < 32 || len(b) > 64 {
				return fmt.Errorf("%s: measurements: %q is not a measurement in hex", where, m)
			}
		}
		if e.File == "" {
			return fmt.Errorf("%s: %s has no file", where, ref.Path())
		}
		path := e.File
		if !filepath.IsAbs(path) {
			path = filepath.Join(filepath.Dir(file), path)
		}
		v, err := readSecretFile(path)
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		s.secrets[ref.Path()] = &secretEntry{Secret: e, value: v}
	}
	return nil
}

// readSecretFile reads a value file, refusing one that group or others
// may read, or one over maxSecretBytes.
func readSecretFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s may be read by group or others (mode %04o); chmod 600 it", path, fi.Mode().Perm())
	}
	if fi.Size() > maxSecretBytes {
		return nil, fmt.Errorf("%s is over %d bytes", path, maxSecretBytes)
	}
	var b bytes.Buffer
	if _, err := b.ReadFrom(f); err != nil {
		return nil, err
	}
	if b.Len() > maxSecretBytes {
		return nil, fmt.Errorf("%s is over %d bytes", path, maxSecretBytes)
	}
	return b.Bytes(), nil
}

// Release returns the value of the secret at resource path for a keep
// whose claims were verified and accepted, or a refusal naming why. The
// refusal's reason names the resource and the keep, never the value.
func (s *Snapshot) Release(path string, c *evidence.Claims) ([]byte, *Refusal) {
	e, ok := s.secrets[path]
	if !ok {
		return nil, refuse(CheckSecret, "no secret kbs:///%s is listed in the policy", path)
	}
	if len(e.Platforms) > 0 && !slices.Contains(e.Platforms, c.Platform) {
		return nil, refuse(CheckSecret, "secret kbs:///%s is not released on platform %s", path, c.Platform)
	}
	if len(e.Workloads) > 0 && !slices.Contains(e.Workloads, c.WorkloadDigest) {
		w := c.WorkloadDigest
		if w == "" {
			w = "(none bound)"
		}
		return nil, refuse(CheckSecret, "secret kbs:///%s is not released to workload %s", path, w)
	}
	if len(e.Measurements) > 0 && !slices.Contains(e.Measurements, hex.EncodeToString(c.Measurement)) {
		return nil, refuse(CheckSecret, "secret kbs:///%s is not released to measurement %s", path, hex.EncodeToString(c.Measurement))
	}
	return bytes.Clone(e.value), nil
}
