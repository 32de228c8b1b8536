package engine

import (
	"context"
	"errors"
	"strings"
	"testing"
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

func TestWazeroExitAndTrap(t *testing.T) {
	ctx := context.Background()
	eng, err := NewWazero(Config{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close(ctx)
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
	eng, err := NewWazero(Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{nil, []byte("junk"), []byte(header + "\x01\x05"), exitModule[:len(exitModule)-3]} {
		if _, err := eng.Compile(context.Background(), b); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v", b, err)
		}
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
