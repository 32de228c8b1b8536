package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"path"
	"path/filepath"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/packages"
)

var deployCmd = &Command{
	Name:    "deploy",
	Usage:   "deploy [flags] REF [-- args...]",
	Summary: "run a package from a registry, the local store or an OCI layout",
	Help: `Fetches the package REF names and runs it in a keep with its own config:
  name:tag, name@sha256:...          from the local store
  registry/repo:tag, ...@sha256:...  from an OCI registry (pulled into the store)
  oci-layout:DIR@sha256:...          from an OCI image-layout folder, offline
Every blob is checked against its digest, the manifest must be a Castellan
workload in canonical form, and a pinned digest must match; the workload
digest that the keep reports is the manifest digest. Takes the flags of run
except -c (the package carries its config).

A package's config comes from its author. When it names host folders
(kind = "dir"), deploy refuses to run it unless --allow-dir names each of
those host paths (relative paths resolve against the working directory).

With --host https://agent, the package is delivered confidentially to a
keep on that host agent: the keep attests to a fresh key, the client's nonce
and the package digest; the client verifies the evidence (--attest URL, or
--policy and --measurements, or --insecure for development), then sends
the package and its secrets over TLS that ends inside the keep, pinned
to the attested key. The agent relays ciphertext only. The workload's output
comes back over the same channel; the exit status is the workload's. With
--detach the client returns once the workload started; its output then goes
to the agent's log only if the package's config says detached_output = "host"
(otherwise it is discarded).

Secrets: the package's config declares them by name ([secrets] env = [...]
for environment values, [[files]] kind = "secret" for files the workload
reads from the keep's memory); --secret NAME=VALUE and --secret-file
NAME=PATH supply their values. Every declared secret must be supplied and
nothing else is accepted. Without --host the keep runs on this machine, which
can read them.`,
}

type deployOptions struct {
	*runOptions
	*storeOptions
	allowDirs multiFlag
	remote    *remoteOptions // --host and its friends (cmd_host.go)
}

// multiFlag collects a flag given several times.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

func addDeployFlags(fs *flag.FlagSet) *deployOptions {
	do := &deployOptions{runOptions: addRunFlags(fs), storeOptions: addStoreFlags(fs, true)}
	fs.Var(&do.allowDirs, "allow-dir", "let the package's config map this host folder (repeat for each); \"all\" allows any")
	do.remote = addRemoteFlags(fs)
	return do
}

func init() {
	DefineFlags(deployCmd.Name, func(fs *flag.FlagSet) { addDeployFlags(fs) })
	deployCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(deployCmd)
		do := addDeployFlags(fs)
		pos, status, ok := e.Parse(deployCmd, fs, args)
		if !ok {
			return status
		}
		pos, extra := splitDashDash(pos)
		if len(pos) != 1 {
			return e.Usagef("deploy: want one package reference, got %d (see 'castellan help deploy')", len(pos))
		}
		if do.configPath != "" {
			return e.Usagef("deploy: -c does not apply: a package carries its own config")
		}
		ref, err := packages.ParseRef(pos[0])
		if err != nil {
			return e.Usagef("%v", err)
		}
		// An oci-layout reference is read offline, without the local store.
		var s *packages.Store
		if ref.Layout != "" {
			opts, code := do.options(e)
			if code != ExitOK {
				return code
			}
			if s, err = packages.OpenLayout(ref.Layout, opts); err != nil {
				return e.Errorf("%v", err)
			}
		} else if s, status = do.open(e); s == nil {
			return status
		}
		art, err := s.Fetch(context.Background(), pos[0])
		if err != nil {
			return packageError(e, err)
		}
		name := ref.String()
		if *do.remote.url != "" && !do.digestOnly {
			keep := do.remote.name
			if keep == "" {
				keep = keepName(ref)
			} else if err := checkKeepName(keep); err != nil {
				return e.Usagef("--name: %v", err)
			}
			return deployRemote(e, do, art, name, keep, extra)
		}
		if art.Config != nil && !do.digestOnly {
			// runArtifact reports a config that does not parse.
			if cfg, err := config.Parse(name+" config", art.Config); err == nil {
				if code := checkDirs(e, cfg, do.allowDirs); code != ExitOK {
					return code
				}
			}
		}
		return runArtifact(e, do.runOptions, art, name, extra)
	}
	Register(deployCmd)
}

// maxKeepName is the longest keep name a host agent takes.
const maxKeepName = 64

// keepName is the name deploy gives a keep on the host agent when --name
// is not given: the reference as written when it fits in maxKeepName
// bytes, else the repository's last path element (or the layout folder's
// name) with the tag, or with the first 12 hex digits of a pinned digest.
func keepName(ref packages.Ref) string {
	if s := ref.String(); len(s) <= maxKeepName {
		return s
	}
	base := path.Base(ref.Repository)
	if ref.Layout != "" {
		base = filepath.Base(ref.Layout)
	}
	suffix := ""
	switch {
	case ref.Digest != "":
		suffix = "@" + string(ref.Digest.Algorithm()) + ":" + ref.Digest.Encoded()[:min(12, len(ref.Digest.Encoded()))]
	case ref.Tag != "":
		suffix = ":" + ref.Tag
	}
	base = strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return '_'
		}
		return r
	}, base)
	// A long folder name is cut to keep the digest prefix; a long tag is
	// cut itself.
	if ref.Digest != "" {
		base = cutRunes(base, maxKeepName-len(suffix))
	}
	return cutRunes(base+suffix, maxKeepName)
}

// cutRunes shortens s to at most n bytes, at a rune boundary.
func cutRunes(s string, n int) string {
	for len(s) > n {
		_, size := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-size]
	}
	return s
}

// checkKeepName checks a --name as the host agent will.
func checkKeepName(s string) error {
	if len(s) > maxKeepName {
		return fmt.Errorf("%q is %d bytes, over the host agent's %d", s, len(s), maxKeepName)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%q holds a control character", s)
		}
	}
	return nil
}

// checkDirs refuses host folders that the package's author chose and the
// deployer did not allow: a package from a registry must not get, say,
// path = "/" or the deployer's home folder unasked.
func checkDirs(e *Env, cfg *config.Config, allowed []string) int {
	var refused []string
	for _, f := range cfg.Files {
		if f.Kind != config.KindDir {
			continue
		}
		ok := false
		for _, a := range allowed {
			ok = ok || a == "all" || a == f.Path
		}
		if !ok {
			refused = append(refused, fmt.Sprintf("%s (as %s)", packages.Printable(f.Path), packages.Printable(f.Name)))
		}
	}
	if len(refused) == 0 {
		return ExitOK
	}
	e.Errorf("the package's config maps host folders that were not allowed: %s", strings.Join(refused, ", "))
	e.Hintf("check them, then pass --allow-dir PATH for each (as written in the config)")
	return ExitError
}

// secretFlags are --secret and --secret-file, shared by run and deploy:
// the values of the secrets a workload's config declares ([secrets] env,
// kind = "secret" files). The config holds only their names.
type secretFlags struct {
	values, files multiFlag
}

func addSecretFlags(fs *flag.FlagSet) *secretFlags {
	s := &secretFlags{}
	fs.Var(&s.values, "secret", "NAME=VALUE: a secret the workload's config declares ([secrets] env, or a kind = \"secret\" file); with --host it goes only to the attested keep (repeat; --secret-file keeps it out of the process list)")
	fs.Var(&s.files, "secret-file", "NAME=PATH: a secret the workload's config declares, read from a file (repeat)")
	return s
}

// read returns the supplied secrets by name; a name given twice is an error.
func (s *secretFlags) read(e *Env) (map[string]string, int) {
	out := map[string]string{}
	if s == nil {
		return out, ExitOK
	}
	set := func(flag, k, v string) int {
		if _, dup := out[k]; dup {
			return e.Usagef("%s: secret %s is given twice", flag, k)
		}
		if !config.ValidSecretName(k) {
			return e.Usagef("%s: %q is not a secret name (letters, digits, '_', '.', '-')", flag, k)
		}
		out[k] = v
		return ExitOK
	}
	for _, a := range s.values {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, e.Usagef("--secret: %q is not NAME=VALUE", a)
		}
		if code := set("--secret", k, v); code != ExitOK {
			return nil, code
		}
	}
	for _, a := range s.files {
		k, p, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, e.Usagef("--secret-file: %q is not NAME=PATH", a)
		}
		b, err := readFileLimited(p, delivery.MaxSecretSize)
		if err != nil {
			return nil, e.Errorf("--secret-file: %v", err)
		}
		if code := set("--secret-file", k, string(b)); code != ExitOK {
			return nil, code
		}
	}
	return out, ExitOK
}

// secretsError reports a mismatch between the secrets supplied and those cfg
// declares, with a hint.
func secretsError(e *Env, err error) int {
	var se *config.SecretsError
	if errors.As(err, &se) && len(se.Missing) > 0 {
		return e.ErrorWithHint(err, "pass --secret NAME=VALUE or --secret-file NAME=PATH for each")
	}
	if errors.As(err, &se) && len(se.Undeclared) == 0 {
		return e.ErrorWithHint(err, "the keep fetches those itself after it attested: leave them out")
	}
	if errors.As(err, &se) {
		return e.ErrorWithHint(err, "a workload gets only the secrets its config declares ([secrets] env, or [[files]] with kind = \"secret\")")
	}
	return e.Errorf("%v", err)
}
