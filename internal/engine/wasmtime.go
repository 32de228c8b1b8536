//go:build wasmtime && unix

package engine

/*
#include <stdint.h>
#include <stdlib.h>

// The few wasmtime C API declarations this file needs; the library itself
// is linked by wasmtime-go. They match wasmtime/store.h and error.h of
// wasmtime 39.
typedef struct wasmtime_store castellan_store_t;
typedef struct wasmtime_context castellan_context_t;
typedef struct wasmtime_error castellan_error_t;
extern void wasmtime_store_epoch_deadline_callback(castellan_store_t *store,
	castellan_error_t *(*func)(castellan_context_t *, void *, uint64_t *, uint8_t *),
	void *data, void (*finalizer)(void *));
extern castellan_error_t *wasmtime_error_new(const char *);

// castellan_epoch runs each time the engine's epoch passes a store's
// deadline: it ends the run if the store's flag is set, else lets the guest
// go on until the next tick.
static castellan_error_t *castellan_epoch(castellan_context_t *ctx, void *data, uint64_t *delta, uint8_t *kind) {
	if (__atomic_load_n((int32_t *)data, __ATOMIC_SEQ_CST)) {
		return wasmtime_error_new("interrupted");
	}
	*delta = 1;
	*kind = 0; // WASMTIME_UPDATE_DEADLINE_CONTINUE
	return NULL;
}

static void castellan_set_epoch_callback(void *store, void *flag) {
	wasmtime_store_epoch_deadline_callback((castellan_store_t *)store, castellan_epoch, flag, NULL);
}
*/
import "C"

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	goruntime "runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// WasmtimeBuilt reports whether this build includes the wasmtime engine.
const WasmtimeBuilt = true

// wasmtimeVersion is the version of the bindings (and the library they
// ship) in go.mod, which TestWasmtimeVersionMatchesGoMod keeps true. It
// names the disk cache: a serialized module is only valid for one release.
const wasmtimeVersion = "v39.0.1"

// Wasmtime is the engine of the Bytecode Alliance, through cgo and the
// static library that wasmtime-go ships. It compiles with Cranelift,
// ahead of the run, and keeps compiled modules on disk in its own format
// (Module.Serialize).
type Wasmtime struct {
	cfg    Config
	engine *wasmtime.Engine
	// cacheDir is the folder of this engine's serialized modules ("" =
	// none): one per wasmtime version and engine configuration.
	cacheDir string
}

var (
	_ Engine = (*Wasmtime)(nil)
	_ Module = (*wasmtimeModule)(nil)
	_ Caller = (*wasmtimeCaller)(nil)
)

// errNoWasmtime is never returned by this build.
var errNoWasmtime error

func newWasmtime(cfg Config) (Engine, error) { return NewWasmtime(cfg) }

// NewWasmtime makes a wasmtime engine. With a CacheDir, compiled modules
// are serialized to a subfolder of it and loaded from there by later runs.
func NewWasmtime(cfg Config) (*Wasmtime, error) {
	if cfg.Interruptible && !storeLayoutKnown {
		return nil, errors.New("wasmtime: interruptible runs need the store layout of wasmtime-go v39")
	}
	wc := wasmtime.NewConfig()
	wc.SetEpochInterruption(cfg.Interruptible)
	wc.SetCraneliftOptLevel(wasmtime.OptLevelSpeed)
	w := &Wasmtime{cfg: cfg, engine: wasmtime.NewEngineWithConfig(wc)}
	if cfg.CacheDir != "" {
		dir := filepath.Join(cfg.CacheDir, wasmtimeCacheName(cfg))
		if err := ownDir(dir); err != nil {
			w.engine.Close()
			return nil, fmt.Errorf("compilation cache %s: %w", cfg.CacheDir, err)
		}
		w.cacheDir = dir
	}
	return w, nil
}

// wasmtimeCacheName names the cache subfolder after everything that makes
// a serialized module valid: the wasmtime release, the platform and the
// engine settings that change the code (epoch checks). wasmtime checks the
// same again when it loads a module, so a stale file is refused, not run.
func wasmtimeCacheName(cfg Config) string {
	settings := fmt.Sprintf("opt=speed;epoch=%t", cfg.Interruptible)
	sum := sha256.Sum256([]byte(settings))
	return fmt.Sprintf("wasmtime-%s-%s-%s-%s", wasmtimeVersion, goruntime.GOOS, goruntime.GOARCH, hex.EncodeToString(sum[:4]))
}

// ownDir makes dir (mode 0700) or checks that the existing one is a real
// folder of this user that nobody else can write to. Loading a serialized
// module runs the machine code in it, so the cache is only as trusted as
// the people who can write to it.
func ownDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a folder", dir)
	}
	return ownedByUs(dir, st)
}

// ownedByUs checks that a cache file or folder belongs to this process's
// user and is not writable by group or others.
func ownedByUs(path string, st os.FileInfo) error {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: cannot read its owner", path)
	}
	if int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("%s belongs to uid %d, not to this user (uid %d)", path, sys.Uid, os.Geteuid())
	}
	if st.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s is writable by others (mode %v)", path, st.Mode().Perm())
	}
	return nil
}

// Close implements Engine.
func (w *Wasmtime) Close(context.Context) error {
	w.engine.Close()
	return nil
}

// Compile implements Engine. With a cache, a module compiled before is
// loaded from the file named after its SHA-256; a file that is not ours or
// that wasmtime refuses is ignored and replaced.
func (w *Wasmtime) Compile(ctx context.Context, wasm []byte) (Module, error) {
	digest := moduleSum(ctx, wasm)
	var path string
	if w.cacheDir != "" {
		path = filepath.Join(w.cacheDir, hex.EncodeToString(digest[:])+".cwasm")
		if mod := w.load(path); mod != nil {
			return newWasmtimeModule(w, mod), nil
		}
	}
	mod, err := wasmtime.NewModule(w.engine, wasm)
	if err != nil {
		return nil, errors.New(wasmtimeMessage(err))
	}
	if path != "" {
		// A cache that cannot be written costs the next run a compile,
		// nothing more.
		_ = w.store(path, mod)
	}
	return newWasmtimeModule(w, mod), nil
}

// load returns the cached module at path, or nil if there is none we
// trust: a regular file (not a link) of this user that nobody else can
// write, in a folder of the same kind (see ownDir). wasmtime then checks
// that the file is its own format, of its version and for this engine's
// settings. The file is mapped, not read: loading the 8 MB form of a Go
// hello world takes a fraction of a millisecond, reading it and
// checksumming it tens (see RATIONALE.md).
func (w *Wasmtime) load(path string) *wasmtime.Module {
	st, err := os.Lstat(path)
	if err != nil || !st.Mode().IsRegular() || ownedByUs(path, st) != nil {
		return nil
	}
	mod, err := wasmtime.NewModuleDeserializeFile(w.engine, path)
	if err != nil {
		return nil
	}
	return mod
}

// store writes the serialized module through a temporary file renamed
// into place, so that a reader never sees half a file and a mapped file is
// never changed under its reader.
func (w *Wasmtime) store(path string, mod *wasmtime.Module) (err error) {
	payload, err := mod.Serialize()
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(payload); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// wasmtimeMessage makes a wasmtime error one line: its message and its
// causes, joined with ": ".
func wasmtimeMessage(err error) string {
	var parts []string
	for _, line := range strings.Split(err.Error(), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line == "Caused by:" || line == "Stack backtrace:" {
			continue
		}
		if strings.HasPrefix(line, "0:") || strings.HasPrefix(line, "1:") || strings.HasPrefix(line, "2:") {
			_, line, _ = strings.Cut(line, ":")
			line = strings.TrimSpace(line)
		}
		parts = append(parts, line)
	}
	if len(parts) == 0 {
		return "wasmtime: unknown error"
	}
	return strings.Join(parts, ": ")
}

type wasmtimeModule struct {
	w       *Wasmtime
	mod     *wasmtime.Module
	imports []Import
	exports []string
	// memMin is the minimum size in pages of the exported memory.
	memMin uint64
}

func newWasmtimeModule(w *Wasmtime, mod *wasmtime.Module) *wasmtimeModule {
	m := &wasmtimeModule{w: w, mod: mod}
	for _, im := range mod.Imports() {
		name := ""
		if n := im.Name(); n != nil {
			name = *n
		}
		m.imports = append(m.imports, Import{Module: im.Module(), Name: name, Kind: externKind(im.Type())})
	}
	for _, ex := range mod.Exports() {
		ty := ex.Type()
		if ty.FuncType() != nil {
			m.exports = append(m.exports, ex.Name())
		}
		if mt := ty.MemoryType(); mt != nil && mt.Minimum() > m.memMin {
			m.memMin = mt.Minimum()
		}
	}
	sort.Strings(m.exports)
	return m
}

func externKind(t *wasmtime.ExternType) string {
	switch {
	case t.FuncType() != nil:
		return "function"
	case t.MemoryType() != nil:
		return "memory"
	case t.TableType() != nil:
		return "table"
	case t.GlobalType() != nil:
		return "global"
	}
	return "unknown"
}

func (m *wasmtimeModule) Imports() []Import           { return m.imports }
func (m *wasmtimeModule) ExportedFunctions() []string { return m.exports }

func (m *wasmtimeModule) Close(context.Context) error {
	m.mod.Close()
	return nil
}

var wasmtimeKinds = map[ValueType]wasmtime.ValKind{
	I32: wasmtime.KindI32,
	I64: wasmtime.KindI64,
	F32: wasmtime.KindF32,
	F64: wasmtime.KindF64,
}

func toWasmtime(ts []ValueType) []*wasmtime.ValType {
	out := make([]*wasmtime.ValType, len(ts))
	for i, t := range ts {
		out[i] = wasmtime.NewValType(wasmtimeKinds[t])
	}
	return out
}

// run is the state of one Run that host functions share.
type run struct {
	ctx context.Context
	mem *wasmtime.Memory
	// stack is reused by every host call: a store runs one call at a time.
	stack []uint64
	// exit is set by Caller.Exit, trap by a host function that failed;
	// either ends the run through a wasmtime trap.
	exit *uint32
	trap *Trap
}

// exitSignal is the panic value of Caller.Exit.
type exitSignal struct{ code uint32 }

// Run implements Module. Each call gets its own store, so a module can be
// run many times, one after the other or at once.
func (m *wasmtimeModule) Run(ctx context.Context, o RunConfig) (uint32, error) {
	w := m.w
	store := wasmtime.NewStore(w.engine)
	defer store.Close()
	limit := w.cfg.MemoryPages
	if o.MemoryPages > 0 && (limit == 0 || o.MemoryPages < limit) {
		limit = o.MemoryPages
	}
	if limit > 0 {
		if m.memMin > uint64(limit) {
			// wazero's words, so that both engines say it alike.
			return 0, fmt.Errorf("section memory: min %d pages (%s) over limit of %d pages (%s)",
				m.memMin, pagesToUnit(m.memMin), limit, pagesToUnit(uint64(limit)))
		}
		store.Limiter(int64(limit)*65536, -1, -1, -1, -1)
	}
	var in *interrupter
	if w.cfg.Interruptible {
		in = newInterrupter(ctx, w.engine, store)
		defer in.close()
	}
	r := &run{ctx: ctx}
	n := 0
	for _, h := range o.Hosts {
		for _, f := range h.Funcs {
			n = max(n, len(f.Params), len(f.Results))
		}
	}
	r.stack = make([]uint64, n)
	linker := wasmtime.NewLinker(w.engine)
	defer linker.Close()
	for _, h := range o.Hosts {
		for _, f := range h.Funcs {
			ty := wasmtime.NewFuncType(toWasmtime(f.Params), toWasmtime(f.Results))
			if err := linker.Define(store, h.Name, f.Name, wasmtime.NewFunc(store, ty, r.hostFunc(h.Name, f))); err != nil {
				return 0, fmt.Errorf("host module %s: %s", h.Name, wasmtimeMessage(err))
			}
		}
	}
	inst, err := linker.Instantiate(store, m.mod)
	if err != nil {
		// Link errors, and traps in the start section or data segments.
		if code, err, ok := r.outcome(in, err); ok {
			return code, err
		}
		return 0, errors.New(wasmtimeMessage(err))
	}
	if ex := inst.GetExport(store, "memory"); ex != nil {
		r.mem = ex.Memory()
	}
	f := inst.GetFunc(store, o.Start)
	if f == nil {
		return 0, fmt.Errorf("no exported function %s", o.Start)
	}
	if o.Entered != nil {
		o.Entered()
	}
	if _, err := f.Call(store); err != nil {
		code, err, ok := r.outcome(in, err)
		if !ok {
			err = errors.New(wasmtimeMessage(err))
		}
		return code, err
	}
	return 0, nil
}

// outcome says how a run that returned err ended: an exit, a stop by its
// context, a host function's failure or a trap (ok), or none of these.
func (r *run) outcome(in *interrupter, err error) (code uint32, _ error, ok bool) {
	if r.exit != nil {
		return *r.exit, nil, true
	}
	if in != nil && in.fired() {
		if cause := context.Cause(r.ctx); cause != nil {
			return 0, fmt.Errorf("stopped: %w", cause), true
		}
	}
	if r.trap != nil {
		return 0, r.trap, true
	}
	var t *wasmtime.Trap
	if errors.As(err, &t) {
		return 0, wasmtimeTrap(t), true
	}
	return 0, err, false
}

// pagesToUnit writes a number of 64 KiB pages as wazero does.
func pagesToUnit(pages uint64) string {
	k := pages * 64
	switch {
	case k < 1024:
		return fmt.Sprintf("%d Ki", k)
	case k < 1024*1024:
		return fmt.Sprintf("%d Mi", k/1024)
	}
	return fmt.Sprintf("%d Gi", k/1024/1024)
}

// hostFunc adapts a HostFunc to wasmtime's calling convention.
func (r *run) hostFunc(module string, f HostFunc) func(*wasmtime.Caller, []wasmtime.Val) ([]wasmtime.Val, *wasmtime.Trap) {
	fn, results := f.Fn, f.Results
	return func(c *wasmtime.Caller, args []wasmtime.Val) (res []wasmtime.Val, trap *wasmtime.Trap) {
		stack := r.stack
		for i, a := range args {
			switch a.Kind() {
			case wasmtime.KindI32:
				stack[i] = uint64(uint32(a.I32()))
			case wasmtime.KindI64:
				stack[i] = uint64(a.I64())
			case wasmtime.KindF32:
				stack[i] = uint64(math.Float32bits(a.F32()))
			case wasmtime.KindF64:
				stack[i] = math.Float64bits(a.F64())
			}
		}
		defer func() {
			if p := recover(); p != nil {
				res = nil
				if e, ok := p.(exitSignal); ok {
					r.exit = &e.code
					trap = wasmtime.NewTrap("exit")
					return
				}
				t := &Trap{Func: module + "." + f.Name}
				if err, ok := p.(error); ok {
					t.Err, t.Reason = err, oneLine(err.Error())
				} else {
					t.Reason = oneLine(fmt.Sprint(p))
				}
				r.trap = t
				trap = wasmtime.NewTrap(t.Reason)
			}
		}()
		fn(r.ctx, &wasmtimeCaller{c: c, r: r}, stack)
		if len(results) == 0 {
			return nil, nil
		}
		res = make([]wasmtime.Val, len(results))
		for i, t := range results {
			switch t {
			case I32:
				res[i] = wasmtime.ValI32(int32(uint32(stack[i])))
			case I64:
				res[i] = wasmtime.ValI64(int64(stack[i]))
			case F32:
				res[i] = wasmtime.ValF32(math.Float32frombits(uint32(stack[i])))
			case F64:
				res[i] = wasmtime.ValF64(math.Float64frombits(stack[i]))
			}
		}
		return res, nil
	}
}

// wasmtimeReasons are wazero's words for wasmtime's trap codes, so that
// users see one form whichever engine runs the module.
var wasmtimeReasons = map[wasmtime.TrapCode]string{
	wasmtime.StackOverflow:          "stack overflow",
	wasmtime.MemoryOutOfBounds:      "out of bounds memory access",
	wasmtime.HeapMisaligned:         "unaligned atomic",
	wasmtime.TableOutOfBounds:       "invalid table access",
	wasmtime.IndirectCallToNull:     "invalid table access",
	wasmtime.BadSignature:           "indirect call type mismatch",
	wasmtime.IntegerOverflow:        "integer overflow",
	wasmtime.IntegerDivisionByZero:  "integer divide by zero",
	wasmtime.BadConversionToInteger: "invalid conversion to integer",
	wasmtime.UnreachableCodeReached: "unreachable",
}

// wasmtimeTrap turns a wasmtime trap into a *Trap named as wazero names
// it: the innermost guest function, "$N" when the module has no name for
// it.
func wasmtimeTrap(t *wasmtime.Trap) *Trap {
	out := &Trap{Err: t}
	if code := t.Code(); code != nil {
		out.Reason = wasmtimeReasons[*code]
	}
	if out.Reason == "" {
		out.Reason = oneLine(t.Message())
	}
	if frames := t.Frames(); len(frames) > 0 {
		if name := frames[0].FuncName(); name != nil && *name != "" {
			out.Func = *name
		} else {
			out.Func = fmt.Sprintf("$%d", frames[0].FuncIndex())
		}
	}
	return out
}

type wasmtimeCaller struct {
	c *wasmtime.Caller
	r *run
}

func (c *wasmtimeCaller) Memory() []byte {
	if c.r.mem == nil {
		return nil
	}
	return c.r.mem.UnsafeData(c.c)
}

func (c *wasmtimeCaller) Exit(code uint32) {
	panic(exitSignal{code})
}

// storeLayoutKnown is whether wasmtime.Store starts with its C pointer, as
// in wasmtime-go v39: the epoch callback is set on that pointer, which the
// bindings do not export.
var storeLayoutKnown = func() bool {
	t := reflect.TypeOf(wasmtime.Store{})
	return t.NumField() > 0 && t.Field(0).Name == "_ptr" && t.Field(0).Type.Kind() == reflect.Pointer && t.Field(0).Offset == 0
}()

// interrupter ends a run when its context is done: the store's epoch
// callback sees its flag, and an engine tick makes every running store
// look (the others go on).
type interrupter struct {
	mu   sync.Mutex
	flag *C.int32_t
	done bool
	stop func() bool
}

func newInterrupter(ctx context.Context, e *wasmtime.Engine, store *wasmtime.Store) *interrupter {
	in := &interrupter{flag: (*C.int32_t)(C.calloc(1, 4))}
	C.castellan_set_epoch_callback(*(*unsafe.Pointer)(unsafe.Pointer(store)), unsafe.Pointer(in.flag))
	goruntime.KeepAlive(store)
	store.SetEpochDeadline(1)
	in.stop = context.AfterFunc(ctx, func() {
		in.mu.Lock()
		defer in.mu.Unlock()
		if !in.done {
			atomic.StoreInt32((*int32)(unsafe.Pointer(in.flag)), 1)
			e.IncrementEpoch()
		}
	})
	return in
}

func (in *interrupter) fired() bool {
	return atomic.LoadInt32((*int32)(unsafe.Pointer(in.flag))) != 0
}

// close frees the flag; call it after the store is closed.
func (in *interrupter) close() {
	in.stop()
	in.mu.Lock()
	in.done = true
	C.free(unsafe.Pointer(in.flag))
	in.flag = nil
	in.mu.Unlock()
}

// moduleSum returns the sum WithModuleSum put in ctx, else wasm's.
func moduleSum(ctx context.Context, wasm []byte) [sha256.Size]byte {
	if sum, ok := ModuleSum(ctx); ok {
		return sum
	}
	return sha256.Sum256(wasm)
}
