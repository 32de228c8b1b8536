// Package runtime runs a WASI preview 1 command module in a keep: it
// compiles the module with the engine (internal/engine), checks that every
// import is one Castellan provides, builds the WASI world from the workload
// config (internal/wasi) and calls _start.
//
// It is what `castellan run` and the host agent's keeps call. Every error
// is one line that names the module file.
package runtime

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/engine"
	"github.com/castellan-dev/castellan/internal/wasi"
)

// Argv0 is the program name every workload sees, as under Enarx.
const Argv0 = "main.wasm"

// Options describe one run of a module.
type Options struct {
	// Name is the module file name for messages, e.g. "app.wasm".
	Name string
	Wasm []byte
	// Config is the workload config; nil means config.Default() (stdin,
	// stdout, stderr).
	Config *config.Config
	// ConfigDir is the folder for relative dir paths and CA files in the
	// config.
	ConfigDir string
	// Args are appended after the config's args; argv[0] is "main.wasm".
	Args []string
	// Env holds extra variables added after the config's env.
	Env map[string]string
	// Preopens are dir entries added after the config's descriptors
	// (castellan run --dir).
	Preopens       []config.File
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// CacheDir is the compilation cache folder; "" = no disk cache.
	CacheDir string
	// Engine runs the module: "wazero" (also for "") or "wasmtime", which
	// only builds with the tag wasmtime have (see internal/engine).
	Engine string
	// MemoryPages caps linear memory; 0 = Config.Limits.MemoryPages or the
	// engine default.
	MemoryPages uint32
	// Certificate is the keep certificate, used for TLS listen (server
	// certificate) and TLS connect (client certificate); nil = a fresh
	// self-signed one, and Log says it is not attested.
	Certificate *tls.Certificate
	// Log receives notices for the user (may be nil).
	Log func(format string, args ...any)

	// OnListen, if set, is told the bound address of each listen entry
	// (useful with port 0).
	OnListen func(name string, addr net.Addr)
	// Interruptible stops even a guest in a hot loop when ctx is done, at
	// some cost to speed. Without it a done ctx only ends blocking host
	// calls (accept, read, poll); wall time is enforced at process level.
	Interruptible bool
	// Programs, if set, supplies the compiled program (kept in memory,
	// perhaps compiled ahead by Programs.Preload) instead of a compilation
	// of Run's own; its CacheDir replaces CacheDir.
	Programs *Programs
	// Package is the digest of the package the module came from: with
	// Programs, Run notes which module it holds (Programs.Preload).
	Package string
	// ModuleDigest is Wasm's digest ("sha256:..."), when the caller
	// computed it from these bytes (a package's module layer): Run does
	// not hash the module again for its cache or Programs. It is not
	// checked, and it names the compiled code taken from memory or the
	// disk cache: it must come from the bytes themselves, never from a
	// party that sent them.
	ModuleDigest string
	// Entered, if set, is called as _start is about to run (each
	// replica's; for measuring start-up).
	Entered func()
}

// TrapError is a guest that trapped: unreachable, out-of-bounds access,
// stack overflow and the like.
type TrapError struct {
	Module, Func, Reason string
}

func (e *TrapError) Error() string {
	if e.Func == "" {
		return e.Module + ": trap: " + e.Reason
	}
	return e.Module + ": trap in function " + e.Func + ": " + e.Reason
}

// Check validates and compiles the module without running it: the same
// errors as Run for bad modules.
func Check(ctx context.Context, name string, wasm []byte, cacheDir string) error {
	p, err := Compile(ctx, name, wasm, cacheDir, false)
	if err != nil {
		return err
	}
	return p.Close(ctx)
}

// Program is a checked, compiled module that can be run many times, one
// run after the other or several at once, each with its own WASI world:
// what a long-running service keeps in memory.
type Program struct {
	name string
	eng  engine.Engine
	mod  engine.Module
}

// defaultEngine is the engine of an empty Options.Engine. Tests built with
// the tag wasmtime set it to wasmtime, so that they run on that engine.
var defaultEngine = engine.NameWazero

// Compile checks and compiles a module for Program.Run with the default
// engine. name is the module file name for messages; cacheDir is the
// compilation cache ("" = none). An interruptible program stops even in a
// hot loop when the context of Run is done, at some cost to speed (see
// Options.Interruptible).
func Compile(ctx context.Context, name string, wasm []byte, cacheDir string, interruptible bool) (*Program, error) {
	return CompileEngine(ctx, "", name, wasm, cacheDir, interruptible)
}

// CompileEngine is Compile with the engine named (see Options.Engine).
func CompileEngine(ctx context.Context, engineName, name string, wasm []byte, cacheDir string, interruptible bool) (*Program, error) {
	return compileSum(ctx, engineName, name, wasm, nil, cacheDir, interruptible)
}

// compileSum is CompileEngine for a module whose SHA-256, sum, its caller
// computed from these bytes (nil: unknown): the cache marks and the
// engine's cache key use it rather than hash a large module again.
func compileSum(ctx context.Context, engineName, name string, wasm []byte, sum *[sha256.Size]byte, cacheDir string, interruptible bool) (*Program, error) {
	if sum != nil {
		ctx = engine.WithModuleSum(ctx, *sum)
	}
	if engineName == "" {
		engineName = defaultEngine
	}
	if name == "" {
		name = "module"
	}
	cacheDir = cacheFolder(cacheDir, interruptible)
	eng, err := engine.New(engineName, engine.Config{CacheDir: cacheDir, Interruptible: interruptible})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	mod, err := compile(ctx, eng, name, wasm)
	if err != nil && cacheDir != "" && strings.Contains(err.Error(), "compilationcache") {
		// wazero fails on a cache entry that does not match its checksum
		// rather than compiling again: compile without the disk cache,
		// never running the changed code.
		eng.Close(ctx)
		if eng, err = engine.New(engineName, engine.Config{Interruptible: interruptible}); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		cacheDir = ""
		mod, err = compile(ctx, eng, name, wasm)
	}
	if err != nil {
		eng.Close(ctx)
		return nil, err
	}
	if cacheDir != "" {
		if sum == nil {
			s := sha256.Sum256(wasm)
			sum = &s
		}
		markCompiled(cacheDir, *sum)
	}
	return &Program{name: name, eng: eng, mod: mod}, nil
}

func cacheFolder(cacheDir string, interruptible bool) string {
	if interruptible && cacheDir != "" {
		// wazero's cache key does not include the termination checks
		// compiled into interruptible code: keep that code apart.
		return filepath.Join(cacheDir, "interruptible")
	}
	return cacheDir
}

// compiledMarks is the folder, inside a compilation cache, where castellan
// notes the modules it compiled into that cache: wazero's own cache does
// not say whether it holds a module. A mark is an empty file named by the
// module's SHA-256; emptying the cache folder removes both.
const compiledMarks = "castellan-compiled"

func markPath(cacheDir string, sum [sha256.Size]byte) string {
	return filepath.Join(cacheDir, compiledMarks, hex.EncodeToString(sum[:]))
}

// compiledSum reports whether the module of SHA-256 sum was compiled into
// the cache folder cacheDir before (so that Run will load it rather than
// compile it).
func compiledSum(cacheDir string, sum [sha256.Size]byte, interruptible bool) bool {
	cacheDir = cacheFolder(cacheDir, interruptible)
	if cacheDir == "" {
		return false
	}
	_, err := os.Stat(markPath(cacheDir, sum))
	return err == nil
}

// markCompiled notes that the module of SHA-256 sum is in the cache; a
// failure only costs a notice on the next run.
func markCompiled(cacheDir string, sum [sha256.Size]byte) {
	p := markPath(cacheDir, sum)
	if os.MkdirAll(filepath.Dir(p), 0o700) == nil {
		if f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
			f.Close()
		}
	}
}

// Close releases the compiled code.
func (p *Program) Close(ctx context.Context) error {
	p.mod.Close(ctx)
	return p.eng.Close(ctx)
}

// compile compiles wasm and checks that it is a WASI command whose imports
// Castellan provides.
func compile(ctx context.Context, eng engine.Engine, name string, wasm []byte) (engine.Module, error) {
	if len(wasm) < 4 || !bytes.Equal(wasm[:4], []byte("\x00asm")) {
		return nil, fmt.Errorf("%s: not a WebAssembly module (bad magic number)", name)
	}
	if len(wasm) < 8 || !bytes.Equal(wasm[4:8], []byte{1, 0, 0, 0}) {
		return nil, fmt.Errorf("%s: not a WebAssembly 1.0 module (version is not 1; components are not supported)", name)
	}
	if err := precheck(wasm); err != nil {
		return nil, fmt.Errorf("%s: truncated or malformed module: %w", name, err)
	}
	bounded, changed, err := boundTables(wasm)
	if err != nil {
		return nil, fmt.Errorf("%s: tables over the limit: %w", name, err)
	}
	if sum, ok := engine.ModuleSum(ctx); ok && changed {
		// The engine compiles other bytes than the module's: a cache
		// keyed by the module's sum (wasmtime's) must not serve code
		// compiled from the unbounded module. The rewrite is a function
		// of the module's bytes, so the module's sum and the rewrite's
		// version name the bytes compiled, without hashing a large module
		// again. (Without a sum the engine hashes the bytes it is given.)
		ctx = engine.WithModuleSum(ctx, sha256.Sum256(append(sum[:], boundTablesVersion...)))
	}
	mod, err := eng.Compile(ctx, bounded)
	if err != nil {
		if strings.Contains(err.Error(), "over limit") {
			return nil, fmt.Errorf("%s: the module needs more memory than the limit: %w", name, err)
		}
		return nil, fmt.Errorf("%s: truncated or malformed module: %w", name, err)
	}
	for _, im := range mod.Imports() {
		if im.Kind == "function" && im.Module == wasi.ModuleName && wasi.Provides(im.Name) {
			continue
		}
		mod.Close(ctx)
		return nil, fmt.Errorf("%s: imports %s.%s (%s), which castellan does not provide", name, im.Module, im.Name, im.Kind)
	}
	found := false
	for _, f := range mod.ExportedFunctions() {
		if f == "_start" {
			found = true
		}
	}
	if !found {
		mod.Close(ctx)
		return nil, fmt.Errorf("%s: no _start function: it is not a WASI command module", name)
	}
	return mod, nil
}

// moduleSum is the SHA-256 of o.Wasm: o.ModuleDigest's, or computed.
func (o *Options) moduleSum() [sha256.Size]byte {
	if sum, err := ParseDigest(o.ModuleDigest); err == nil {
		return sum
	}
	return sha256.Sum256(o.Wasm)
}

// Run compiles and runs the module's _start, returning the WASI exit
// status. err is non-nil only for failures that are not a normal exit:
// bad module, trap, missing import, bad config resource (a listen port in
// use, a dir that does not exist), or ctx done.
func Run(ctx context.Context, o Options) (exitCode int, err error) {
	if o.Programs != nil {
		return o.Programs.run(ctx, o)
	}
	var sum *[sha256.Size]byte
	if o.CacheDir != "" || o.ModuleDigest != "" {
		// The cache's marks and the engine's cache key need the module's
		// hash: computed once here, or taken from the caller's digest.
		s := o.moduleSum()
		sum = &s
	}
	if o.CacheDir != "" && o.Log != nil && !compiledSum(o.CacheDir, *sum, o.Interruptible) {
		// Compiling a large module takes seconds to minutes, in silence.
		o.Log("compiling %s (first run; cached for next time)", o.Name)
	}
	p, err := compileSum(ctx, o.Engine, o.Name, o.Wasm, sum, o.CacheDir, o.Interruptible)
	if err != nil {
		return 0, err
	}
	defer p.Close(ctx)
	return p.Run(ctx, o)
}

// Run runs the program's _start with o (o.Name, o.Wasm, o.CacheDir,
// o.Engine and o.Interruptible are not used: they were given to Compile).
// With `replicas` in the config it runs that many instances at once (see
// runReplicas).
func (p *Program) Run(ctx context.Context, o Options) (exitCode int, err error) {
	cfg := o.Config
	if cfg == nil {
		cfg = config.Default()
	}
	cert := o.Certificate
	if cert == nil && needsTLS(cfg) {
		cert, err = SelfSigned()
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p.name, err)
		}
		if o.Log != nil {
			o.Log("using a fresh self-signed certificate for TLS: the keep is not attested")
		}
	}
	o.Certificate = cert
	if n := cfg.Instances(); n > 1 {
		return p.runReplicas(ctx, o, cfg, n)
	}
	sys, err := p.system(ctx, o, cfg, -1, nil)
	if err != nil {
		return 0, err
	}
	return p.runSystem(ctx, sys, o, cfg)
}

// system builds the WASI world of one instance (inst is -1 for a keep of
// one instance); listen, if set, gives the listening sockets.
func (p *Program) system(ctx context.Context, o Options, cfg *config.Config, inst int, listen func(config.File) (net.Listener, error)) (*wasi.System, error) {
	files := append(cfg.Files[:len(cfg.Files):len(cfg.Files)], o.Preopens...)
	var envCfg *config.Config // FD_COUNT and FD_NAMES only with a config
	if o.Config != nil {
		c := *o.Config
		c.Files = files
		envCfg = &c
	}
	env := o.Env
	if inst >= 0 {
		env = map[string]string{}
		maps.Copy(env, o.Env)
		env[EnvInstance] = strconv.Itoa(inst)
		env[EnvReplicas] = strconv.Itoa(cfg.Instances())
	}
	sys, err := wasi.New(ctx, wasi.Options{
		Args:         Argv(cfg, o.Args),
		Env:          Environ(envCfg, env),
		Files:        files,
		ConfigDir:    o.ConfigDir,
		Stdin:        o.Stdin,
		Stdout:       o.Stdout,
		Stderr:       o.Stderr,
		Certificate:  o.Certificate,
		MaxOpenFiles: cfg.Limits.MaxOpenFiles,
		OnListen:     o.OnListen,
		Listen:       listen,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.name, err)
	}
	return sys, nil
}

// runSystem runs _start in sys and closes sys.
func (p *Program) runSystem(ctx context.Context, sys *wasi.System, o Options, cfg *config.Config) (int, error) {
	name := p.name
	pages := o.MemoryPages
	if pages == 0 {
		pages = cfg.Limits.MemoryPages
	}
	defer sys.Close()
	stop := context.AfterFunc(ctx, sys.Interrupt)

	code, err := p.mod.Run(ctx, engine.RunConfig{
		Start:       "_start",
		Hosts:       []engine.HostModule{sys.HostModule()},
		MemoryPages: pages,
		Entered:     o.Entered,
	})
	if !stop() {
		// ctx ended the run: whatever the guest did after its sockets
		// were closed under it is not its real outcome.
		return 0, fmt.Errorf("%s: %w: %w", name, wasi.ErrInterrupted, context.Cause(ctx))
	}
	if err != nil {
		var trap *engine.Trap
		if errors.As(err, &trap) {
			if errors.Is(trap.Err, wasi.ErrInterrupted) {
				return 0, fmt.Errorf("%s: %w", name, trap.Err)
			}
			return 0, &TrapError{Module: name, Func: trap.Func, Reason: trap.Reason}
		}
		if strings.Contains(err.Error(), "over limit") {
			return 0, fmt.Errorf("%s: the module needs more memory than the limit: %w", name, err)
		}
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return int(code), nil
}

func needsTLS(cfg *config.Config) bool {
	for _, f := range cfg.Files {
		if (f.Kind == config.KindListen || f.Kind == config.KindConnect) && f.Prot == config.ProtTLS {
			return true
		}
	}
	return false
}

// Argv is the workload's argv: "main.wasm", the config's args, then extra.
func Argv(cfg *config.Config, extra []string) []string {
	if cfg == nil {
		cfg = config.Default()
	}
	argv := []string{Argv0}
	argv = append(argv, cfg.Args...)
	return append(argv, extra...)
}

// Environ is the workload's environment. With a config: FD_COUNT and
// FD_NAMES first (as Enarx gives them), then the config's env sorted by
// key, then extra sorted by key; a later entry with the same key replaces
// an earlier one in place. Without one (cfg nil): exactly extra, sorted by
// key, so that a workload run with flags only gets what it was given.
func Environ(cfg *config.Config, extra map[string]string) []string {
	fdVars := cfg != nil
	if cfg == nil {
		cfg = &config.Config{}
	}
	names := make([]string, len(cfg.Files))
	for i, f := range cfg.Files {
		names[i] = f.Name
	}
	var keys []string
	vals := map[string]string{}
	set := func(k, v string) {
		if _, ok := vals[k]; !ok {
			keys = append(keys, k)
		}
		vals[k] = v
	}
	if fdVars {
		set("FD_COUNT", fmt.Sprint(len(cfg.Files)))
		set("FD_NAMES", strings.Join(names, ":"))
	}
	for _, m := range []map[string]string{cfg.Env, extra} {
		ks := make([]string, 0, len(m))
		for k := range m {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		for _, k := range ks {
			set(k, m[k])
		}
	}
	env := make([]string, len(keys))
	for i, k := range keys {
		env[i] = k + "=" + vals[k]
	}
	return env
}

// SelfSigned makes a fresh self-signed ECDSA P-256 certificate for a keep
// that has no attested one, valid for a day, for localhost and loopback.
func SelfSigned() (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("self-signed certificate: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("self-signed certificate: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "castellan keep (not attested)"},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-signed certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("self-signed certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}
