package engine

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	goruntime "runtime"
	"runtime/metrics"
	"sort"
	"strings"
	"sync"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/sys"
)

// Wazero is the pure-Go engine. It uses wazero's optimizing compiler where
// wazero supports the platform (amd64, arm64) and its interpreter elsewhere.
type Wazero struct {
	cfg   Config
	rtCfg wazero.RuntimeConfig
	cache wazero.CompilationCache
}

var (
	_ Engine = (*Wazero)(nil)
	_ Module = (*wazeroModule)(nil)
	_ Caller = (*wazeroCaller)(nil)
)

// NewWazero makes a wazero engine. With a CacheDir, compiled code is kept on
// disk and reused by later runs of the same module.
func NewWazero(cfg Config) (*Wazero, error) {
	rc := wazero.NewRuntimeConfig().WithCloseOnContextDone(cfg.Interruptible)
	if cfg.MemoryPages > 0 {
		rc = rc.WithMemoryLimitPages(cfg.MemoryPages)
	}
	w := &Wazero{cfg: cfg}
	if cfg.CacheDir != "" {
		c, err := wazero.NewCompilationCacheWithDir(cfg.CacheDir)
		if err != nil {
			return nil, fmt.Errorf("compilation cache %s: %w", cfg.CacheDir, err)
		}
		w.cache = c
	} else {
		// An in-memory cache lets modules compiled by this engine be
		// instantiated in runtimes made later by Run.
		w.cache = wazero.NewCompilationCache()
	}
	rc = rc.WithCompilationCache(w.cache)
	w.rtCfg = rc
	return w, nil
}

// Close implements Engine.
func (w *Wazero) Close(ctx context.Context) error {
	return w.cache.Close(ctx)
}

// Compile implements Engine.
func (w *Wazero) Compile(ctx context.Context, wasm []byte) (Module, error) {
	rt := wazero.NewRuntimeWithConfig(ctx, w.rtCfg)
	cm, err := rt.CompileModule(ctx, wasm)
	if err != nil {
		rt.Close(ctx)
		return nil, compileError(err)
	}
	return &wazeroModule{w: w, rt: rt, cm: cm, wasm: wasm}, nil
}

// compileError makes wazero's compile errors one line.
func compileError(err error) error {
	msg := oneLine(err.Error())
	return errors.New(msg)
}

func oneLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return strings.TrimSpace(s)
}

type wazeroModule struct {
	w    *Wazero
	rt   wazero.Runtime
	cm   wazero.CompiledModule
	wasm []byte

	mu  sync.Mutex
	rts map[uint32]*sharedRuntime // by memory limit in pages (0: the engine's)
}

// sharedRuntime is a wazero runtime that runs one module many times, one
// after the other or at once: the module is decoded and compiled in it
// once, and its host modules are instantiated once, as functions that
// call the host functions of the run they are called in (runHosts in the
// call's context). Module instances are anonymous, so any number coexist.
type sharedRuntime struct {
	rt wazero.Runtime
	cm wazero.CompiledModule

	once  sync.Once
	hosts string // signature of the host modules instantiated
	err   error
}

// maxSharedRuntimes bounds a module's runtimes with distinct memory
// limits; a run with yet another limit gets a runtime of its own.
const maxSharedRuntimes = 4

// runHostsKey is the context key of a run's host modules in a shared
// runtime.
type runHostsKey struct{}

// shared returns the runtime for runs with the memory limit pages (0: the
// engine's), making it on first use; nil when the module has too many.
func (m *wazeroModule) shared(ctx context.Context, pages uint32) (*sharedRuntime, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.rts == nil {
		m.rts = map[uint32]*sharedRuntime{0: {rt: m.rt, cm: m.cm}}
	}
	if s := m.rts[pages]; s != nil {
		return s, nil
	}
	if len(m.rts) >= maxSharedRuntimes {
		return nil, nil
	}
	rt := wazero.NewRuntimeWithConfig(ctx, m.w.rtCfg.WithMemoryLimitPages(pages))
	cm, err := rt.CompileModule(ctx, m.wasm)
	if err != nil {
		rt.Close(ctx)
		return nil, compileError(err)
	}
	s := &sharedRuntime{rt: rt, cm: cm}
	m.rts[pages] = s
	return s, nil
}

// useHosts instantiates hosts in s once, as dispatching functions; it
// reports whether s's host modules have the same names and signatures as
// hosts (a run with others needs a runtime of its own).
func (s *sharedRuntime) useHosts(ctx context.Context, hosts []HostModule) (bool, error) {
	sig := hostSignature(hosts)
	s.once.Do(func() {
		s.hosts = sig
		s.err = instantiateHosts(ctx, s.rt, hosts, true)
	})
	return s.err == nil && s.hosts == sig, s.err
}

// instantiateHosts instantiates hosts in rt. With dispatch (a shared
// runtime), each function calls the one at its place in the host modules
// of the run it is called from (runHostsKey in the call's context);
// without, it calls its own.
func instantiateHosts(ctx context.Context, rt wazero.Runtime, hosts []HostModule, dispatch bool) error {
	for hi, h := range hosts {
		b := rt.NewHostModuleBuilder(h.Name)
		for fi, f := range h.Funcs {
			fn := f.Fn
			b.NewFunctionBuilder().
				WithGoModuleFunction(api.GoModuleFunc(func(ctx context.Context, mod api.Module, stack []uint64) {
					call := fn
					if dispatch {
						call = ctx.Value(runHostsKey{}).([]HostModule)[hi].Funcs[fi].Fn
					}
					call(ctx, &wazeroCaller{ctx: ctx, mod: mod}, stack)
				}), toWazero(f.Params), toWazero(f.Results)).
				WithName(f.Name).
				Export(f.Name)
		}
		if _, err := b.Instantiate(ctx); err != nil {
			return fmt.Errorf("host module %s: %w", h.Name, err)
		}
	}
	return nil
}

// hostSignature names host modules' functions and their types.
func hostSignature(hosts []HostModule) string {
	var b strings.Builder
	for _, h := range hosts {
		fmt.Fprintf(&b, "%s{", h.Name)
		for _, f := range h.Funcs {
			fmt.Fprintf(&b, "%s%v%v;", f.Name, f.Params, f.Results)
		}
		b.WriteString("}")
	}
	return b.String()
}

func (m *wazeroModule) Imports() []Import {
	var out []Import
	for _, f := range m.cm.ImportedFunctions() {
		mod, name, _ := f.Import()
		out = append(out, Import{Module: mod, Name: name, Kind: "function"})
	}
	for _, mem := range m.cm.ImportedMemories() {
		mod, name, _ := mem.Import()
		out = append(out, Import{Module: mod, Name: name, Kind: "memory"})
	}
	return out
}

func (m *wazeroModule) ExportedFunctions() []string {
	var names []string
	for n := range m.cm.ExportedFunctions() {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (m *wazeroModule) Close(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for pages, s := range m.rts {
		if pages != 0 {
			s.rt.Close(ctx)
		}
	}
	return m.rt.Close(ctx)
}

var wazeroTypes = map[ValueType]api.ValueType{
	I32: api.ValueTypeI32,
	I64: api.ValueTypeI64,
	F32: api.ValueTypeF32,
	F64: api.ValueTypeF64,
}

func toWazero(ts []ValueType) []api.ValueType {
	out := make([]api.ValueType, len(ts))
	for i, t := range ts {
		out[i] = wazeroTypes[t]
	}
	return out
}

// Run implements Module. A module can be run many times, one after the
// other or at once. Runs share a runtime per memory limit, in which the
// module was decoded and compiled once (sharedRuntime); a run whose host
// modules differ from the runtime's, or with a fifth memory limit, gets a
// fresh runtime (function types are per runtime, so the module is compiled
// again in it, from the engine's compilation cache).
func (m *wazeroModule) Run(ctx context.Context, o RunConfig) (uint32, error) {
	start, hosts := o.Start, o.Hosts
	var pages uint32
	if o.MemoryPages > 0 && (m.w.cfg.MemoryPages == 0 || o.MemoryPages < m.w.cfg.MemoryPages) {
		pages = o.MemoryPages
	}
	var rt wazero.Runtime
	var cm wazero.CompiledModule
	sh, err := m.shared(ctx, pages)
	if err != nil {
		return 0, err
	}
	if sh != nil {
		ok, err := sh.useHosts(ctx, hosts)
		if err != nil {
			return 0, err
		}
		if ok {
			rt, cm = sh.rt, sh.cm
			ctx = context.WithValue(ctx, runHostsKey{}, hosts)
		}
	}
	if rt == nil {
		rc := m.w.rtCfg
		if pages > 0 {
			rc = rc.WithMemoryLimitPages(pages)
		}
		rt = wazero.NewRuntimeWithConfig(ctx, rc)
		defer rt.Close(ctx)
		if cm, err = rt.CompileModule(ctx, m.wasm); err != nil {
			return 0, compileError(err)
		}
		if err := instantiateHosts(ctx, rt, hosts, false); err != nil {
			return 0, err
		}
	}
	// The module gets an empty name, so stack traces name functions as
	// the name section does ("main.main", "foo") with no prefix.
	mod, err := rt.InstantiateModule(ctx, cm, wazero.NewModuleConfig().WithName("").WithStartFunctions())
	if err != nil {
		// Link errors, and traps in the start section or data segments.
		var exit *sys.ExitError
		if errors.As(err, &exit) || strings.Contains(err.Error(), "wasm stack trace") {
			return exitOrTrap(ctx, err)
		}
		return 0, compileError(err)
	}
	defer mod.Close(ctx)
	f := mod.ExportedFunction(start)
	if f == nil {
		return 0, fmt.Errorf("no exported function %s", start)
	}
	// Finish any garbage collection before the guest runs, if one is near.
	// Compiled Wasm has no safe points: a collection that starts while the
	// guest computes cannot scan its goroutine until the guest calls the
	// host, and its mark worker spins on the other core meanwhile
	// (measured: 14% slower on a compute loop, 4,000 preemption signals a
	// second). Loading a large module allocates enough to start one;
	// collecting now costs about a millisecond and resets the heap goal, so
	// a guest that does not make the host allocate runs with no collection
	// at all. A small module leaves the heap far below its goal: then the
	// collection is skipped, as it would not start during the guest either.
	if gcNear() {
		goruntime.GC()
	}
	if o.Entered != nil {
		o.Entered()
	}
	_, err = f.Call(ctx)
	if err != nil {
		return exitOrTrap(ctx, err)
	}
	return 0, nil
}

// frameRE matches a frame of wazero's stack trace: name(params)results.
var frameRE = regexp.MustCompile(`^(.*?)\([a-z0-9,]*\)(?:[a-z0-9]+|\([a-z0-9,]*\))?$`)

func exitOrTrap(ctx context.Context, err error) (uint32, error) {
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		switch exit.ExitCode() {
		case sys.ExitCodeContextCanceled, sys.ExitCodeDeadlineExceeded:
			if cause := context.Cause(ctx); cause != nil {
				return 0, fmt.Errorf("stopped: %w", cause)
			}
		}
		return exit.ExitCode(), nil
	}
	msg := err.Error()
	head, stack, _ := strings.Cut(msg, "\nwasm stack trace:\n")
	t := &Trap{Err: errors.Unwrap(err)}
	t.Reason = strings.TrimSuffix(strings.TrimPrefix(head, "wasm error: "), " (recovered by wazero)")
	if first, _, _ := strings.Cut(stack, "\n"); first != "" {
		first = strings.TrimSpace(first)
		if m := frameRE.FindStringSubmatch(first); m != nil {
			first = m[1]
		}
		t.Func = strings.TrimPrefix(first, ".")
	}
	t.Reason = oneLine(t.Reason)
	return 0, t
}

type wazeroCaller struct {
	ctx context.Context
	mod api.Module
}

func (c *wazeroCaller) Memory() []byte {
	mem := c.mod.Memory()
	if mem == nil {
		return nil
	}
	b, _ := mem.Read(0, mem.Size())
	return b
}

func (c *wazeroCaller) Exit(code uint32) {
	_ = c.mod.CloseWithExitCode(c.ctx, code)
	panic(sys.NewExitError(code))
}

// gcHeadroom is the share of the heap goal that must still be free for a
// run to skip the collection before the guest.
const gcHeadroom = 0.5

var gcSamples = []metrics.Sample{{Name: "/gc/heap/goal:bytes"}, {Name: "/gc/heap/live:bytes"}, {Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/heap/frees:bytes"}}

// gcNear says whether the heap has used up more than half of the room to
// its goal: a collection would start soon, maybe while the guest runs.
func gcNear() bool {
	s := make([]metrics.Sample, len(gcSamples))
	copy(s, gcSamples)
	metrics.Read(s)
	for _, x := range s {
		if x.Value.Kind() != metrics.KindUint64 {
			return true // not reported by this Go: collect, as before
		}
	}
	goal, live := s[0].Value.Uint64(), s[1].Value.Uint64()
	inUse := s[2].Value.Uint64() - s[3].Value.Uint64()
	if goal <= live {
		return true
	}
	return float64(inUse-min(inUse, live)) > gcHeadroom*float64(goal-live)
}
