package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/packages"
)

// storeOptions are the flags of every command that touches packages.
type storeOptions struct {
	store     string
	plainHTTP bool
	maxLayer  string
	stall     time.Duration
}

// addStoreFlags declares --store and --max-layer-size, and --plain-http for
// commands that talk to registries.
func addStoreFlags(fs *flag.FlagSet, registries bool) *storeOptions {
	so := &storeOptions{stall: packages.DefaultStallTimeout}
	def, _ := packages.DefaultDir()
	fs.StringVar(&so.store, "store", def, "local package store (an OCI image-layout folder; $CASTELLAN_STORE)")
	if registries {
		fs.BoolVar(&so.plainHTTP, "plain-http", false, "talk to the registry over http, not https (for a local registry)")
		fs.DurationVar(&so.stall, "stall-timeout", packages.DefaultStallTimeout, "abandon a registry connection that makes no progress (no headers, no byte) for this long")
	}
	fs.StringVar(&so.maxLayer, "max-layer-size", "256MiB", "refuse a Wasm layer larger than this")
	return so
}

// options turns the flags into store options: progress bars on a
// terminal, warnings through e.
func (so *storeOptions) options(e *Env) (packages.Options, int) {
	n, err := config.ParseSize(so.maxLayer)
	if err != nil || n == 0 {
		return packages.Options{}, e.Usagef("--max-layer-size: %s is not a size such as 256MiB", so.maxLayer)
	}
	if so.stall <= 0 {
		return packages.Options{}, e.Usagef("--stall-timeout: %v is not positive", so.stall)
	}
	opts := packages.Options{MaxLayerSize: int64(n), PlainHTTP: so.plainHTTP, StallTimeout: so.stall, Warnf: e.Warningf}
	if IsTerminal(e.Stderr) {
		opts.Progress = e.Stderr
	}
	return opts, ExitOK
}

// open opens the local store.
func (so *storeOptions) open(e *Env) (*packages.Store, int) {
	opts, code := so.options(e)
	if code != ExitOK {
		return nil, code
	}
	if so.store == "" {
		return nil, e.ErrorWithHint(errors.New("no folder for the local package store"), "set CASTELLAN_STORE or pass --store DIR")
	}
	s, err := packages.Open(so.store, opts)
	if err != nil {
		return nil, e.Errorf("%v", err)
	}
	return s, ExitOK
}

// packageError reports a package error with a hint where one helps.
func packageError(e *Env, err error) int {
	msg := err.Error()
	switch {
	case errors.Is(err, packages.ErrNotFound) && !strings.Contains(msg, "missing from"):
		return e.ErrorWithHint(err, "'castellan package ls' lists the local store; 'castellan package pull REGISTRY/REPO:TAG' fetches from a registry")
	case strings.Contains(msg, "server gave HTTP response to HTTPS client"):
		return e.ErrorWithHint(err, "the registry speaks plain http: add --plain-http")
	case errors.Is(err, packages.ErrStalled):
		return e.ErrorWithHint(err, "a slow registry may need a longer --stall-timeout")
	}
	var se *packages.SizeError
	if errors.As(err, &se) {
		return e.ErrorWithHint(err, sizeHint(se.Limit))
	}
	return e.Errorf("%v", err)
}

// printableJoin joins a package's strings with spaces for a person to read,
// each escaped by packages.Printable.
func printableJoin(ss []string) string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = packages.Printable(s)
	}
	return strings.Join(out, " ")
}

// sizeHint says how the named limit can be changed, if it can.
func sizeHint(l packages.Limit) string {
	switch l {
	case packages.LimitLayer:
		return "raise the Wasm layer limit with --max-layer-size if you trust this package"
	case packages.LimitManifest:
		return fmt.Sprintf("the manifest limit (%d bytes, the OCI distribution spec's) is fixed: no flag raises it, and a Castellan package's manifest is under 1 KiB", packages.MaxManifestSize)
	}
	return fmt.Sprintf("the %s limit (%d bytes, for the config JSON and the TOML layer) is fixed: no flag raises it", l, packages.MaxConfigBlobSize)
}

var packageBuildCmd = &Command{
	Name:    "package build",
	Usage:   "package build [flags] app.wasm",
	Summary: "build a workload package (OCI artifact) and print its digest",
	Help: `Builds the deterministic OCI artifact of app.wasm and its config (-c): the
same files always give the same manifest digest, the workload digest that
run, deploy and the keep's certificate report. The package goes into the
local store (tagged with -t NAME:TAG or REGISTRY/REPO:TAG for a later push),
or into the OCI image-layout folder -o DIR for 'deploy oci-layout:DIR@DIGEST'.`,
}

type buildOptions struct {
	*storeOptions
	config, tag, out string
}

func addBuildFlags(fs *flag.FlagSet) *buildOptions {
	bo := &buildOptions{storeOptions: addStoreFlags(fs, false)}
	fs.StringVar(&bo.config, "c", "", "workload config (Enarx.toml format)")
	fs.StringVar(&bo.tag, "t", "", "tag the package NAME:TAG (or REGISTRY/REPO:TAG to push it later)")
	fs.StringVar(&bo.out, "o", "", "write the package to this OCI image-layout folder instead of the local store")
	return bo
}

func init() {
	DefineFlags(packageBuildCmd.Name, func(fs *flag.FlagSet) { addBuildFlags(fs) })
	packageBuildCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(packageBuildCmd)
		bo := addBuildFlags(fs)
		pos, status, ok := e.Parse(packageBuildCmd, fs, args)
		if !ok {
			return status
		}
		if len(pos) != 1 {
			return e.Usagef("package build: want one module file, got %d (see 'castellan help package build')", len(pos))
		}
		if bo.tag != "" {
			r, err := packages.ParseRef(bo.tag)
			if err != nil {
				return e.Usagef("-t: %v", err)
			}
			if r.Tag == "" || r.Layout != "" {
				return e.Usagef("-t: %s: want NAME:TAG or REGISTRY/REPO:TAG", bo.tag)
			}
		}
		limit, err := config.ParseSize(bo.maxLayer)
		if err != nil || limit == 0 {
			return e.Usagef("--max-layer-size: %s is not a size such as 256MiB", bo.maxLayer)
		}
		if st, err := os.Stat(pos[0]); err == nil && st.Mode().IsRegular() && st.Size() > int64(limit) {
			return e.ErrorWithHint(fmt.Errorf("%s: %d bytes is over the Wasm layer limit of %d bytes", pos[0], st.Size(), limit), sizeHint(packages.LimitLayer))
		}
		wasm, err := readFileLimited(pos[0], int64(limit))
		if err != nil {
			return e.Errorf("%v", err)
		}
		var raw []byte
		if bo.config != "" {
			cfg, b, err := config.Load(bo.config)
			if err != nil {
				return e.Errorf("%v", err)
			}
			for _, w := range cfg.Warnings {
				e.Warningf("%s", w)
			}
			raw = b
		}
		if bo.out != "" {
			art, err := packages.WriteLayout(bo.out, wasm, raw, bo.tag)
			if err != nil {
				return e.Errorf("%s: %v", pos[0], err)
			}
			fmt.Fprintln(e.Stdout, art.Digest)
			e.Infof("wrote %s to %s; deploy it with 'castellan deploy %s%s@%s'", pos[0], bo.out, packages.LayoutPrefix, bo.out, art.Digest)
			return ExitOK
		}
		s, code := bo.open(e)
		if s == nil {
			return code
		}
		art, err := s.Build(wasm, raw)
		if err != nil {
			return e.Errorf("%s: %v", pos[0], err)
		}
		if bo.tag != "" {
			prev, err := s.Tag(art.Digest, bo.tag)
			if err != nil {
				return e.Errorf("%v", err)
			}
			if prev != "" {
				e.Infof("%s now names %s (was %s)", bo.tag, art.Digest, prev)
			}
		}
		fmt.Fprintln(e.Stdout, art.Digest)
		return ExitOK
	}
	Register(packageBuildCmd)
}

var packagePushCmd = &Command{
	Name:    "package push",
	Usage:   "package push [flags] REF [REGISTRY/REPO:TAG]",
	Summary: "push a package from the local store to an OCI registry",
	Help: `Pushes the package REF names in the local store (or an oci-layout: folder)
to a registry: to REF itself when it is a registry reference (as built with
-t), else to the second argument. Every blob is checked against its digest
before it leaves. Credentials come from the Docker config file
($DOCKER_CONFIG or ~/.docker/config.json) and its credential helpers.

--image pushes the package in the form containerd runs (an OCI image with
Wasm layers, as runwasi's images are: containerd 1.6.25+ or 1.7.7+), for
ctr and Kubernetes through the castellan shim; containerd refuses the
package's own form. The layers are the package's, so the keep reports the
same workload digest; the image's digest is printed after it.`,
}

var packagePullCmd = &Command{
	Name:    "package pull",
	Usage:   "package pull [flags] REGISTRY/REPO:TAG|REGISTRY/REPO@sha256:...",
	Summary: "pull a package from an OCI registry into the local store",
	Help: `Fetches a package, checks every blob against its digest, checks that the
manifest is a Castellan workload in canonical form, and stores it. A pinned
digest (@sha256:...) must match; a tag that now names another digest than
the last pull is reported.`,
}

func init() {
	pushFlags := func(fs *flag.FlagSet) (*storeOptions, *bool) {
		return addStoreFlags(fs, true), fs.Bool("image", false, "push the OCI image form containerd runs (the same layers and workload digest)")
	}
	DefineFlags(packagePushCmd.Name, func(fs *flag.FlagSet) { pushFlags(fs) })
	packagePushCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(packagePushCmd)
		so, asImage := pushFlags(fs)
		pos, status, ok := e.Parse(packagePushCmd, fs, args)
		if !ok {
			return status
		}
		if len(pos) != 1 && len(pos) != 2 {
			return e.Usagef("package push: want REF [REGISTRY/REPO:TAG], got %d arguments", len(pos))
		}
		dst := pos[0]
		if len(pos) == 2 {
			dst = pos[1]
		}
		if r, err := packages.ParseRef(dst); err != nil {
			return e.Usagef("%v", err)
		} else if !r.Remote() {
			return e.Usagef("package push: %s is not a registry reference (want REGISTRY/REPO:TAG, for example localhost:5000/hello:1.0)", dst)
		}
		s, code := so.open(e)
		if s == nil {
			return code
		}
		if *asImage {
			art, img, err := s.PushImage(context.Background(), pos[0], dst)
			if err != nil {
				return packageError(e, err)
			}
			fmt.Fprintln(e.Stdout, art.Digest)
			fmt.Fprintf(e.Stdout, "image %s\n", img.ManifestDesc.Digest)
			return ExitOK
		}
		art, err := s.Push(context.Background(), pos[0], dst)
		if err != nil {
			return packageError(e, err)
		}
		fmt.Fprintln(e.Stdout, art.Digest)
		return ExitOK
	}
	Register(packagePushCmd)

	DefineFlags(packagePullCmd.Name, func(fs *flag.FlagSet) { addStoreFlags(fs, true) })
	packagePullCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(packagePullCmd)
		so := addStoreFlags(fs, true)
		pos, status, ok := e.Parse(packagePullCmd, fs, args)
		if !ok {
			return status
		}
		if len(pos) != 1 {
			return e.Usagef("package pull: want one registry reference, got %d", len(pos))
		}
		if r, err := packages.ParseRef(pos[0]); err != nil {
			return e.Usagef("%v", err)
		} else if !r.Remote() {
			return e.Usagef("package pull: %s is not a registry reference (want REGISTRY/REPO:TAG)", pos[0])
		}
		s, code := so.open(e)
		if s == nil {
			return code
		}
		art, err := s.Pull(context.Background(), pos[0])
		if err != nil {
			return packageError(e, err)
		}
		fmt.Fprintln(e.Stdout, art.Digest)
		return ExitOK
	}
	Register(packagePullCmd)
}

var packageInspectCmd = &Command{
	Name:    "package inspect",
	Usage:   "package inspect [flags] REF",
	Summary: "show a package's digest, sizes and config",
	Help: `Reads the package REF names (local store, registry, or oci-layout:DIR@DIGEST)
with every check that deploy makes, and prints its digest, the sizes of its
blobs and a summary of its config. A registry package is read into memory,
not stored.`,
}

type inspectPackageOutput struct {
	*packages.Info
	Args        []string          `json:"args,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	Steward     string            `json:"steward,omitempty"`
	StewardCA   string            `json:"steward_ca,omitempty"`
	Descriptors []inspectFD       `json:"descriptors"`
	Limits      *config.Limits    `json:"limits,omitempty"`
	Warnings    []string          `json:"warnings,omitempty"`
}

func addPackageInspectFlags(fs *flag.FlagSet) (*storeOptions, *bool) {
	return addStoreFlags(fs, true), fs.Bool("json", false, "print JSON")
}

func init() {
	DefineFlags(packageInspectCmd.Name, func(fs *flag.FlagSet) { addPackageInspectFlags(fs) })
	packageInspectCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(packageInspectCmd)
		so, asJSON := addPackageInspectFlags(fs)
		pos, status, ok := e.Parse(packageInspectCmd, fs, args)
		if !ok {
			return status
		}
		if len(pos) != 1 {
			return e.Usagef("package inspect: want one package reference, got %d", len(pos))
		}
		if _, err := packages.ParseRef(pos[0]); err != nil {
			return e.Usagef("%v", err)
		}
		s, code := so.open(e)
		if s == nil {
			return code
		}
		info, _, err := s.Inspect(context.Background(), pos[0])
		if err != nil {
			return packageError(e, err)
		}
		out := inspectPackageOutput{Info: info, Descriptors: []inspectFD{}}
		cfg := info.Workload
		if cfg == nil && info.TOML == nil {
			cfg = config.Default()
		}
		if cfg != nil {
			out.Args = cfg.Argv()
			out.Env = cfg.Env
			out.Steward = cfg.Steward
			out.StewardCA = cfg.StewardCA
			if cfg.Limits != (config.Limits{}) {
				out.Limits = &cfg.Limits
			}
			out.Warnings = cfg.Warnings
			for i, f := range cfg.Files {
				out.Descriptors = append(out.Descriptors, inspectFD{FD: i, Kind: string(f.Kind), Name: f.Name, What: describeFile(f)})
			}
		}
		if *asJSON {
			return e.PrintJSON(out)
		}
		w := e.Stdout
		fmt.Fprintf(w, "reference: %s\n", info.Reference)
		fmt.Fprintf(w, "source:    %s\n", info.Source)
		fmt.Fprintf(w, "digest:    %s\n", info.Digest)
		if len(info.Names) > 0 {
			fmt.Fprintf(w, "names:     %s\n", strings.Join(info.Names, ", "))
		}
		fmt.Fprintf(w, "size:      %s\n", packages.FormatSize(info.Size))
		blob := func(label string, b packages.BlobInfo) {
			fmt.Fprintf(w, "  %-9s %-10s %s  %s\n", label, packages.FormatSize(b.Size), b.Digest, b.MediaType)
		}
		blob("manifest", info.Manifest)
		blob("config", info.Config)
		blob("wasm", info.Wasm)
		if info.TOML != nil {
			blob("toml", *info.TOML)
		}
		if info.ConfigError != "" {
			fmt.Fprintf(w, "config error: %s\n", packages.Printable(info.ConfigError))
		}
		if cfg == nil {
			return ExitOK
		}
		if info.TOML == nil {
			fmt.Fprintf(w, "config:    none (stdin, stdout, stderr)\n")
		}
		fmt.Fprintf(w, "args:      %s\n", printableJoin(out.Args))
		if out.Steward != "" {
			fmt.Fprintf(w, "steward:   %s\n", packages.Printable(out.Steward))
		}
		if out.StewardCA != "" {
			fmt.Fprintf(w, "steward CA: %s\n", packages.Printable(out.StewardCA))
		}
		if len(out.Env) > 0 {
			fmt.Fprintf(w, "env:       %s\n", printableJoin(cfg.Environ()[2:]))
		}
		if l := out.Limits; l != nil {
			var parts []string
			if l.MemoryPages > 0 {
				parts = append(parts, "memory "+packages.FormatSize(int64(l.MemoryPages)*config.PageSize))
			}
			if l.WallTime > 0 {
				parts = append(parts, "wall time "+l.WallTime.String())
			}
			if l.MaxOutput > 0 {
				parts = append(parts, "output "+packages.FormatSize(l.MaxOutput))
			}
			if l.MaxOpenFiles > 0 {
				parts = append(parts, fmt.Sprintf("open files %d", l.MaxOpenFiles))
			}
			fmt.Fprintf(w, "limits:    %s\n", strings.Join(parts, ", "))
		}
		fmt.Fprintf(w, "descriptors:\n")
		for _, d := range out.Descriptors {
			fmt.Fprintf(w, "  %d  %-8s %-12s %s\n", d.FD, d.Kind, packages.Printable(d.Name), packages.Printable(d.What))
		}
		for _, warn := range out.Warnings {
			e.Warningf("%s", packages.Printable(warn))
		}
		return ExitOK
	}
	Register(packageInspectCmd)
}

var packageLsCmd = &Command{
	Name:    "package ls",
	Usage:   "package ls [flags]",
	Summary: "list the packages in the local store",
}

func addPackageLsFlags(fs *flag.FlagSet) (*string, *bool) {
	def, _ := packages.DefaultDir()
	return fs.String("store", def, "local package store (an OCI image-layout folder; $CASTELLAN_STORE)"), fs.Bool("json", false, "print JSON")
}

func init() {
	DefineFlags(packageLsCmd.Name, func(fs *flag.FlagSet) { addPackageLsFlags(fs) })
	packageLsCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(packageLsCmd)
		dir, asJSON := addPackageLsFlags(fs)
		pos, status, ok := e.Parse(packageLsCmd, fs, args)
		if !ok {
			return status
		}
		if len(pos) != 0 {
			return e.Usagef("package ls: takes no arguments, got %q", pos[0])
		}
		var list []packages.Entry
		if _, err := os.Stat(*dir); err == nil {
			s, err := packages.Open(*dir, packages.Options{})
			if err != nil {
				return e.Errorf("%v", err)
			}
			if list, err = s.List(context.Background()); err != nil {
				return e.Errorf("%v", err)
			}
		}
		if *asJSON {
			if list == nil {
				list = []packages.Entry{}
			}
			return e.PrintJSON(list)
		}
		fmt.Fprintf(e.Stdout, "%-40s %-19s %s\n", "NAME", "DIGEST", "SIZE")
		for _, p := range list {
			size := packages.FormatSize(p.Size)
			if p.Err != "" {
				size = "damaged: " + p.Err
			}
			names := p.Names
			if len(names) == 0 {
				names = []string{"<none>"}
			}
			for _, n := range names {
				fmt.Fprintf(e.Stdout, "%-40s %-19s %s\n", n, p.Digest.String()[:19], size)
			}
		}
		return ExitOK
	}
	Register(packageLsCmd)
}
