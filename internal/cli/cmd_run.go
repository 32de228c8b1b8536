package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/engine"
	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/runtime"
	"github.com/castellan-dev/castellan/internal/workload"
)

// Exit statuses of a keep stopped by a limit, after the example of timeout(1).
const (
	ExitWallTime  = 124
	ExitMaxOutput = 125
)

// maxModuleSize bounds what run reads from disk before parsing.
const maxModuleSize = 1 << 30

// runOptions are the flags shared by run and deploy.
type runOptions struct {
	configPath string
	backend    string
	attest     string
	attestCA   string
	cacheDir   string
	noCache    bool
	engine     string
	memory     string
	wallTime   time.Duration
	maxOutput  string
	digestOnly bool
	report     string
	attestTime time.Duration
	secrets    *secretFlags // --secret, --secret-file (cmd_deploy.go)
	world      *worldFlags  // --dir, --dir-ro, --env: run only (run_world.go)
	vm         *vmOptions   // --keep, --keep-image, --firmware (cmd_run_vm.go)
	kbs        string       // run only: --kbs (cmd_run_kbs.go)
}

func addRunFlags(fs *flag.FlagSet) *runOptions {
	ro := &runOptions{}
	fs.StringVar(&ro.configPath, "c", "", "workload config (Enarx.toml format); none: stdin, stdout and stderr only")
	fs.StringVar(&ro.configPath, "wasmcfgfile", "", "same as -c (Enarx's name for it)")
	fs.StringVar(&ro.backend, "backend", "auto", "keep backend: auto, nil, sim-snp, sim-tdx, sim-sgx, sim-cca, snp, tdx, sgx, cca (see 'castellan platform info')")
	fs.StringVar(&ro.attest, "attest", "", "attestation service URL to get the keep certificate from (default: the config's steward)")
	fs.StringVar(&ro.attestCA, "attest-ca", "", "PEM file of the CA that the attestation service's TLS certificate chains to")
	fs.DurationVar(&ro.attestTime, "attest-timeout", defaultAttestTimeout, "time limit for getting the keep's certificate from the attestation service")
	fs.StringVar(&ro.cacheDir, "cache-dir", defaultCacheDir(), "compilation cache folder")
	fs.BoolVar(&ro.noCache, "no-cache", false, "do not use the compilation cache")
	fs.StringVar(&ro.engine, "engine", engine.NameWazero, "WebAssembly engine: wazero (pure Go) or wasmtime (builds with -tags wasmtime)")
	fs.StringVar(&ro.memory, "memory", "", "linear memory limit, e.g. 256MiB (overrides the config's [limits] memory)")
	fs.DurationVar(&ro.wallTime, "wall-time", 0, "stop the keep after this long, e.g. 30s (overrides the config's [limits] wall_time)")
	fs.StringVar(&ro.maxOutput, "max-output", "", "stop the keep once stdout and stderr together pass this size, e.g. 10MiB")
	fs.BoolVar(&ro.digestOnly, "digest", false, "print the workload digest and exit without running")
	fs.StringVar(&ro.report, "report", "", "before the workload starts, write the keep's certificate, claims and evidence to this JSON file")
	ro.secrets = addSecretFlags(fs)
	ro.vm = addKeepKindFlags(fs)
	return ro
}

func defaultCacheDir() string {
	if d := os.Getenv("CASTELLAN_CACHE_DIR"); d != "" {
		return d
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(base, "castellan", "wasm")
}

var runCmd = &Command{
	Name:    "run",
	Usage:   "run [flags] app.wasm [-- args...]",
	Summary: "run a WebAssembly (WASI) workload in a keep",
	Help: `Runs app.wasm with the descriptors, environment and limits that its config
names (-c). Arguments after -- are passed to the workload after the config's
args. --dir and --env add preopened folders and variables, with or without
a config (a folder or variable that the config also names is an error).
Without a config the workload gets stdin, stdout, stderr, the --dir folders
and exactly the --env variables; with one it also gets FD_COUNT and
FD_NAMES, as under Enarx. The exit status is the workload's; a keep stopped
by its wall-time limit exits with 124, by its output limit with 125, by
SIGINT with 130 and by SIGTERM with 143 (after one line saying what was
stopped; its listeners and connections are closed first).

With --keep vm the keep is a micro-VM: QEMU boots the keep image
(--keep-image, made by 'castellan keep-image build'), under KVM where usable,
else under TCG (emulation: slow, and not isolated by hardware); backend snp
or tdx boots an SEV-SNP VM or a TD with --firmware. This castellan then
verifies the keep's evidence (signatures and bindings; with --attest, the
attestation service), sends the package and its secrets over TLS that ends
inside the VM, and prints the output that comes back. The VM's size is the
config's [limits] vm_memory and vcpus (default 512MiB and 1); it has no
network and no disk, so configs with dir, listen or connect entries are
refused.`,
}

func init() {
	DefineFlags("run", func(fs *flag.FlagSet) { addKBSFlag(fs, addRunFlags(fs)); addWorldFlags(fs) })
	runCmd.Run = runMain
	Register(runCmd)
}

func runMain(e *Env, args []string) int {
	fs := e.FlagSet(runCmd)
	ro := addRunFlags(fs)
	ro.world = addWorldFlags(fs)
	addKBSFlag(fs, ro)
	pos, status, ok := e.Parse(runCmd, fs, args)
	if !ok {
		return status
	}
	pos, extra := splitDashDash(pos)
	if len(pos) != 1 {
		if len(pos) > 1 {
			e.Errorf("run: want one module file, got %d: %s", len(pos), strings.Join(pos, " "))
			e.Hintf("arguments for the workload go after --: castellan run %s -- %s", pos[0], strings.Join(pos[1:], " "))
			return ExitUsage
		}
		return e.Usagef("run: want one module file, got %d (see 'castellan help run')", len(pos))
	}
	art, cfg, code := loadWorkload(e, pos[0], ro.configPath)
	if art == nil {
		return code
	}
	if ro.digestOnly {
		fmt.Fprintln(e.Stdout, art.Digest)
		return ExitOK
	}
	return runLoaded(e, ro, art, cfg, filepath.Base(pos[0]), configDir(ro.configPath), extra)
}

// splitDashDash splits positional arguments at the first "--".
func splitDashDash(pos []string) (before, after []string) {
	for i, a := range pos {
		if a == "--" {
			return pos[:i], pos[i+1:]
		}
	}
	return pos, nil
}

func configDir(path string) string {
	if path == "" {
		return "."
	}
	return filepath.Dir(path)
}

// loadWorkload reads a module and its optional config from disk and builds
// the workload artifact. On failure it reports and returns a nil artifact
// with the exit status.
func loadWorkload(e *Env, wasmPath, configPath string) (*workload.Artifact, *config.Config, int) {
	wasm, err := readFileLimited(wasmPath, maxModuleSize)
	if err != nil {
		return nil, nil, e.Errorf("%v", err)
	}
	var cfg *config.Config
	var raw []byte
	if configPath != "" {
		cfg, raw, err = config.Load(configPath)
		if err != nil {
			return nil, nil, e.Errorf("%v", err)
		}
		for _, w := range cfg.Warnings {
			e.Warningf("%s", w)
		}
		warnStdio(e, configPath, cfg)
	}
	art, err := workload.New(wasm, raw)
	if err != nil {
		return nil, nil, e.Errorf("%s: %v", wasmPath, err)
	}
	return art, cfg, ExitOK
}

// warnStdio warns, once at start, when a config does not give the workload
// stdout as descriptor 1 and stderr as descriptor 2 (or null there, which
// is a choice): what the workload writes there would be lost without a
// word, since descriptor i is the config's i-th [[files]] entry.
func warnStdio(e *Env, where string, cfg *config.Config) {
	if len(cfg.Files) == 0 {
		e.Warningf("%s: no [[files]]: the workload gets no descriptors, not even stdout (as under Enarx); list stdin, stdout and stderr first", where)
		return
	}
	var lost []string
	for fd, want := range map[int]config.Kind{1: config.KindStdout, 2: config.KindStderr} {
		switch {
		case fd >= len(cfg.Files):
			lost = append(lost, fmt.Sprintf("descriptor %d (%s) does not exist", fd, want))
		case cfg.Files[fd].Kind != want && cfg.Files[fd].Kind != config.KindNull:
			lost = append(lost, fmt.Sprintf("descriptor %d (%s) is its %s entry", fd, want, cfg.Files[fd].Kind))
		}
	}
	if len(lost) == 0 {
		return
	}
	sort.Strings(lost)
	e.Warningf("%s: %s: what the workload writes there is lost (descriptor i is the i-th [[files]] entry); list stdin, stdout and stderr first, or null for a stream to drop", where, strings.Join(lost, ", "))
}

func readFileLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return nil, fmt.Errorf("%s: is a directory, not a file", path)
	}
	if st.Size() > limit {
		return nil, fmt.Errorf("%s: %d bytes is over the %d byte limit", path, st.Size(), limit)
	}
	if !st.Mode().IsRegular() { // a pipe or a device: size unknown
		b, err := io.ReadAll(io.LimitReader(f, limit+1))
		if int64(len(b)) > limit {
			return nil, fmt.Errorf("%s: over the %d byte limit", path, limit)
		}
		return b, err
	}
	// One allocation of the right size: io.ReadAll's doubling costs
	// measurable start-up time on a 10 MB module.
	b := make([]byte, st.Size())
	n, err := io.ReadFull(f, b)
	if err != nil && err != io.ErrUnexpectedEOF {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b[:n], nil
}

// runArtifact runs a fetched package (used by deploy): the config comes from
// the artifact's own TOML layer, relative paths resolve against dir.
func runArtifact(e *Env, ro *runOptions, art *workload.Artifact, name string, args []string) int {
	var cfg *config.Config
	if art.Config != nil {
		var err error
		cfg, err = config.Parse(name+" config", art.Config)
		if err != nil {
			return e.Errorf("%v", err)
		}
		for _, w := range cfg.Warnings {
			e.Warningf("%s", w)
		}
		warnStdio(e, name+" config", cfg)
	}
	if ro.digestOnly {
		fmt.Fprintln(e.Stdout, art.Digest)
		return ExitOK
	}
	return runLoaded(e, ro, art, cfg, name, ".", args)
}

// runLoaded runs a workload whose bytes and config are in hand.
func runLoaded(e *Env, ro *runOptions, art *workload.Artifact, cfg *config.Config, name, dir string, args []string) int {
	if err := engine.Available(ro.engine); err != nil {
		return e.Errorf("--engine %s: %v", ro.engine, err)
	}
	switch ro.vm.kind {
	case keep.KindVM:
		if ro.engine == engine.NameWasmtime {
			return e.Usagef("--engine %s applies to process keeps (--keep process)", ro.engine)
		}
		return runVM(e, ro, art, cfg, name, args)
	case keep.KindProcess:
		if ro.vm.image != os.Getenv("CASTELLAN_KEEP_IMAGE") || ro.vm.firmware != "" {
			return e.Usagef("--keep-image and --firmware apply to VM keeps (--keep vm)")
		}
	default:
		return e.Usagef("--keep: %q is not a keep kind (want %s)", ro.vm.kind, strings.Join(keep.Kinds(), " or "))
	}
	var limits config.Limits
	if cfg != nil {
		limits = cfg.Limits
	}
	if ro.memory != "" {
		n, err := config.ParseSize(ro.memory)
		if err != nil {
			return e.Usagef("--memory: %v", err)
		}
		const page = 64 << 10
		if n == 0 || (n+page-1)/page > 65536 {
			return e.Usagef("--memory: %s is not between 1 byte and 4GiB (65536 pages of 64KiB)", ro.memory)
		}
		limits.MemoryPages = uint32((n + page - 1) / page)
	}
	if ro.wallTime != 0 {
		if ro.wallTime < 0 {
			return e.Usagef("--wall-time: %v is negative", ro.wallTime)
		}
		limits.WallTime = ro.wallTime
	}
	if ro.maxOutput != "" {
		n, err := config.ParseSize(ro.maxOutput)
		if err != nil {
			return e.Usagef("--max-output: %v", err)
		}
		if n == 0 {
			return e.Usagef("--max-output: must be more than 0")
		}
		limits.MaxOutput = int64(n)
	}
	if ro.attestTime <= 0 {
		return e.Usagef("--attest-timeout: %v is not positive", ro.attestTime)
	}
	if cfg != nil {
		cfg.Limits = limits
	}
	cacheDir := ro.cacheDir
	if ro.noCache {
		cacheDir = ""
	}

	k := &keepProcess{e: e, name: name}
	stdout, stderr := io.Writer(e.Stdout), io.Writer(e.Stderr)
	if limits.MaxOutput > 0 {
		lw := &limitWriter{left: limits.MaxOutput, onLimit: func() {
			k.stop(ExitMaxOutput, "output limit of %d bytes reached", limits.MaxOutput)
		}}
		stdout, stderr = lw.wrap(e.Stdout), lw.wrap(e.Stderr)
	}
	if limits.WallTime > 0 {
		t := time.AfterFunc(limits.WallTime, func() {
			k.stop(ExitWallTime, "wall time limit of %v reached", limits.WallTime)
		})
		defer t.Stop()
	}

	// SIGINT and SIGTERM end the run: its blocking calls return and its
	// listeners and connections close; a workload that does not return
	// (a loop) is ended with the process after stopGrace.
	ctx, release := stopOnSignal(context.Background(), func(s signalStop) {
		k.stop(s.status(), "%s (workload %s) %s; it did not end within %v, its listeners and connections are closed", name, art.Digest, s, stopGrace)
	})
	defer release()
	// Supplied secrets are checked before the keep attests; those the
	// config fetches by kbs:/// reference come after it attested.
	secretVals, code := ro.secrets.read(e)
	if code != ExitOK {
		return code
	}
	supplied := len(secretVals)
	if err := cfg.CheckSecrets(slices.Collect(maps.Keys(secretVals))); err != nil {
		return secretsError(e, err)
	}
	var preopens []config.File
	var flagEnv map[string]string
	if ro.world != nil {
		var err error
		preopens, flagEnv, err = ro.world.apply(cfg, ro.configPath)
		if err != nil {
			return e.Usagef("%v", err)
		}
	}
	cert, code := keepCertificate(ctx, e, ro, cfg, art)
	if s, ok := stoppedBy(ctx); ok {
		return reportStop(e, s, name, art.Digest.String())
	}
	if code != ExitOK {
		return code
	}
	if code := fetchSecrets(e, ro, cfg, art, secretVals); code != ExitOK {
		return code
	}
	secretEnv, err := cfg.BindSecrets(secretVals)
	if err != nil {
		return secretsError(e, err)
	}
	if supplied > 0 {
		e.Warningf("the secrets go to a keep on this machine: without a keep on a separate host (deploy --host) they are not protected from this machine")
	}
	for k, v := range flagEnv {
		if secretEnv == nil {
			secretEnv = map[string]string{}
		}
		secretEnv[k] = v
	}
	exit, err := runtime.Run(ctx, runtime.Options{
		Name:        name,
		Wasm:        art.Wasm,
		Config:      cfg,
		ConfigDir:   dir,
		Args:        args,
		Env:         secretEnv,
		Preopens:    preopens,
		Stdin:       e.Stdin,
		Stdout:      stdout,
		Stderr:      stderr,
		CacheDir:    cacheDir,
		Engine:      ro.engine,
		MemoryPages: limits.MemoryPages,
		Certificate: cert,
		Log:         func(f string, a ...any) { e.Infof(f, a...) },
		// Hashed by workload.New from these bytes: not hashed again.
		ModuleDigest: art.WasmDesc.Digest.String(),
	})
	if s, ok := stoppedBy(ctx); ok {
		return reportStop(e, s, name, art.Digest.String())
	}
	if err != nil {
		return e.Errorf("%v", err)
	}
	return exit
}

// exitProcess ends the keep process; tests replace it.
var exitProcess = os.Exit

// keepProcess stops the whole keep process when a limit is reached. Limits
// are enforced here rather than by interrupting the engine, because wazero's
// close-on-context-done checks cost 4-7x on hot loops (see RATIONALE.md).
type keepProcess struct {
	e    *Env
	name string
	once sync.Once
}

func (k *keepProcess) stop(code int, format string, a ...any) {
	k.once.Do(func() {
		if code > 128 { // a signal: said as a notice, as reportStop does
			k.e.Infof(format, a...)
		} else {
			k.e.Errorf("%s: stopped: %s", k.name, fmt.Sprintf(format, a...))
		}
		exitProcess(code)
	})
}

// limitWriter counts the bytes of several writers against one budget.
type limitWriter struct {
	mu      sync.Mutex
	left    int64
	onLimit func()
}

func (l *limitWriter) wrap(w io.Writer) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		l.mu.Lock()
		n := int64(len(p))
		over := n > l.left
		if over {
			n = l.left
		}
		l.left -= n
		l.mu.Unlock()
		m, err := w.Write(p[:n])
		if over {
			l.onLimit()
			return m, fmt.Errorf("output limit reached")
		}
		return m, err
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
