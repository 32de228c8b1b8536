package runtime

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/fixtures"
)

// noStart is a valid module with no _start: (module (func (export "main"))).
var noStart = []byte{
	0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
	0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section: () -> ()
	0x03, 0x02, 0x01, 0x00, // function section
	0x07, 0x08, 0x01, 0x04, 'm', 'a', 'i', 'n', 0x00, 0x00, // export "main"
	0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code
}

func TestBadModules(t *testing.T) {
	hello := readWasm(t, fixtures.Go(t, "hello"))
	tests := []struct {
		name string
		wasm []byte
		want string
	}{
		{"text", []byte("#!/bin/sh\necho hi\n"), "app.wasm: not a WebAssembly module (bad magic number)"},
		{"empty", nil, "app.wasm: not a WebAssembly module (bad magic number)"},
		{"component", []byte("\x00asm\x0d\x00\x01\x00"), "app.wasm: not a WebAssembly 1.0 module (version is not 1; components are not supported)"},
		{"truncated", hello[:len(hello)/2], "app.wasm: truncated or malformed module: "},
		{"no start", noStart, "app.wasm: no _start function: it is not a WASI command module"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, check := range []func() error{
				func() error { return Check(context.Background(), "app.wasm", tt.wasm, "") },
				func() error {
					_, err := Run(context.Background(), Options{Name: "app.wasm", Wasm: tt.wasm})
					return err
				},
			} {
				err := check()
				if err == nil {
					t.Fatal("no error")
				}
				msg := err.Error()
				if !strings.HasPrefix(msg, tt.want) || strings.Contains(msg, "\n") {
					t.Errorf("error %q, want one line starting %q", msg, tt.want)
				}
				if !strings.HasSuffix(tt.want, ": ") && msg != tt.want {
					t.Errorf("error %q, want %q", msg, tt.want)
				}
			}
		})
	}
}

func TestMissingImport(t *testing.T) {
	wasm := readWasm(t, fixtures.C(t, "missing"))
	want := "app.wasm: imports env.foo (function), which castellan does not provide"
	if err := Check(context.Background(), "app.wasm", wasm, ""); err == nil || err.Error() != want {
		t.Errorf("Check: %v, want %q", err, want)
	}
	if _, err := Run(context.Background(), Options{Name: "app.wasm", Wasm: wasm}); err == nil || err.Error() != want {
		t.Errorf("Run: %v, want %q", err, want)
	}
}

func TestTrap(t *testing.T) {
	r := run(t, fixtures.C(t, "trap"), Options{})
	var trap *TrapError
	if !errors.As(r.err, &trap) {
		t.Fatalf("err %v (%T), want a TrapError", r.err, r.err)
	}
	want := "app.wasm: trap in function explode: unreachable"
	if r.err.Error() != want {
		t.Errorf("error %q, want %q", r.err, want)
	}
	if r.stdout != "about to trap\n" {
		t.Errorf("stdout %q", r.stdout)
	}
}

func TestMemoryLimit(t *testing.T) {
	// 512 pages = 32 MiB: the Go runtime starts, then runs out.
	r := run(t, fixtures.Go(t, "memhog"), Options{MemoryPages: 512})
	if r.err == nil && r.code == 0 {
		t.Fatalf("memhog exited 0 under a memory limit; stdout %q", r.stdout)
	}
	if r.err != nil && strings.Contains(r.err.Error(), "\n") {
		t.Errorf("multi-line error %q", r.err)
	}
	if !strings.Contains(r.stderr, "out of memory") && r.err == nil {
		t.Errorf("exit %d without an out of memory message; stderr %q", r.code, r.stderr)
	}
	// The limit also comes from the config.
	cfg := config.Default()
	cfg.Limits.MemoryPages = 512
	r2 := run(t, fixtures.Go(t, "memhog"), Options{Config: cfg})
	if r2.err == nil && r2.code == 0 {
		t.Fatal("memhog exited 0 under a config memory limit")
	}
}

func TestCheckCache(t *testing.T) {
	dir := t.TempDir()
	wasm := readWasm(t, fixtures.Go(t, "hello"))
	for i := 0; i < 2; i++ {
		if err := Check(context.Background(), "hello.wasm", wasm, dir); err != nil {
			t.Fatal(err)
		}
	}
	r := run(t, fixtures.Go(t, "hello"), Options{CacheDir: dir})
	if r.err != nil || !strings.Contains(r.stdout, "hello from a keep") {
		t.Fatalf("run with cache: %v %q", r.err, r.stdout)
	}
}

// TestCompileNotice: a module that is not in the compilation cache is
// announced once, before it is compiled; the next run loads it quietly.
// Check fills the cache too, and no cache means no notice.
func TestCompileNotice(t *testing.T) {
	hello := readWasm(t, fixtures.Go(t, "hello"))
	runLogged := func(dir string, wasm []byte) []string {
		t.Helper()
		var notes []string
		_, err := Run(context.Background(), Options{Name: "hello.wasm", Wasm: wasm, CacheDir: dir, Stdout: io.Discard, Stderr: io.Discard,
			Log: func(f string, a ...any) { notes = append(notes, fmt.Sprintf(f, a...)) }})
		if err != nil {
			t.Fatal(err)
		}
		return notes
	}
	dir := t.TempDir()
	if n := runLogged(dir, hello); len(n) != 1 || n[0] != "compiling hello.wasm (first run; cached for next time)" {
		t.Errorf("first run: notices %q", n)
	}
	if n := runLogged(dir, hello); len(n) != 0 {
		t.Errorf("second run: notices %q", n)
	}
	sum := sha256.Sum256(hello)
	if !compiledSum(dir, sum, false) || compiledSum(dir, sum, true) || compiledSum("", sum, false) {
		t.Error("compiledSum does not tell the cached module from the others")
	}
	checked := t.TempDir()
	if err := Check(context.Background(), "hello.wasm", hello, checked); err != nil {
		t.Fatal(err)
	}
	if n := runLogged(checked, hello); len(n) != 0 {
		t.Errorf("run after Check: notices %q", n)
	}
	if n := runLogged("", hello); len(n) != 0 {
		t.Errorf("run without a cache: notices %q", n)
	}
}

// TestModuleDigestNotRehashed: Run takes the caller's digest of the module
// for its cache marks instead of hashing the module again (castellan run
// and a keep hashed it already); a digest that is not of the bytes, which
// a caller must never pass, shows it.
func TestModuleDigestNotRehashed(t *testing.T) {
	hello := readWasm(t, fixtures.C(t, "hello"))
	dir := t.TempDir()
	other := sha256.Sum256([]byte("not the module"))
	_, err := Run(context.Background(), Options{Name: "hello.wasm", Wasm: hello, CacheDir: dir, Stdout: io.Discard, Stderr: io.Discard,
		ModuleDigest: fmt.Sprintf("sha256:%x", other)})
	if err != nil {
		t.Fatal(err)
	}
	if !compiledSum(dir, other, false) || compiledSum(dir, sha256.Sum256(hello), false) {
		t.Fatal("the compiled mark is not the one of the caller's digest")
	}
	// Without a digest, Run hashes the bytes itself.
	if _, err := Run(context.Background(), Options{Name: "hello.wasm", Wasm: hello, CacheDir: dir, Stdout: io.Discard, Stderr: io.Discard}); err != nil {
		t.Fatal(err)
	}
	if !compiledSum(dir, sha256.Sum256(hello), false) {
		t.Fatal("no compiled mark for the module's own digest")
	}
}

func TestInterrupt(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	o := Options{Name: "spin.wasm", Wasm: readWasm(t, fixtures.Go(t, "spin")), Interruptible: true}
	done := make(chan error, 1)
	go func() {
		_, err := Run(ctx, o)
		done <- err
	}()
	cancel()
	if err := <-done; err == nil {
		t.Fatal("spin ended without error after cancel")
	}
}

func FuzzCheck(f *testing.F) {
	f.Add([]byte("\x00asm\x01\x00\x00\x00"))
	f.Add(noStart)
	f.Add([]byte("\x00asm\x01\x00\x00\x00\x01\x05\x01\x60\x01\x7f"))
	f.Add(tableModule([]byte{1, 0x70, 0, 0}, 1)) // a table to bound
	f.Fuzz(func(t *testing.T, b []byte) {
		err := Check(context.Background(), "fuzz.wasm", b, "")
		if err != nil && (strings.Contains(err.Error(), "\n") || !strings.HasPrefix(err.Error(), "fuzz.wasm: ")) {
			t.Errorf("bad error %q", err)
		}
	})
}

func TestPrecheckHugeVectors(t *testing.T) {
	head := "\x00asm\x01\x00\x00\x00"
	for name, body := range map[string]string{
		"params":   "\x01\x08\x01\x60\xff\xff\xff\xff\x0f\x00",
		"elements": "\x09\x09\x01\x00\x41\x00\x0b\xff\xff\xff\x0f",
		"data":     "\x0b\x09\x01\x00\x41\x00\x0b\xff\xff\xff\x0f",
		"locals":   "\x0a\x0a\x01\x08\x02\xff\xff\x03\x7f\x01\x7f\x0b",
		"names":    "\x00\x0c\x04name\x01\x05\xff\xff\xff\xff\x0f",
		"section":  "\x01\xff\xff\xff\x0f\x00",
	} {
		err := Check(context.Background(), "huge.wasm", []byte(head+body), "")
		if err == nil || !strings.HasPrefix(err.Error(), "huge.wasm: truncated or malformed module: ") {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Real modules pass the pre-check.
	for _, p := range []string{fixtures.Go(t, "hello"), fixtures.C(t, "hello")} {
		if err := precheck(readWasm(t, p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

func TestMemoryLimitBelowMinimum(t *testing.T) {
	// A Go module asks for more than 2 pages at start.
	r := run(t, fixtures.Go(t, "hello"), Options{MemoryPages: 2})
	if r.err == nil || !strings.HasPrefix(r.err.Error(), "app.wasm: the module needs more memory than the limit: ") || strings.Contains(r.err.Error(), "\n") {
		t.Fatalf("err %v, code %d", r.err, r.code)
	}
}
