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
	"sync/atomic"

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
	// used is set by the first Run, which runs in rt with cm: a keep that
	// runs its module once decodes it once (it matters for cold start).
	used atomic.Bool
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

// Run implements Module. Each call gets a fresh wazero runtime (function
// types are per runtime, so the module is compiled again in it, which the
// engine's compilation cache makes cheap), so a module can be run many
// times, one after the other or at once.
func (m *wazeroModule) Run(ctx context.Context, o RunConfig) (uint32, error) {
	start, hosts := o.Start, o.Hosts
	rc := m.w.rtCfg
	ownLimit := o.MemoryPages > 0 && (m.w.cfg.MemoryPages == 0 || o.MemoryPages < m.w.cfg.MemoryPages)
	if ownLimit {
		rc = rc.WithMemoryLimitPages(o.MemoryPages)
	}
	var rt wazero.Runtime
	var cm wazero.CompiledModule
	if !ownLimit && m.used.CompareAndSwap(false, true) {
		// The first run uses the runtime Compile made, whose limits are
		// the engine's. Its host module instances are closed with it.
		rt, cm = m.rt, m.cm
	} else {
		rt = wazero.NewRuntimeWithConfig(ctx, rc)
		defer rt.Close(ctx)
		var err error
		if cm, err = rt.CompileModule(ctx, m.wasm); err != nil {
			return 0, compileError(err)
		}
	}
	for _, h := range hosts {
		b := rt.NewHostModuleBuilder(h.Name)
		for _, f := range h.Funcs {
			fn := f.Fn
			b.NewFunctionBuilder().
				WithGoModuleFunction(api.GoModuleFunc(func(ctx context.Context, mod api.Module, stack []uint64) {
					fn(ctx, &wazeroCaller{ctx: ctx, mod: mod}, stack)
				}), toWazero(f.Params), toWazero(f.Results)).
				WithName(f.Name).
				Export(f.Name)
		}
		hm, err := b.Instantiate(ctx)
		if err != nil {
			return 0, fmt.Errorf("host module %s: %w", h.Name, err)
		}
		defer hm.Close(ctx)
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
