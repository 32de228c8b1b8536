package cli

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/policy"
	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/engine"
	"github.com/castellan-dev/castellan/internal/host"
	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/keep/qemu"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/workload"
)

func defaultHostStateDir() string {
	if d := os.Getenv("CASTELLAN_HOST_STATE"); d != "" {
		return d
	}
	base, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(base, "castellan", "host")
}

var hostServeCmd = &Command{
	Name:    "host serve",
	Usage:   "host serve [flags]",
	Summary: "run the host agent: the keep manager and confidential delivery relay",
	Help: `Serves the host agent API over HTTPS with bearer tokens (see 'castellan host
token create'). Each keep is a child process with its own limits, or with
--keep-kind vm a QEMU micro-VM booted from --keep-image (KVM where usable,
else TCG; an SEV-SNP VM for backend snp and a TD for tdx, with --firmware);
keep state lives in SQLite in --state-dir, so that a restarted agent adopts
the process keeps that still run and records how the others ended (a VM
keep's channel ends with the agent that launched it: a restarted agent
stops VM keeps it finds running). The agent relays
encrypted sessions between clients and keeps: it never sees a confidentially
delivered workload or its secrets.

The TLS certificate is self-signed and stored in the state folder
(tls/cert.pem): give it to clients as --host-ca. Stopping the agent leaves
its keeps running.`,
}

type hostServeFlags struct {
	listen, stateDir, maxMemory, keepCache string
	keepEngine                             string
	maxOutput                              string
	retainKeeps                            int
	warmKeeps                              int
	retainFor                              time.Duration
	maxKeeps, maxOpenFiles                 int
	maxCPU, maxWall, attachTimeout         time.Duration
	keepKind, keepImage, firmware          string
	maxVMMemory                            string
	maxVCPUs                               int
}

func addHostServeFlags(fs *flag.FlagSet) *hostServeFlags {
	f := &hostServeFlags{}
	fs.StringVar(&f.listen, "listen", "127.0.0.1:7443", "address to serve the API on")
	fs.StringVar(&f.stateDir, "state-dir", defaultHostStateDir(), "state folder: database, TLS key, keep folders ($CASTELLAN_HOST_STATE)")
	fs.IntVar(&f.maxKeeps, "max-keeps", host.DefaultMaxKeeps, "most keeps alive at once")
	fs.StringVar(&f.maxMemory, "max-memory", "4GiB", "most memory (private writable, RLIMIT_DATA) a keep may ask for")
	fs.DurationVar(&f.maxCPU, "max-cpu-time", time.Duration(host.DefaultCPUSeconds)*time.Second, "most CPU time a keep may ask for")
	fs.DurationVar(&f.maxWall, "max-wall-time", time.Duration(host.DefaultWallSeconds)*time.Second, "longest wall time a keep may ask for")
	fs.IntVar(&f.maxOpenFiles, "max-open-files", host.DefaultOpenFiles, "most open descriptors a keep may ask for")
	fs.DurationVar(&f.attachTimeout, "attach-timeout", host.DefaultAttachTimeout, "how long a ready keep waits for its client")
	fs.StringVar(&f.maxOutput, "max-keep-output", "64MiB", "most bytes of log and host output each keep may write (keeps/ID/keep.log); the keep ends when it passes it")
	fs.IntVar(&f.warmKeeps, "warm-keeps", 0, "process keeps to start ahead, waiting for the next keeps (a keep then skips its process start)")
	fs.IntVar(&f.retainKeeps, "retain-keeps", host.DefaultRetainKeeps, "finished keeps to keep (folder, record, events), newest first; older ones are removed")
	fs.DurationVar(&f.retainFor, "retain-for", host.DefaultRetainFor, "how long after its end a finished keep is kept")
	fs.StringVar(&f.keepEngine, "keep-engine", engine.NameWazero, "WebAssembly engine of process keeps: wazero (pure Go) or wasmtime (builds with -tags wasmtime)")
	fs.StringVar(&f.keepCache, "keep-cache-dir", "", "compilation cache for nil-backend keeps only (a cache on the host's disk is open to the host; TEE keeps never use one)")
	fs.StringVar(&f.keepKind, "keep-kind", keep.KindProcess, "what each keep is: process (a child process) or vm (a QEMU micro-VM booted from --keep-image)")
	fs.StringVar(&f.keepImage, "keep-image", os.Getenv("CASTELLAN_KEEP_IMAGE"), "with --keep-kind vm: the keep image folder ('castellan keep-image build'; $CASTELLAN_KEEP_IMAGE)")
	fs.StringVar(&f.firmware, "firmware", "", "with --keep-kind vm: the firmware of snp and tdx VM keeps (the file 'castellan keep-image measure --firmware' used)")
	fs.StringVar(&f.maxVMMemory, "max-vm-memory", "8GiB", "with --keep-kind vm: the largest VM a keep may ask for (vm_memory_bytes; default size 512MiB)")
	fs.IntVar(&f.maxVCPUs, "max-vcpus", host.DefaultMaxVCPUs, "with --keep-kind vm: most vCPUs a keep may ask for (default 1)")
	return f
}

var hostTokenCmd = &Command{
	Name:    "host token",
	Usage:   "host token create [--state-dir DIR] [--name NAME]",
	Summary: "create a bearer token for the host agent's API",
	Help: `Prints a new token once; the agent stores only its SHA-256. Works while the
agent runs (the state database is shared). The state folder must hold the
agent's state: start 'castellan host serve' on it once first.`,
}

var hostKeepsCmd = &Command{
	Name:    "host keeps",
	Usage:   "host keeps [--host URL] [--host-ca FILE] [--token-file FILE] [--stop ID] [--events ID] | rm [--force] ID...",
	Summary: "list a host agent's keeps, stop one, follow one's events, or remove finished ones",
	Help: `Lists the agent's keeps; --stop ID stops one ("all": every live keep),
--events ID follows one's events until it ends. 'host keeps rm ID...'
removes finished keeps (folder, record and events); a keep that still runs
is refused unless --force, which stops it first. The agent also removes
finished keeps by itself (host serve --retain-keeps, --retain-for).`,
}

type hostClientFlags struct {
	url, ca, token, tokenFile *string
}

func addHostClientFlags(fs *flag.FlagSet, hostFlag bool) *hostClientFlags {
	f := &hostClientFlags{}
	if hostFlag {
		f.url = fs.String("host", os.Getenv("CASTELLAN_HOST"), "host agent URL, https://host:port ($CASTELLAN_HOST)")
	} else {
		s := ""
		f.url = &s
	}
	f.ca = fs.String("host-ca", os.Getenv("CASTELLAN_HOST_CA"), "PEM certificate of the host agent (its state-dir/tls/cert.pem; $CASTELLAN_HOST_CA)")
	f.token = fs.String("token", "", "bearer token for the host agent (default $CASTELLAN_HOST_TOKEN; --token-file keeps it out of the process list)")
	f.tokenFile = fs.String("token-file", "", "file holding the bearer token for the host agent")
	return f
}

func (f *hostClientFlags) client(e *Env) (*host.Client, int) {
	tok := *f.token
	if *f.tokenFile != "" {
		b, err := readFileLimited(*f.tokenFile, 4096)
		if err != nil {
			return nil, e.Errorf("--token-file: %v", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	if tok == "" {
		tok = os.Getenv("CASTELLAN_HOST_TOKEN")
	}
	if tok == "" {
		return nil, e.ErrorWithHint(errors.New("no token for the host agent"), "pass --token-file FILE or --token, or set CASTELLAN_HOST_TOKEN ('castellan host token create' on the host makes one)")
	}
	var roots *x509.CertPool
	if *f.ca != "" {
		pem, err := os.ReadFile(*f.ca)
		if err != nil {
			return nil, e.Errorf("--host-ca: %v", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, e.Errorf("--host-ca: %s: no PEM certificate in it", *f.ca)
		}
	}
	c, err := host.NewClient(*f.url, tok, roots)
	if err != nil {
		return nil, e.Usagef("--host: %v", err)
	}
	return c, ExitOK
}

func init() {
	DefineFlags(hostServeCmd.Name, func(fs *flag.FlagSet) { addHostServeFlags(fs) })
	hostServeCmd.Run = hostServe
	Register(hostServeCmd)

	tokenFlags := func(fs *flag.FlagSet) (*string, *string) {
		return fs.String("state-dir", defaultHostStateDir(), "the agent's state folder"), fs.String("name", "", "a name to remember the token by")
	}
	DefineFlags(hostTokenCmd.Name, func(fs *flag.FlagSet) { tokenFlags(fs) })
	hostTokenCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(hostTokenCmd)
		dir, name := tokenFlags(fs)
		pos, status, ok := e.Parse(hostTokenCmd, fs, args)
		if !ok {
			return status
		}
		if len(pos) != 1 || pos[0] != "create" {
			return e.Usagef("host token: want 'create' (see 'castellan help host token')")
		}
		if *dir == "" {
			return e.Usagef("host token: no --state-dir")
		}
		// A typo must not create a second state folder whose tokens the
		// running agent does not know.
		hint := "check the path; 'castellan host serve --state-dir DIR' creates the agent's state on its first start"
		if st, err := os.Stat(*dir); err != nil || !st.IsDir() {
			return e.ErrorWithHint(fmt.Errorf("host token: %s: no such folder", *dir), hint)
		}
		if _, err := os.Stat(filepath.Join(*dir, host.DBFile)); err != nil {
			return e.ErrorWithHint(fmt.Errorf("host token: %s holds no host agent state (no %s)", *dir, host.DBFile), hint)
		}
		tok, err := host.CreateToken(*dir, *name)
		if err != nil {
			return hostError(e, err)
		}
		fmt.Fprintln(e.Stdout, tok)
		return ExitOK
	}
	Register(hostTokenCmd)

	keepsFlags := func(fs *flag.FlagSet) (*hostClientFlags, *string, *string, *bool, *bool) {
		return addHostClientFlags(fs, true), fs.String("stop", "", "stop this keep (\"all\": every live keep)"), fs.String("events", "", "follow this keep's events until it ends"),
			fs.Bool("json", false, "print JSON"), fs.Bool("force", false, "rm: stop a keep that still runs, then remove it")
	}
	DefineFlags(hostKeepsCmd.Name, func(fs *flag.FlagSet) { keepsFlags(fs) })
	hostKeepsCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(hostKeepsCmd)
		hf, stop, events, asJSON, force := keepsFlags(fs)
		pos, status, ok := e.Parse(hostKeepsCmd, fs, args)
		if !ok {
			return status
		}
		rm := len(pos) > 0 && pos[0] == "rm"
		switch {
		case rm && len(pos) == 1:
			return e.Usagef("host keeps rm: want one or more keep ids")
		case rm && (*stop != "" || *events != ""):
			return e.Usagef("host keeps rm: --stop and --events do not apply")
		case !rm && len(pos) != 0:
			return e.Usagef("host keeps: unexpected argument %q (want rm ID... or no argument)", pos[0])
		case !rm && *force:
			return e.Usagef("host keeps: --force applies to rm only")
		}
		c, code := hf.client(e)
		if c == nil {
			return code
		}
		ctx := context.Background()
		switch {
		case rm:
			for _, id := range pos[1:] {
				err := c.Remove(ctx, id, *force)
				var ae *host.APIError
				if errors.As(err, &ae) && ae.Status == http.StatusConflict {
					return e.ErrorWithHint(err, "stop it first ('castellan host keeps --stop "+id+"') or pass --force")
				}
				if err != nil {
					return hostError(e, err) // the agent's answer names the keep
				}
				fmt.Fprintf(e.Stdout, "%s removed\n", id)
			}
		case *stop != "":
			ids := []string{*stop}
			if *stop == "all" {
				ks, err := c.List(ctx)
				if err != nil {
					return hostError(e, err)
				}
				ids = ids[:0]
				for _, k := range ks {
					if !host.Terminal(k.State) {
						ids = append(ids, k.ID)
					}
				}
			}
			for _, id := range ids {
				k, err := c.Stop(ctx, id)
				if err != nil {
					return hostError(e, err)
				}
				fmt.Fprintf(e.Stdout, "%s %s %s\n", k.ID, k.State, k.Reason)
			}
		case *events != "":
			err := c.Events(ctx, *events, true, func(ev host.Event) {
				fmt.Fprintf(e.Stdout, "%s %s %s\n", ev.Time.Format(time.RFC3339), ev.Type, ev.Message)
			})
			if err != nil {
				return hostError(e, err)
			}
		default:
			ks, err := c.List(ctx)
			if err != nil {
				return hostError(e, err)
			}
			if *asJSON {
				enc := json.NewEncoder(e.Stdout)
				enc.SetIndent("", "  ")
				enc.Encode(ks)
				return ExitOK
			}
			printKeeps(e, ks)
		}
		return ExitOK
	}
	Register(hostKeepsCmd)
}

func hostServe(e *Env, args []string) int {
	fs := e.FlagSet(hostServeCmd)
	f := addHostServeFlags(fs)
	pos, status, ok := e.Parse(hostServeCmd, fs, args)
	if !ok {
		return status
	}
	if len(pos) != 0 {
		return e.Usagef("host serve: no arguments expected")
	}
	if f.stateDir == "" {
		return e.Usagef("host serve: no --state-dir")
	}
	mem, err := config.ParseSize(f.maxMemory)
	if err != nil || mem == 0 {
		return e.Usagef("--max-memory: %q is not a size such as 4GiB", f.maxMemory)
	}
	maxOut, err := config.ParseSize(f.maxOutput)
	if err != nil || maxOut < 1024 {
		return e.Usagef("--max-keep-output: %q is not a size of at least 1KiB such as 64MiB", f.maxOutput)
	}
	if f.warmKeeps < 0 || f.warmKeeps > maxWarmKeeps {
		return e.Usagef("--warm-keeps: %d is out of range 0-%d", f.warmKeeps, maxWarmKeeps)
	}
	if f.retainKeeps < 1 {
		return e.Usagef("--retain-keeps: %d is less than 1", f.retainKeeps)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--retain-for", f.retainFor}, {"--max-cpu-time", f.maxCPU}, {"--max-wall-time", f.maxWall}, {"--attach-timeout", f.attachTimeout}} {
		if d.v < time.Second {
			return e.Usagef("%s: %v is less than a second", d.name, d.v)
		}
	}
	if f.maxKeeps < 1 || f.maxOpenFiles < 16 {
		return e.Usagef("host serve: --max-keeps must be at least 1 and --max-open-files at least 16")
	}
	vmMem, err := config.ParseSize(f.maxVMMemory)
	if err != nil || vmMem < config.MinVMMemory || vmMem%(1<<20) != 0 {
		return e.Usagef("--max-vm-memory: %q is not a whole number of MiB of at least 128MiB, such as 8GiB", f.maxVMMemory)
	}
	if f.maxVCPUs < 1 || f.maxVCPUs > config.MaxVCPUs {
		return e.Usagef("--max-vcpus: %d is out of range 1-%d", f.maxVCPUs, config.MaxVCPUs)
	}
	launcher, code := keepLauncher(e, f.keepKind, f.keepImage, f.firmware, f.keepCache)
	if launcher == nil {
		return code
	}
	p, process := launcher.(*keep.Process)
	if !process && f.keepEngine != engine.NameWazero {
		return e.Usagef("--keep-engine %s applies to process keeps: a VM keep's image holds its engine", f.keepEngine)
	}
	if err := engine.Available(f.keepEngine); err != nil {
		return e.Errorf("--keep-engine %s: %v", f.keepEngine, err)
	}
	if process && f.keepEngine != engine.NameWazero {
		p.Engine = f.keepEngine
	}
	if !process && f.warmKeeps > 0 {
		return e.Usagef("--warm-keeps applies to process keeps")
	}
	if process {
		p.Warm = f.warmKeeps
	}
	a, err := host.New(host.Config{
		StateDir: f.stateDir,
		MaxKeeps: f.maxKeeps,
		Max: host.Limits{MemoryBytes: int64(mem), CPUSeconds: int64(f.maxCPU / time.Second), WallSeconds: int64(f.maxWall / time.Second), OpenFiles: int64(f.maxOpenFiles),
			VMMemoryBytes: int64(vmMem), VCPUs: int64(f.maxVCPUs)},
		AttachTimeout: f.attachTimeout,
		Launcher:      launcher,
		MaxOutput:     int64(maxOut),
		RetainKeeps:   f.retainKeeps,
		RetainFor:     f.retainFor,
		Logf:          func(format string, a ...any) { e.Infof(format, a...) },
	})
	if err != nil {
		return hostError(e, err)
	}
	defer a.Close()
	if _, err := a.TLSCertificate(); err != nil {
		return e.Errorf("agent TLS certificate: %v", err)
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return e.Errorf("--listen: %v", err)
	}
	certPath := filepath.Join(f.stateDir, host.CertFile)
	fp, _ := host.CertFingerprint(certPath)
	e.Infof("host agent on https://%s (certificate %s, %s)", ln.Addr(), certPath, fp)
	for _, s := range a.Enforcement() {
		e.Infof("limits: %s", s)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := a.Serve(ctx, ln); err != nil {
		return hostError(e, err)
	}
	e.Infof("host agent stopped; its keeps run on and the next agent on %s adopts them", f.stateDir)
	return ExitOK
}

// remoteOptions are deploy's flags for a confidential deployment through
// a host agent.
type remoteOptions struct {
	*hostClientFlags
	policyFile, measurements string
	insecure                 bool
	detach                   bool
	keepMemory               string
	cpuTime                  time.Duration
	openFiles                int
	name                     string // the keep's name on the agent (cmd_deploy.go's keepName when empty)
}

func addRemoteFlags(fs *flag.FlagSet) *remoteOptions {
	r := &remoteOptions{hostClientFlags: addHostClientFlags(fs, true)}
	fs.StringVar(&r.policyFile, "policy", "", "with --host: verify the keep's evidence with this policy file (as the attestation service reads it)")
	fs.StringVar(&r.measurements, "measurements", "", "with --policy: the measurement database")
	fs.BoolVar(&r.insecure, "insecure", false, "with --host: accept any evidence whose signatures check, including no TEE and simulated hardware (development only)")
	fs.BoolVar(&r.detach, "detach", false, "with --host: return once the workload started; it runs on, its output going to the agent's log only if its config says detached_output = \"host\"")
	fs.StringVar(&r.keepMemory, "keep-memory", "", "with --host: memory limit of the keep process (RLIMIT_DATA), e.g. 1GiB (default: the host's maximum)")
	fs.DurationVar(&r.cpuTime, "cpu-time", 0, "with --host: CPU time limit of the keep process (default: the host's maximum)")
	fs.IntVar(&r.openFiles, "open-files", 0, "with --host: descriptor limit of the keep process (default: the host's maximum)")
	fs.StringVar(&r.name, "name", "", "with --host: the keep's name on the agent, up to 64 bytes (default: the reference, shortened to its last path element and tag or digest prefix when longer)")
	return r
}

// timedVerifier bounds each exchange with the attestation service by
// --attest-timeout, and says so when it runs out.
type timedVerifier struct {
	delivery.Verifier
	limit time.Duration
}

var _ delivery.Verifier = timedVerifier{}

func (t timedVerifier) Nonce(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, t.limit, errAttestTimeout(t.limit))
	defer cancel()
	n, err := t.Verifier.Nonce(ctx)
	return n, namedTimeout(ctx, err)
}

func (t timedVerifier) Verify(ctx context.Context, hello *delivery.Hello, nonce []byte, digest string) (*delivery.Verified, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, t.limit, errAttestTimeout(t.limit))
	defer cancel()
	v, err := t.Verifier.Verify(ctx, hello, nonce, digest)
	return v, namedTimeout(ctx, err)
}

// namedTimeout replaces an error caused by the attestation time limit with
// the limit's own words.
func namedTimeout(ctx context.Context, err error) error {
	var lim errAttestTimeout
	if err != nil && ctx.Err() != nil && errors.As(context.Cause(ctx), &lim) {
		return lim
	}
	return err
}

// deployRemote runs the confidential delivery protocol through the agent.
func deployRemote(e *Env, do *deployOptions, art *workload.Artifact, name, keepName string, args []string) int {
	r := do.remote
	if do.vm.kind != keep.KindProcess {
		return e.Usagef("deploy --host: the host agent chooses the keep kind ('castellan host serve --keep-kind vm'); --keep applies to local runs")
	}
	if do.memory != "" || do.maxOutput != "" || do.noCache || do.report != "" || len(do.allowDirs) > 0 {
		return e.Usagef("deploy --host: --memory, --max-output, --no-cache, --report and --allow-dir apply to local runs (the keep's memory limit is --keep-memory)")
	}
	if do.attestTime <= 0 {
		return e.Usagef("--attest-timeout: %v is not positive", do.attestTime)
	}
	c, code := r.client(e)
	if c == nil {
		return code
	}
	defer c.CloseIdleConnections()
	secrets, code := do.secrets.read(e)
	if code != ExitOK {
		return code
	}
	// Refuse before anything reaches the host: every secret the config
	// declares, and nothing else (the keep checks again).
	cfg, err := delivery.CheckSecrets(art, secrets)
	if err != nil {
		return secretsError(e, err)
	}
	if cfg != nil {
		warnStdio(e, name+" config", cfg)
	}
	var v delivery.Verifier
	switch {
	case do.attest != "":
		sv, code := serviceVerifier(e, do.attest, do.attestCA, name, r.insecure)
		if sv == nil {
			return code
		}
		v = markedVerifier{timedVerifier{Verifier: sv, limit: do.attestTime}}
	case r.policyFile != "":
		if r.measurements == "" {
			return e.Usagef("--policy needs --measurements")
		}
		snap, err := policy.Load(r.policyFile, r.measurements)
		if err != nil {
			return hostError(e, err)
		}
		v = &delivery.PolicyVerifier{Policy: snap, Name: r.policyFile, Collateral: clientCollateral()}
	case r.insecure:
		v = insecureVerifier()
		e.Warningf("--insecure: the keep's evidence is checked for signatures and bindings only, not against a policy")
	default:
		return e.ErrorWithHint(errors.New("deploy --host: nothing to verify the keep's evidence with"),
			"pass --attest URL (the attestation service), --policy FILE --measurements FILE, or --insecure for development")
	}
	wall := do.wallTime
	if wall == 0 && cfg != nil {
		wall = cfg.Limits.WallTime // --wall-time overrides the config, as with run
	}
	// The agent counts whole seconds: round up, so that 1.5s is not 1s.
	lim := host.Limits{CPUSeconds: int64(r.cpuTime / time.Second), WallSeconds: int64((wall + time.Second - 1) / time.Second), OpenFiles: int64(r.openFiles)}
	if r.keepMemory != "" {
		n, err := config.ParseSize(r.keepMemory)
		if err != nil || n == 0 {
			return e.Usagef("--keep-memory: %q is not a size such as 1GiB", r.keepMemory)
		}
		lim.MemoryBytes = int64(n)
	}
	backend := do.backend
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if backend == "" || backend == tee.NameAuto {
		info, err := c.Host(ctx)
		if err != nil {
			return hostError(e, err)
		}
		backend = ""
		for _, n := range []string{tee.NameSNP, tee.NameTDX, tee.NameSGX, tee.NameCCA} {
			if info.Backends[n] == "available" {
				backend = n
				break
			}
		}
		if backend == "" {
			return e.ErrorWithHint(errors.New("the host has no TEE backend available"), "pass --backend sim-snp, sim-tdx, sim-sgx, sim-cca or nil for a test keep")
		}
	}
	k, res, err := c.Deploy(ctx, host.DeployOptions{
		Backend: backend, Limits: lim, Name: keepName, Verifier: v,
		Delivery: delivery.Delivery{Artifact: art, Name: name, Args: args, Secrets: secrets, Detach: r.detach,
			Stdout: e.Stdout, Stderr: e.Stderr},
		OnKeep: func(k *host.Keep) { e.Infof("keep %s created on %s (backend %s)", k.ID, *r.url, k.Backend) },
		OnVerified: func(v *delivery.Verified) {
			what := v.Claims.Platform
			if v.Claims.Insecure() {
				what += ", insecure"
			}
			e.Infof("keep evidence verified by %s (%s, key %s); sending the package over TLS to the keep", v.By, what, delivery.SPKIFingerprint(v.SPKI))
		},
	})
	if err != nil {
		var ve *delivery.VerificationError
		if errors.As(err, &ve) {
			e.Errorf("%v", err)
			if h := deployHint(err, do); h != "" {
				e.Hintf("%s", h)
			}
			e.Hintf("nothing was sent to the keep; it has been stopped")
			return ExitError
		}
		if h := deployHint(err, do); h != "" {
			return e.ErrorWithHint(err, h)
		}
		if k != nil {
			return remoteEnd(ctx, e, c, k, err)
		}
		return hostError(e, err)
	}
	if r.detach {
		e.Infof("keep %s: workload %s started, detached", k.ID, art.Digest)
		if cfg != nil && cfg.DetachedOutput == config.DetachedHost {
			e.Infof("its output goes to the host agent's log, which the host can read (the config says detached_output = \"host\")")
		} else {
			e.Infof("its output is discarded (the config does not say detached_output = \"host\")")
		}
		return ExitOK
	}
	if res.Reason != "" {
		// The keep stopped the workload (its output limit: 125, as run)
		// or the runtime failed (1).
		if res.ExitCode == delivery.ExitMaxOutput {
			return exitWithError(e, ExitMaxOutput, "keep %s: stopped: %s", k.ID, res.Reason)
		}
		return e.Errorf("keep %s: %s", k.ID, res.Reason)
	}
	return res.ExitCode
}

// serviceVerifier is the attestation service at url as the verifier of a
// keep's evidence (--attest, --attest-ca).
func serviceVerifier(e *Env, url, caFile, pkg string, allowInsecure bool) (*delivery.ServiceVerifier, int) {
	sv := &delivery.ServiceVerifier{URL: url, Package: pkg, AllowInsecure: allowInsecure}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, e.Errorf("--attest-ca: %v", err)
		}
		sv.Roots = x509.NewCertPool()
		if !sv.Roots.AppendCertsFromPEM(pem) {
			return nil, e.Errorf("--attest-ca: %s: no PEM certificate in it", caFile)
		}
	}
	return sv, ExitOK
}

// insecureVerifier checks a keep's evidence for signatures and bindings
// only, this machine's simulation roots included.
func insecureVerifier() *delivery.InsecureVerifier {
	iv := &delivery.InsecureVerifier{}
	if roots, _, err := tee.SimRoots(); err == nil {
		iv.SimRoots = roots
	}
	return iv
}

// printKeeps prints the keeps as a table with a header, or says on stderr
// that there are none (stdout stays empty for scripts).
func printKeeps(e *Env, ks []host.Keep) {
	if len(ks) == 0 {
		e.Infof("no keeps on this host agent")
		return
	}
	tw := tabwriter.NewWriter(e.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tBACKEND\tNAME\tDIGEST\tEND")
	for _, k := range ks {
		end := k.Reason
		if k.ExitCode != nil {
			end = fmt.Sprintf("status %d", *k.ExitCode)
		}
		name := k.Name
		if name == "" {
			name = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.State, k.Backend, name, k.Digest, end)
	}
	tw.Flush()
}

// hostError reports err, with a hint when the host agent's certificate was
// not trusted (the agent's certificate is self-signed: clients pin it).
func hostError(e *Env, err error) int {
	var ua x509.UnknownAuthorityError
	if errors.As(err, &ua) {
		return e.ErrorWithHint(err, "pass --host-ca with the agent's certificate (STATE-DIR/tls/cert.pem on the host; the agent prints its SHA-256 at start)")
	}
	return e.Errorf("%v", err)
}

// maxWarmKeeps bounds --warm-keeps: each waiting process holds a Go
// runtime's memory.
const maxWarmKeeps = 64

// keepLauncher makes the launcher of a keep kind (--keep-kind, --keep):
// process, or vm with its image and firmware. It reports a bad choice.
func keepLauncher(e *Env, kind, image, firmware, cacheDir string) (keep.Launcher, int) {
	switch kind {
	case keep.KindProcess:
		if image != "" && image != os.Getenv("CASTELLAN_KEEP_IMAGE") || firmware != "" {
			return nil, e.Usagef("--keep-image and --firmware apply to VM keeps (--keep-kind vm)")
		}
		return &keep.Process{CacheDir: cacheDir}, ExitOK
	case keep.KindVM:
		if cacheDir != "" {
			return nil, e.Usagef("--keep-cache-dir applies to process keeps: a VM keep compiles inside its VM")
		}
		if image == "" {
			return nil, e.ErrorWithHint(errors.New("vm keeps: no keep image"), "pass --keep-image DIR (make one with 'castellan keep-image build -o DIR')")
		}
		return &qemu.VM{Image: image, Firmware: firmware, Warnf: e.Warningf}, ExitOK
	}
	return nil, e.Usagef("keep kind %q: want %s", kind, strings.Join(keep.Kinds(), " or "))
}
