package cli

import "github.com/castellan-dev/castellan/internal/host"

// The keep process that `castellan host serve` starts for each keep, by
// re-executing its own binary. Not for direct use: its flags are the
// agent's contract with it (see internal/host KeepMain).
func init() {
	Register(&Command{
		Name:    "keep",
		Usage:   "keep (started by the host agent)",
		Summary: "the keep process of the host agent (internal; started by 'castellan host serve')",
		Hidden:  true,
		Run: func(e *Env, args []string) int {
			return host.KeepMain(args, e.Stderr)
		},
	})
}
