package cli

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/runtime"
)

var inspectCmd = &Command{
	Name:    "inspect",
	Usage:   "inspect [flags] app.wasm",
	Summary: "check a workload without running it and print its digest and descriptors",
	Help: `Compiles app.wasm (checking that castellan provides every import and
that it has a _start function), parses its config, and prints the workload
digest that run, package build, deploy and the keep's certificate report.`,
}

type inspectOutput struct {
	Module      string            `json:"module"`
	Size        int               `json:"size"`
	Digest      string            `json:"digest"`
	Config      string            `json:"config,omitempty"`
	Args        []string          `json:"args"`
	Env         map[string]string `json:"env,omitempty"`
	Steward     string            `json:"steward,omitempty"`
	StewardCA   string            `json:"steward_ca,omitempty"`
	Secrets     []string          `json:"secrets,omitempty"`
	Descriptors []inspectFD       `json:"descriptors"`
	Limits      config.Limits     `json:"limits"`
	// Replicas is the config's replicas: a number, or "auto".
	Replicas string `json:"replicas,omitempty"`
}

type inspectFD struct {
	FD   int    `json:"fd"`
	Kind string `json:"kind"`
	Name string `json:"name"`
	What string `json:"what,omitempty"`
}

func init() {
	type opts struct {
		cfgPath, cacheDir *string
		asJSON            *bool
	}
	flags := func(fs *flag.FlagSet) opts {
		return opts{
			cfgPath:  fs.String("c", "", "workload config (Enarx.toml format)"),
			asJSON:   fs.Bool("json", false, "print JSON"),
			cacheDir: fs.String("cache-dir", defaultCacheDir(), "compilation cache folder"),
		}
	}
	DefineFlags("inspect", func(fs *flag.FlagSet) { flags(fs) })
	inspectCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(inspectCmd)
		o := flags(fs)
		cfgPath, cacheDir, asJSON := o.cfgPath, o.cacheDir, o.asJSON
		pos, status, ok := e.Parse(inspectCmd, fs, args)
		if !ok {
			return status
		}
		if len(pos) != 1 {
			return e.Usagef("inspect: want one module file, got %d", len(pos))
		}
		art, cfg, code := loadWorkload(e, pos[0], *cfgPath)
		if art == nil {
			return code
		}
		if err := runtime.Check(context.Background(), pos[0], art.Wasm, *cacheDir); err != nil {
			return e.Errorf("%v", err)
		}
		out := inspectOutput{Module: pos[0], Size: len(art.Wasm), Digest: art.Digest.String(), Config: *cfgPath, Args: []string{"main.wasm"}}
		if cfg == nil {
			cfg = config.Default()
		} else {
			out.Args = append(out.Args, cfg.Args...)
			out.Env = cfg.Env
			out.Steward = cfg.Steward
			out.StewardCA = cfg.StewardCA
			out.Limits = cfg.Limits
			out.Secrets = cfg.SecretNames()
			switch {
			case cfg.Replicas == config.ReplicasAuto:
				out.Replicas = "auto"
			case cfg.Replicas > 0:
				out.Replicas = strconv.Itoa(cfg.Replicas)
			}
		}
		for i, f := range cfg.Files {
			out.Descriptors = append(out.Descriptors, inspectFD{FD: i, Kind: string(f.Kind), Name: f.Name, What: describeFile(f)})
		}
		if *asJSON {
			return e.PrintJSON(out)
		}
		fmt.Fprintf(e.Stdout, "module:  %s (%d bytes)\ndigest:  %s\n", out.Module, out.Size, out.Digest)
		if out.Config != "" {
			fmt.Fprintf(e.Stdout, "config:  %s\n", out.Config)
		}
		fmt.Fprintf(e.Stdout, "args:    %s\n", strings.Join(out.Args, " "))
		if out.Steward != "" {
			fmt.Fprintf(e.Stdout, "steward: %s\n", out.Steward)
		}
		if out.StewardCA != "" {
			fmt.Fprintf(e.Stdout, "steward CA: %s (the one CA the secret service's TLS may chain to)\n", out.StewardCA)
		}
		var supplied, fetched []string
		for _, n := range out.Secrets {
			if ref, ok := cfg.SecretRefs[n]; ok {
				fetched = append(fetched, n+" from "+ref)
			} else {
				supplied = append(supplied, n)
			}
		}
		if len(supplied) > 0 {
			fmt.Fprintf(e.Stdout, "secrets: %s (values supplied with --secret or --secret-file)\n", strings.Join(supplied, ", "))
		}
		if len(fetched) > 0 {
			fmt.Fprintf(e.Stdout, "secrets: %s (fetched by the keep after it attested)\n", strings.Join(fetched, ", "))
		}
		if out.Replicas != "" {
			fmt.Fprintf(e.Stdout, "replicas: %s (%d instances here)\n", out.Replicas, cfg.Instances())
		}
		fmt.Fprintf(e.Stdout, "descriptors:\n")
		for _, d := range out.Descriptors {
			fmt.Fprintf(e.Stdout, "  %d  %-8s %-12s %s\n", d.FD, d.Kind, d.Name, d.What)
		}
		return ExitOK
	}
	Register(inspectCmd)
}

func describeFile(f config.File) string {
	switch f.Kind {
	case config.KindListen:
		return fmt.Sprintf("%s on [%s]:%d", f.Prot, f.Addr, f.Port)
	case config.KindConnect:
		return fmt.Sprintf("%s to %s:%d", f.Prot, f.Host, f.Port)
	case config.KindSecret:
		return "secret file, value supplied at deploy"
	case config.KindDir:
		ro := ""
		if f.ReadOnly {
			ro = ", read-only"
		}
		return fmt.Sprintf("host folder %s%s", f.Path, ro)
	}
	return ""
}
