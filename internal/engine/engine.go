// Package engine is the small, engine-neutral layer between Castellan's
// WASI implementation (internal/wasi) and the WebAssembly engine that runs
// the workload.
//
// Host functions see linear memory as a byte slice and their parameters and
// results as a []uint64 stack, nothing more, so the WASI code never imports
// an engine. There are two implementations: wazero (pure Go, the default,
// see wazero.go) and wasmtime (through cgo, only in builds with the build
// tag "wasmtime", see wasmtime.go). New picks one by name.
package engine

import (
	"context"
	"crypto/sha256"
	"fmt"
)

// ValueType is the type of a host function parameter or result.
type ValueType byte

// The WebAssembly number types host functions use.
const (
	I32 ValueType = iota + 1
	I64
	F32
	F64
)

func (v ValueType) String() string {
	switch v {
	case I32:
		return "i32"
	case I64:
		return "i64"
	case F32:
		return "f32"
	case F64:
		return "f64"
	}
	return fmt.Sprintf("valuetype(%d)", byte(v))
}

// Caller is what a host function may do to the module that called it.
type Caller interface {
	// Memory is a view of the whole linear memory. Fetch it again after
	// anything that may grow memory; the view does not follow growth.
	Memory() []byte
	// Exit ends the module with the given status. It never returns.
	Exit(code uint32)
}

// HostFunc is a function the engine exports to guests. Fn reads its
// parameters from stack[:len(Params)] and writes its results to
// stack[:len(Results)] (the stack is at least as long as the longer).
type HostFunc struct {
	Name    string
	Params  []ValueType
	Results []ValueType
	Fn      func(ctx context.Context, c Caller, stack []uint64)
}

// HostModule is a named set of host functions, such as
// "wasi_snapshot_preview1".
type HostModule struct {
	Name  string
	Funcs []HostFunc
}

// Import is one import of a compiled module.
type Import struct {
	Module, Name string
	// Kind is "function", "memory", "table" or "global".
	Kind string
}

// Config sets up an engine.
type Config struct {
	// CacheDir is a folder for compiled code; "" keeps no disk cache.
	CacheDir string
	// MemoryPages caps linear memory in 64 KiB pages; 0 is the engine's
	// default (65536 pages, 4 GiB).
	MemoryPages uint32
	// Interruptible makes the module stop when the context passed to Run
	// is done, at some cost to the speed of hot loops. Without it, only
	// host calls notice the context.
	Interruptible bool
}

// RunConfig describes one run of a compiled module.
type RunConfig struct {
	// Start is the exported function to call, "_start" for commands.
	Start string
	Hosts []HostModule
	// MemoryPages caps linear memory for this run, if lower than the
	// engine's limit (0: the engine's).
	MemoryPages uint32
	// Entered, if set, is called when the module is instantiated and its
	// start function is about to run (for measuring start-up).
	Entered func()
}

// Names of the engines New knows.
const (
	NameWazero   = "wazero"
	NameWasmtime = "wasmtime"
)

// New makes the engine called name: "wazero" (also for "") or "wasmtime",
// which exists only in builds with the build tag wasmtime.
func New(name string, cfg Config) (Engine, error) {
	if err := Available(name); err != nil {
		return nil, err
	}
	if name == NameWasmtime {
		return newWasmtime(cfg)
	}
	return NewWazero(cfg)
}

// Available says in one line why New cannot make the engine called name:
// an unknown name, or wasmtime in a build without it. It is nil if New can.
func Available(name string) error {
	switch name {
	case "", NameWazero:
		return nil
	case NameWasmtime:
		if !WasmtimeBuilt {
			return errNoWasmtime
		}
		return nil
	}
	return fmt.Errorf("unknown engine %q (want %s or %s)", name, NameWazero, NameWasmtime)
}

// Engine compiles and runs modules.
type Engine interface {
	// Compile validates and compiles a module. Errors are one line.
	Compile(ctx context.Context, wasm []byte) (Module, error)
	// Close releases everything the engine holds.
	Close(ctx context.Context) error
}

// Module is a compiled module.
type Module interface {
	Imports() []Import
	// ExportedFunctions lists the names of exported functions.
	ExportedFunctions() []string
	// Run instantiates the module with the given host modules and calls
	// its exported function start. A call to Caller.Exit ends it with that
	// status and a nil error; a trap gives a *Trap.
	Run(ctx context.Context, o RunConfig) (exitCode uint32, err error)
	Close(ctx context.Context) error
}

// Trap is a runtime error of the guest: unreachable, out-of-bounds access,
// stack overflow, or a host function that failed with a Go error.
type Trap struct {
	// Func is the guest function that trapped, from the name section, or
	// "" when unknown.
	Func string
	// Reason is the engine's short description, e.g. "unreachable".
	Reason string
	// Err is the underlying error (a host function's own error, if any).
	Err error
}

func (t *Trap) Error() string {
	if t.Func == "" {
		return "trap: " + t.Reason
	}
	return "trap in function " + t.Func + ": " + t.Reason
}

func (t *Trap) Unwrap() error { return t.Err }

// moduleSumKey is the context key of WithModuleSum.
type moduleSumKey struct{}

// WithModuleSum tells Engine.Compile the SHA-256 of the module it is given,
// which the caller computed from those very bytes, so that an engine
// keying its cache by it (wasmtime) does not hash a large module again.
func WithModuleSum(ctx context.Context, sum [sha256.Size]byte) context.Context {
	return context.WithValue(ctx, moduleSumKey{}, sum)
}

// ModuleSum returns the sum WithModuleSum put in ctx, if any.
func ModuleSum(ctx context.Context) ([sha256.Size]byte, bool) {
	sum, ok := ctx.Value(moduleSumKey{}).([sha256.Size]byte)
	return sum, ok
}
