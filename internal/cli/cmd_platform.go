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
	Help: `For each backend (snp, tdx, sim-snp, sim-tdx, nil) prints whether a keep
can use it here, the reason if not, and a hint. "--backend auto" picks snp or
tdx when usable, else nil; it never picks a simulation.

Also prints the measurement that simulated evidence from this castellan
binary claims (SHA-384 of the executable), for the measurement database, and
the file holding the simulation roots, for a policy that trusts them.`,
}

type platformInfoOutput struct {
	Backends       []tee.Status `json:"backends"`
	Auto           string       `json:"auto"`
	SimMeasurement string       `json:"sim_measurement"`
	SimRoots       string       `json:"sim_roots,omitempty"`
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
			if s.Usable && (s.Name == tee.NameSNP || s.Name == tee.NameTDX) {
				out.Auto = s.Name
				break
			}
		}
		m, err := tee.SimMeasurement()
		if err != nil {
			return e.Errorf("%v", err)
		}
		out.SimMeasurement = m
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
		if out.SimRoots != "" {
			fmt.Fprintf(e.Stdout, "sim roots:       %s\n", out.SimRoots)
		}
		return ExitOK
	}
	Register(platformInfoCmd)
}
