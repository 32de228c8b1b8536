package cli

import (
	"flag"
	"fmt"

	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

var platformInfoCmd = &Command{
	Name:    "platform info",
	Usage:   "platform info [--json]",
	Summary: "say which TEE backends this host can use, and why not",
	Help: `For each backend (snp, tdx, sgx, cca, sim-snp, sim-tdx, sim-sgx, sim-cca,
nil) prints whether a keep can use it here, the reason if not, and a hint.
"--backend auto" picks snp, tdx, sgx or cca when usable, else nil; it never
picks a simulation.

Also prints the measurements that simulated evidence from this castellan
binary claims (SNP and TDX: SHA-384 of the executable; the SGX MRENCLAVE and
the CCA Realm Initial Measurement derived from it), for the measurement
database, and the file holding the simulation roots, for a policy that
trusts them.`,
}

type platformInfoOutput struct {
	Backends        []tee.Status `json:"backends"`
	Auto            string       `json:"auto"`
	SimMeasurement  string       `json:"sim_measurement"`
	SimSGXMREnclave string       `json:"sim_sgx_mrenclave"`
	SimCCARIM       string       `json:"sim_cca_rim"`
	SimRoots        string       `json:"sim_roots,omitempty"`
}

func addPlatformInfoFlags(fs *flag.FlagSet) (asJSON *bool) {
	return fs.Bool("json", false, "print JSON")
}

func init() {
	DefineFlags(platformInfoCmd.Name, func(fs *flag.FlagSet) { addPlatformInfoFlags(fs) })
	platformInfoCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(platformInfoCmd)
		asJSON := addPlatformInfoFlags(fs)
		pos, status, ok := e.Parse(platformInfoCmd, fs, args)
		if !ok {
			return status
		}
		if len(pos) != 0 {
			return e.Usagef("platform info: takes no arguments, got %q", pos[0])
		}
		out := platformInfoOutput{Backends: tee.Info(), Auto: tee.NameNil}
		for _, s := range out.Backends {
			if s.Usable && (s.Name == tee.NameSNP || s.Name == tee.NameTDX || s.Name == tee.NameSGX || s.Name == tee.NameCCA) {
				out.Auto = s.Name
				break
			}
		}
		m, err := tee.SimMeasurement()
		if err != nil {
			return e.Errorf("%v", err)
		}
		out.SimMeasurement = m
		if out.SimSGXMREnclave, err = tee.SimSGXMeasurement(); err != nil {
			return e.Errorf("%v", err)
		}
		if out.SimCCARIM, err = tee.SimCCAMeasurement(); err != nil {
			return e.Errorf("%v", err)
		}
		if dir, err := sim.DefaultDir(); err == nil {
			out.SimRoots = sim.RootsPath(dir)
		}
		if *asJSON {
			if code := e.PrintJSON(out); code != ExitOK {
				return code
			}
			return ExitOK
		}
		for _, s := range out.Backends {
			state := "usable"
			if !s.Usable {
				state = "not usable"
			}
			fmt.Fprintf(e.Stdout, "%-8s %-4s %s\n", s.Name, s.Platform, state)
			if s.Reason != "" {
				fmt.Fprintf(e.Stdout, "         why:  %s\n", s.Reason)
			}
			if s.Hint != "" {
				fmt.Fprintf(e.Stdout, "         hint: %s\n", s.Hint)
			}
		}
		fmt.Fprintf(e.Stdout, "\nauto:            %s\n", out.Auto)
		fmt.Fprintf(e.Stdout, "sim measurement: %s\n", out.SimMeasurement)
		fmt.Fprintf(e.Stdout, "sim sgx mrenclave: %s\n", out.SimSGXMREnclave)
		fmt.Fprintf(e.Stdout, "sim cca rim:     %s\n", out.SimCCARIM)
		if out.SimRoots != "" {
			fmt.Fprintf(e.Stdout, "sim roots:       %s\n", out.SimRoots)
		}
		return ExitOK
	}
	Register(platformInfoCmd)
}
