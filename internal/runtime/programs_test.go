package runtime

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/engine"
	"github.com/castellan-dev/castellan/internal/fixtures"
)

func digestOf(wasm []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(wasm)) }

// runLease runs a leased program and returns its stdout.
func runLease(t *testing.T, l *Lease) string {
	t.Helper()
	var out bytes.Buffer
	code, err := l.Run(context.Background(), Options{Stdout: &out, Stderr: &out})
	if err != nil || code != 0 {
		t.Fatalf("run: %d %v\n%s", code, err, out.String())
	}
	return out.String()
}

func TestProgramsReuse(t *testing.T) {
	wasm := readWasm(t, fixtures.C(t, "hello"))
	c := &Programs{}
	defer c.Close()
	ctx := context.Background()
	l1, err := c.Get(ctx, "", "hello.wasm", digestOf(wasm), wasm, false)
	if err != nil {
		t.Fatal(err)
	}
	out1 := runLease(t, l1)
	l1.Release()
	l2, err := c.Get(ctx, "", "hello.wasm", digestOf(wasm), wasm, false)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release()
	if l2.Program != l1.Program {
		t.Error("the second Get compiled the module again")
	}
	if out2 := runLease(t, l2); out2 != out1 || !strings.Contains(out2, "hello from C") {
		t.Errorf("outputs %q and %q", out1, out2)
	}
	// Another setting is another program.
	l3, err := c.Get(ctx, "", "hello.wasm", digestOf(wasm), wasm, true)
	if err != nil {
		t.Fatal(err)
	}
	defer l3.Release()
	if l3.Program == l2.Program {
		t.Error("an interruptible program was served from a plain one")
	}
	if n, size := c.Len(); n != 2 || size != 2*int64(len(wasm)) {
		t.Errorf("Len = %d, %d", n, size)
	}
}

func TestProgramsConcurrentGetCompilesOnce(t *testing.T) {
	wasm := readWasm(t, fixtures.C(t, "hello"))
	c := &Programs{}
	defer c.Close()
	var wg sync.WaitGroup
	progs := make([]*Program, 8)
	for i := range progs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := c.Get(context.Background(), "", "hello.wasm", digestOf(wasm), wasm, false)
			if err != nil {
				t.Error(err)
				return
			}
			progs[i] = l.Program
			l.Release()
		}()
	}
	wg.Wait()
	for _, p := range progs[1:] {
		if p != progs[0] {
			t.Fatal("concurrent Gets of one module compiled it more than once")
		}
	}
}

func TestProgramsEviction(t *testing.T) {
	hello := readWasm(t, fixtures.C(t, "hello"))
	echo := readWasm(t, fixtures.C(t, "echo"))
	ctx := context.Background()
	t.Run("count", func(t *testing.T) {
		c := &Programs{MaxPrograms: 1}
		defer c.Close()
		held, err := c.Get(ctx, "", "hello.wasm", digestOf(hello), hello, false)
		if err != nil {
			t.Fatal(err)
		}
		l, err := c.Get(ctx, "", "echo.wasm", digestOf(echo), echo, false)
		if err != nil {
			t.Fatal(err)
		}
		l.Release()
		if n, _ := c.Len(); n != 1 {
			t.Fatalf("%d programs kept, want 1", n)
		}
		// The evicted program still runs for the lease that holds it, and
		// is closed when it is released.
		runLease(t, held)
		p := held.Program
		held.Release()
		held.Release()
		if held.e.p != nil {
			t.Error("an evicted program was not closed at its last release")
		}
		again, err := c.Get(ctx, "", "hello.wasm", digestOf(hello), hello, false)
		if err != nil {
			t.Fatal(err)
		}
		defer again.Release()
		if again.Program == p {
			t.Error("an evicted program was served again")
		}
		runLease(t, again)
	})
	t.Run("bytes", func(t *testing.T) {
		c := &Programs{MaxBytes: int64(len(hello) + len(echo) - 1)}
		defer c.Close()
		for _, w := range [][]byte{hello, echo} {
			l, err := c.Get(ctx, "", "m.wasm", digestOf(w), w, false)
			if err != nil {
				t.Fatal(err)
			}
			l.Release()
		}
		if n, size := c.Len(); n != 1 || size != int64(len(echo)) {
			t.Errorf("Len = %d, %d; want the newest only", n, size)
		}
	})
	t.Run("too large to keep", func(t *testing.T) {
		c := &Programs{MaxBytes: int64(len(hello) - 1)}
		defer c.Close()
		l, err := c.Get(ctx, "", "hello.wasm", digestOf(hello), hello, false)
		if err != nil {
			t.Fatal(err)
		}
		runLease(t, l)
		l.Release()
		if n, _ := c.Len(); n != 0 {
			t.Errorf("a module over MaxBytes was kept")
		}
		if l.e.p != nil {
			t.Error("a program not kept was not closed at its release")
		}
	})
}

func TestProgramsRefuse(t *testing.T) {
	hello := readWasm(t, fixtures.C(t, "hello"))
	echo := readWasm(t, fixtures.C(t, "echo"))
	c := &Programs{}
	defer c.Close()
	ctx := context.Background()
	for _, tc := range []struct {
		name, digest string
		wasm         []byte
		want         string
	}{
		{"another module's digest", digestOf(echo), hello, "app.wasm: module digest mismatch: the bytes have " + digestOf(hello) + ", not " + digestOf(echo)},
		{"no algorithm", fmt.Sprintf("%x", sha256.Sum256(hello)), hello, "not sha256: and 64 hex digits"},
		{"short", "sha256:abcd", hello, "not sha256: and 64 hex digits"},
		{"upper case", strings.ToUpper(digestOf(hello)), hello, "not sha256: and 64 hex digits"},
		{"not hex", "sha256:" + strings.Repeat("zz", 32), hello, "64 lowercase hex digits"},
		{"bad module", digestOf([]byte("\x00asm\x01\x00\x00\x00\xff")), []byte("\x00asm\x01\x00\x00\x00\xff"), "app.wasm: truncated or malformed module"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := c.Get(ctx, "", "app.wasm", tc.digest, tc.wasm, false)
			if err == nil {
				l.Release()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want %q", err, tc.want)
			}
		})
	}
	// Nothing was filed under the digest it was wrongly offered with.
	if n, _ := c.Len(); n != 0 {
		t.Errorf("%d programs kept after refusals", n)
	}
	l, err := c.Get(ctx, "", "echo.wasm", digestOf(echo), echo, false)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	var out bytes.Buffer
	l.Run(ctx, Options{Stdout: &out, Stderr: &out}) // echo fails without its socket
	if strings.Contains(out.String(), "hello from C") || out.Len() == 0 {
		t.Errorf("echo's digest served another program: %q", out.String())
	}
}

// TestProgramsTamperedDiskEntry corrupts every file of the disk cache under
// a Programs: the engine must refuse the entries and compile the module
// again, never run the changed code. (This catches corruption; the disk
// cache is no defence against a writer who recomputes the engine's
// checksum, which is why only insecure keeps use one: docs/host.md.)
//
// wasmtime's cache is trusted by the owner and mode of its files, not by
// their content (its files are mapped, not read: see RATIONALE.md), and it
// runs a changed file: the test is for wazero, which checksums its entries.
func TestProgramsTamperedDiskEntry(t *testing.T) {
	if defaultEngine != engine.NameWazero {
		t.Skipf("the %s disk cache is trusted by owner and mode, not content", defaultEngine)
	}
	hello := readWasm(t, fixtures.C(t, "hello"))
	dir := t.TempDir()
	ctx := context.Background()
	c := &Programs{CacheDir: dir}
	l, err := c.Get(ctx, "", "hello.wasm", digestOf(hello), hello, false)
	if err != nil {
		t.Fatal(err)
	}
	want := runLease(t, l)
	l.Release()
	c.Close()
	tampered := 0
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.Contains(path, compiledMarks) {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil || len(b) < 64 {
			return err
		}
		for i := len(b) / 4; i < len(b)*3/4; i += 7 {
			b[i] ^= 0xa5 // the code and the data after any header
		}
		tampered++
		return os.WriteFile(path, b, 0o600)
	})
	if tampered == 0 {
		t.Fatal("no cache entry was written")
	}
	c2 := &Programs{CacheDir: dir}
	defer c2.Close()
	l2, err := c2.Get(ctx, "", "hello.wasm", digestOf(hello), hello, false)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release()
	if got := runLease(t, l2); got != want {
		t.Errorf("after tampering the cache the module printed %q, want %q", got, want)
	}
}

func TestProgramsPreload(t *testing.T) {
	hello := readWasm(t, fixtures.C(t, "hello"))
	dir := t.TempDir()
	ctx := context.Background()
	const pkg = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	c := &Programs{CacheDir: dir}
	if err := c.Preload(ctx, "", pkg, false); err != ErrNotRemembered {
		t.Fatalf("Preload of an unknown package: %v", err)
	}
	// A run of the package notes its module.
	var out bytes.Buffer
	if code, err := Run(ctx, Options{Name: "hello.wasm", Wasm: hello, Programs: c, Package: pkg, Stdout: &out}); err != nil || code != 0 {
		t.Fatalf("run: %d %v", code, err)
	}
	c.Close()
	c2 := &Programs{CacheDir: dir}
	defer c2.Close()
	if err := c2.Preload(ctx, "", pkg, false); err != nil {
		t.Fatal(err)
	}
	if n, _ := c2.Len(); n != 1 || !c2.holds(sha256.Sum256(hello), "", false) {
		t.Fatalf("Preload kept %d programs, not hello's", n)
	}
	// A stored module changed under its name is refused.
	mod := filepath.Join(dir, moduleStore, fmt.Sprintf("%x.wasm", sha256.Sum256(hello)))
	if err := os.WriteFile(mod, append(bytes.Clone(hello), 0), 0o600); err != nil {
		t.Fatal(err)
	}
	c3 := &Programs{CacheDir: dir}
	defer c3.Close()
	if err := c3.Preload(ctx, "", pkg, false); err == nil || !strings.Contains(err.Error(), "module digest mismatch") {
		t.Fatalf("Preload of a changed module: %v", err)
	}
	if n, _ := c3.Len(); n != 0 {
		t.Errorf("a refused module was kept")
	}
}

// FuzzParseDigest: any string either parses to the SHA-256 it spells, in
// the one canonical form, or is refused naming the digest.
func FuzzParseDigest(f *testing.F) {
	for _, s := range []string{digestOf(nil), "sha256:", "sha512:" + strings.Repeat("ab", 64), strings.ToUpper(digestOf(nil)), "sha256:" + strings.Repeat("g", 64), ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sum, err := ParseDigest(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "module digest ") {
				t.Fatalf("error %q does not name the digest", err)
			}
			return
		}
		if got := fmt.Sprintf("sha256:%x", sum); got != s {
			t.Fatalf("%q parsed to %s", s, got)
		}
	})
}

// BenchmarkStartInMemory measures what the start-up target names:
// from asking Programs for a module it holds (compiled in memory, keyed by
// digest, as the console and a long-running process keep it) to the
// workload's first instruction (_start about to run), and on to its exit.
// The engine is the package's (wazero; wasmtime with -tags wasmtime).
//
//	go test -run XXX -bench StartInMemory ./internal/runtime [-tags wasmtime]
func BenchmarkStartInMemory(b *testing.B) {
	for _, fixture := range []string{"c-hello", "go-hello"} {
		b.Run(fixture, func(b *testing.B) {
			var path string
			if fixture == "c-hello" {
				path = fixtures.C(b, "hello")
			} else {
				path = fixtures.Go(b, "hello")
			}
			wasm, err := os.ReadFile(path)
			if err != nil {
				b.Fatal(err)
			}
			c := &Programs{}
			defer c.Close()
			ctx := context.Background()
			d := digestOf(wasm)
			l, err := c.Get(ctx, "", "hello", d, wasm, false)
			if err != nil {
				b.Fatal(err)
			}
			l.Release()
			var toStart, whole time.Duration
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				var entered time.Time
				// With the digest known (a package's layer), as a keep has it.
				l, err := c.get(ctx, "", "hello", [32]byte(sha256.Sum256(wasm)), wasm, false)
				if err != nil {
					b.Fatal(err)
				}
				code, err := l.Run(ctx, Options{Stdout: io.Discard, Stderr: io.Discard, Entered: func() { entered = time.Now() }})
				l.Release()
				if err != nil || code != 0 {
					b.Fatalf("run: %d %v", code, err)
				}
				toStart += entered.Sub(t0)
				whole += time.Since(t0)
			}
			b.ReportMetric(float64(toStart.Microseconds())/float64(b.N)/1000, "ms-to-_start")
			b.ReportMetric(float64(whole.Microseconds())/float64(b.N)/1000, "ms-to-exit")
		})
	}
}
