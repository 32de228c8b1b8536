package cli

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/castellan-dev/castellan/internal/atomicfile"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

var attestDevPolicyCmd = &Command{
	Name:    "attest dev-policy",
	Usage:   "attest dev-policy [-o DIR]",
	Summary: "write a development policy that trusts this machine's simulated keeps",
	Help: `Writes DIR/policy.toml and DIR/measurements.toml for 'castellan attest
serve': they trust the local simulation root (created now if it does not
exist) for sim-snp, sim-tdx, sim-sgx and sim-cca keeps, the measurements of
this castellan binary, and any workload. Certificates issued under it say insecure. It is
for trying attestation on a laptop; a production policy names AMD's and
Intel's roots only (see README). Existing files are never overwritten.`,
}

func init() {
	dir := func(fs *flag.FlagSet) *string {
		return fs.String("o", ".", "folder to write policy.toml and measurements.toml into")
	}
	DefineFlags(attestDevPolicyCmd.Name, func(fs *flag.FlagSet) { dir(fs) })
	attestDevPolicyCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(attestDevPolicyCmd)
		out := dir(fs)
		pos, status, ok := e.Parse(attestDevPolicyCmd, fs, args)
		if !ok {
			return status
		}
		if len(pos) != 0 {
			return e.Usagef("attest dev-policy: takes no arguments (see 'castellan help attest dev-policy')")
		}
		return writeDevPolicy(e, *out)
	}
	Register(attestDevPolicyCmd)
}

func writeDevPolicy(e *Env, dir string) int {
	ca, err := sim.Default()
	if err != nil {
		return e.Errorf("simulation root: %v", err)
	}
	m, err := tee.SimMeasurement()
	if err != nil {
		return e.Errorf("measurement of this binary: %v", err)
	}
	sgxM, err := tee.SimSGXMeasurement()
	if err != nil {
		return e.Errorf("measurement of this binary: %v", err)
	}
	ccaM, err := tee.SimCCAMeasurement()
	if err != nil {
		return e.Errorf("measurement of this binary: %v", err)
	}
	policy := fmt.Sprintf(`# Development policy written by 'castellan attest dev-policy'.
# It trusts simulated keeps of THIS machine only: their evidence is signed by
# the local simulation root below, not by AMD or Intel. Never use in production.

nonce_lifetime = "60s"
certificate_lifetime = "1h"

# Keeps without any TEE (--backend nil) are refused; set true to allow them.
allow_insecure = false

# Any workload digest; list "sha256:..." digests to allow only those.
workloads = ["any"]

# Every certificate carries the SPIFFE ID spiffe://TRUST-DOMAIN/PATH;
# {digest} is the workload digest's hex, {name} an [[identity]]'s name.
[spiffe]
trust_domain = "castellan.invalid"
path = "/workload/{digest}"

# DNS names and IP addresses a workload's keeps may ask for ("*.domain"
# also allows one label under it); names not listed are refused.
# [[identity]]
# workload = "sha256:..."
# name = "web"
# dns = ["web.example", "*.web.example"]
# ips = ["10.0.0.5"]

[platforms.snp]
sim_roots = [%q]

[platforms.tdx]
sim_roots = [%q]

# SGX: the simulation root signs the PCK chain; Intel's TCB status of the
# simulated platform comes from the collateral folder beside the roots, as
# for TDX (tcb_statuses, default UpToDate).
[platforms.sgx]
sim_roots = [%q]

# CCA: the roots file also holds the simulated CPAK's certificate.
[platforms.cca]
sim_roots = [%q]
`, ca.RootsPath(), ca.RootsPath(), ca.RootsPath(), ca.RootsPath())
	measurements := fmt.Sprintf(`# Measurements written by 'castellan attest dev-policy': the launch
# measurement that simulated keeps of this castellan binary report. A new
# castellan build has a new measurement; run dev-policy again or add it here.

[[measurement]]
platform = "snp"
value = %q
name = "this castellan binary, simulated SEV-SNP"

[[measurement]]
platform = "tdx"
value = %q
name = "this castellan binary, simulated TDX"

[[measurement]]
platform = "sgx"
value = %q
name = "this castellan binary, simulated SGX enclave (MRENCLAVE)"

[[measurement]]
platform = "cca"
value = %q
name = "this castellan binary, simulated CCA realm (RIM)"
`, m, m, sgxM, ccaM)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return e.Errorf("%v", err)
	}
	files := []struct{ name, text string }{{"policy.toml", policy}, {"measurements.toml", measurements}}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if _, err := os.Stat(p); err == nil {
			return e.Errorf("%s: already exists; remove it or choose another folder with -o", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return e.Errorf("%v", err)
		}
	}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := atomicfile.Write(p, []byte(f.text), 0o644); err != nil {
			return e.Errorf("%v", err)
		}
		fmt.Fprintln(e.Stdout, p)
	}
	e.Infof("the policy trusts the simulation root %s and measurement %s", ca.RootsPath(), m)
	return ExitOK
}
