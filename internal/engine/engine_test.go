package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

const header = "\x00asm\x01\x00\x00\x00"

// exitModule imports h.exit(i32) and calls it with 7 from _start.
var exitModule = []byte(header +
	"\x01\x08\x02\x60\x01\x7f\x00\x60\x00\x00" + // types: (i32)->(), ()->()
	"\x02\x0a\x01\x01h\x04exit\x00\x00" + // import h.exit
	"\x03\x02\x01\x01" + // one function of type 1
	"\x07\x0a\x01\x06_start\x00\x01" + // export _start
	"\x0a\x08\x01\x06\x00\x41\x07\x10\x00\x0b") // i32.const 7; call 0

// trapModule's _start executes unreachable.
var trapModule = []byte(header +
	"\x01\x04\x01\x60\x00\x00" +
	"\x03\x02\x01\x00" +
	"\x07\x0a\x01\x06_start\x00\x00" +
	"\x0a\x05\x01\x03\x00\x00\x0b")

// spinModule's _start loops for ever.
var spinModule = []byte(header +
	"\x01\x04\x01\x60\x00\x00" +
	"\x03\x02\x01\x00" +
	"\x07\x0a\x01\x06_start\x00\x00" +
	"\x0a\x09\x01\x07\x00\x03\x40\x0c\x00\x0b\x0b") // loop br 0 end

// bigMemModule exports a memory of at least 17 pages and an empty _start.
var bigMemModule = []byte(header +
	"\x01\x04\x01\x60\x00\x00" +
	"\x03\x02\x01\x00" +
	"\x05\x03\x01\x00\x11" +
	"\x07\x13\x02\x06_start\x00\x00\x06memory\x02\x00" +
	"\x0a\x04\x01\x02\x00\x0b")

// engines are the engines of this build: wazero, and wasmtime in builds
// with the tag. Tests that construct an engine run on each.
func engines() []string {
	if WasmtimeBuilt {
		return []string{NameWazero, NameWasmtime}
	}
	return []string{NameWazero}
}

func newEngine(t *testing.T, name string, cfg Config) Engine {
	t.Helper()
	eng, err := New(name, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close(context.Background()) })
	return eng
}

func TestExitAndTrap(t *testing.T) {
	for _, name := range engines() {
		t.Run(name, func(t *testing.T) { testExitAndTrap(t, newEngine(t, name, Config{CacheDir: t.TempDir()})) })
	}
}

func testExitAndTrap(t *testing.T, eng Engine) {
	ctx := context.Background()
	mod, err := eng.Compile(ctx, exitModule)
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close(ctx)
	if im := mod.Imports(); len(im) != 1 || im[0] != (Import{Module: "h", Name: "exit", Kind: "function"}) {
		t.Errorf("imports %v", im)
	}
	if ex := mod.ExportedFunctions(); len(ex) != 1 || ex[0] != "_start" {
		t.Errorf("exports %v", ex)
	}
	host := HostModule{Name: "h", Funcs: []HostFunc{{
		Name:   "exit",
		Params: []ValueType{I32},
		Fn:     func(ctx context.Context, c Caller, stack []uint64) { c.Exit(uint32(stack[0])) },
	}}}
	// Twice, to check that a compiled module runs more than once.
	for i := 0; i < 2; i++ {
		code, err := mod.Run(ctx, RunConfig{Start: "_start", Hosts: []HostModule{host}})
		if err != nil || code != 7 {
			t.Fatalf("run %d: code %d, err %v", i, code, err)
		}
	}
	tm, err := eng.Compile(ctx, trapModule)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tm.Run(ctx, RunConfig{Start: "_start"})
	var trap *Trap
	if !errors.As(err, &trap) || trap.Reason != "unreachable" || strings.Contains(err.Error(), "\n") {
		t.Fatalf("err %v", err)
	}
}

func TestCompileErrorsAreOneLine(t *testing.T) {
	for _, name := range engines() {
		eng := newEngine(t, name, Config{})
		for _, b := range [][]byte{nil, []byte("junk"), []byte(header + "\x01\x05"), exitModule[:len(exitModule)-3]} {
			if _, err := eng.Compile(context.Background(), b); err == nil || strings.Contains(err.Error(), "\n") {
				t.Errorf("%s: %q: %v", name, b, err)
			}
		}
	}
}

func TestUnknownEngine(t *testing.T) {
	_, err := New("v8", Config{})
	if err == nil || err.Error() != `unknown engine "v8" (want wazero or wasmtime)` {
		t.Errorf("err %v", err)
	}
}

// TestHostError checks that a host function failing with a Go error ends
// the run with a *Trap that wraps the error and names the host function.
func TestHostError(t *testing.T) {
	errBoom := errors.New("boom")
	for _, name := range engines() {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			mod, err := newEngine(t, name, Config{}).Compile(ctx, exitModule)
			if err != nil {
				t.Fatal(err)
			}
			defer mod.Close(ctx)
			host := HostModule{Name: "h", Funcs: []HostFunc{{
				Name:   "exit",
				Params: []ValueType{I32},
				Fn:     func(context.Context, Caller, []uint64) { panic(fmt.Errorf("wrapped: %w", errBoom)) },
			}}}
			_, err = mod.Run(ctx, RunConfig{Start: "_start", Hosts: []HostModule{host}})
			var trap *Trap
			if !errors.As(err, &trap) || !errors.Is(err, errBoom) || trap.Func != "h.exit" || trap.Reason != "wrapped: boom" {
				t.Fatalf("err %v (%#v)", err, trap)
			}
		})
	}
}

// TestMemoryLimitPages checks that a module whose memory starts above the
// run's limit is refused before it runs, in the same words on each engine.
func TestMemoryLimitPages(t *testing.T) {
	for _, name := range engines() {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			mod, err := newEngine(t, name, Config{}).Compile(ctx, bigMemModule)
			if err != nil {
				t.Fatal(err)
			}
			defer mod.Close(ctx)
			_, err = mod.Run(ctx, RunConfig{Start: "_start", MemoryPages: 16})
			want := "section memory: min 17 pages (1 Mi) over limit of 16 pages (1 Mi)"
			if err == nil || err.Error() != want {
				t.Errorf("err %v, want %q", err, want)
			}
			if _, err := mod.Run(ctx, RunConfig{Start: "_start", MemoryPages: 17}); err != nil {
				t.Errorf("at the limit: %v", err)
			}
		})
	}
}

// TestInterruptible checks that an interruptible engine stops a guest in a
// hot loop when the context is done, and says why.
func TestInterruptible(t *testing.T) {
	for _, name := range engines() {
		t.Run(name, func(t *testing.T) {
			mod, err := newEngine(t, name, Config{Interruptible: true}).Compile(context.Background(), spinModule)
			if err != nil {
				t.Fatal(err)
			}
			defer mod.Close(context.Background())
			errStop := errors.New("time is up")
			ctx, cancel := context.WithCancelCause(context.Background())
			time.AfterFunc(50*time.Millisecond, func() { cancel(errStop) })
			done := make(chan error, 1)
			go func() {
				_, err := mod.Run(ctx, RunConfig{Start: "_start"})
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, errStop) || err.Error() != "stopped: time is up" {
					t.Errorf("err %v", err)
				}
			case <-time.After(2 * time.Minute):
				t.Fatal("the guest was not stopped")
			}
		})
	}
}

func TestFrameName(t *testing.T) {
	for _, tc := range []struct{ frame, want string }{
		{"main.main()", "main.main"},
		{".explode()", "explode"},
		{".$3(i32,i64)i32", "$3"},
		{"main.(*T).run(i32)(i32,i32)", "main.(*T).run"},
		{"runtime.gopanic(i32)", "runtime.gopanic"},
	} {
		_, err := exitOrTrap(context.Background(), errors.New("wasm error: unreachable\nwasm stack trace:\n\t"+tc.frame+"\n\t\tmore"))
		var trap *Trap
		if !errors.As(err, &trap) || trap.Func != tc.want {
			t.Errorf("%q: func %q, want %q", tc.frame, trap.Func, tc.want)
		}
	}
}

// trapBody is a module whose _start (function 0, no name section) runs
// code, with one page of memory.
func trapBody(code string) []byte {
	body := "\x00" + code + "\x0b"
	return []byte(header +
		"\x01\x04\x01\x60\x00\x00" +
		"\x03\x02\x01\x00" +
		"\x05\x03\x01\x00\x01" +
		"\x07\x0a\x01\x06_start\x00\x00" +
		"\x0a" + string(rune(len(body)+2)) + "\x01" + string(rune(len(body))) + body)
}

// TestTrapReasons checks that each engine names traps in the same words.
func TestTrapReasons(t *testing.T) {
	tests := []struct{ name, code, reason string }{
		{"unreachable", "\x00", "unreachable"},
		{"out of bounds", "\x41\x80\x80\x08\x28\x02\x00\x1a", "out of bounds memory access"}, // i32.load at 128 KiB
		{"divide by zero", "\x41\x01\x41\x00\x6d\x1a", "integer divide by zero"},
		{"overflow", "\x41\x80\x80\x80\x80\x78\x41\x7f\x6d\x1a", "integer overflow"}, // MinInt32 / -1
	}
	for _, name := range engines() {
		eng := newEngine(t, name, Config{})
		for _, tt := range tests {
			ctx := context.Background()
			mod, err := eng.Compile(ctx, trapBody(tt.code))
			if err != nil {
				t.Fatalf("%s %s: %v", name, tt.name, err)
			}
			_, err = mod.Run(ctx, RunConfig{Start: "_start"})
			mod.Close(ctx)
			var trap *Trap
			if !errors.As(err, &trap) || trap.Reason != tt.reason || trap.Func != "$0" {
				t.Errorf("%s %s: err %v (%+v), want a trap in $0: %s", name, tt.name, err, trap, tt.reason)
			}
		}
	}
}

// TestRunsShareNothing: runs of one compiled module, at once and one after
// the other, each call their own host functions (wazero runs them in one
// shared runtime whose host functions dispatch to the run's); a run with
// host modules of another shape, and runs with their own memory limits,
// still work.
func TestRunsShareNothing(t *testing.T) {
	for _, name := range engines() {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			eng := newEngine(t, name, Config{})
			mod, err := eng.Compile(ctx, exitModule)
			if err != nil {
				t.Fatal(err)
			}
			defer mod.Close(ctx)
			// Each run's h.exit exits with the run's own code, not the
			// module's 7.
			hostOf := func(code uint32) HostModule {
				return HostModule{Name: "h", Funcs: []HostFunc{{
					Name: "exit", Params: []ValueType{I32},
					Fn: func(ctx context.Context, c Caller, stack []uint64) { c.Exit(code + uint32(stack[0])) },
				}}}
			}
			var wg sync.WaitGroup
			errs := make(chan error, 40)
			for i := range 40 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					o := RunConfig{Start: "_start", Hosts: []HostModule{hostOf(uint32(100 * i))}}
					if i%4 == 3 {
						o.MemoryPages = uint32(1 + i%3) // runs with limits of their own
					}
					if code, err := mod.Run(ctx, o); err != nil || code != uint32(100*i+7) {
						errs <- fmt.Errorf("run %d: code %d, err %v; want %d", i, code, err, 100*i+7)
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			// Host modules of another shape (an extra function) run too.
			other := hostOf(1000)
			other.Funcs = append(other.Funcs, HostFunc{Name: "unused", Fn: func(context.Context, Caller, []uint64) {}})
			if code, err := mod.Run(ctx, RunConfig{Start: "_start", Hosts: []HostModule{other}}); err != nil || code != 1007 {
				t.Fatalf("run with other host modules: code %d, err %v", code, err)
			}
		})
	}
}
