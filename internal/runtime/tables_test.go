package runtime

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"runtime"
	"testing"

	"github.com/castellan-dev/castellan/internal/engine"
	"github.com/castellan-dev/castellan/internal/fixtures"
)

// wasmSection is a module section: its id, size and body.
func wasmSection(id byte, body []byte) []byte {
	return append(appendU32([]byte{id}, uint32(len(body))), body...)
}

func wasmName(s string) []byte { return append([]byte{byte(len(s))}, s...) }

// startAndMemory is an export section: function start as "_start" and
// memory 0 as "memory".
func startAndMemory(start byte) []byte {
	exp := []byte{2}
	exp = append(exp, wasmName("_start")...)
	exp = append(exp, 0, start)
	exp = append(exp, wasmName("memory")...)
	return wasmSection(7, append(exp, 2, 0))
}

// tableModule is a WASI command with the given table section body whose
// _start grows table 0 by grow elements and exits with table.grow's
// result plus one: 0 when the growth was refused.
func tableModule(tables []byte, grow uint32) []byte {
	sec := wasmSection
	imp := []byte{1}
	imp = append(imp, wasmName("wasi_snapshot_preview1")...)
	imp = append(imp, wasmName("proc_exit")...)
	imp = append(imp, 0, 0)
	body := []byte{0, 0xd0, 0x70, 0x41}
	body = appendU32(body, grow) // i32.const: as signed LEB, grow < 1<<27 keeps it positive
	body = append(body, 0xfc, 0x0f, 0, 0x41, 1, 0x6a, 0x10, 0, 0x0b)
	m := []byte("\x00asm\x01\x00\x00\x00")
	m = append(m, sec(1, []byte{2, 0x60, 1, 0x7f, 0, 0x60, 0, 0})...)
	m = append(m, sec(2, imp)...)
	m = append(m, sec(3, []byte{1, 1})...)
	m = append(m, sec(4, tables)...)
	m = append(m, sec(5, []byte{1, 0, 1})...)
	m = append(m, startAndMemory(1)...)
	return append(m, sec(10, append([]byte{1, byte(len(body))}, body...))...)
}

// TestTableGrowthBounded: the memory limit does not cover tables, and a
// table without a maximum could grow to 2^32-1 elements of host memory
// (8 bytes each under wazero: 128 MiB here, 32 GiB per call at most).
// Every table gets a maximum of maxTableElements.
func TestTableGrowthBounded(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tables []byte
	}{
		{"no maximum", []byte{1, 0x70, 0, 0}},
		{"huge maximum", appendU32([]byte{1, 0x70, 1, 0}, 1<<32-1)},
		{"maximum just over", appendU32([]byte{1, 0x70, 1, 0}, maxTableElements+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			code, err := Run(context.Background(), Options{Name: "grow.wasm", Wasm: tableModule(tc.tables, 1<<24), MemoryPages: 16})
			runtime.ReadMemStats(&after)
			if err != nil || code != 0 {
				t.Errorf("growing the table by 2^24 elements: exit %d, %v; want the growth refused (exit 0)", code, err)
			}
			if used := after.TotalAlloc - before.TotalAlloc; used > 64<<20 {
				t.Errorf("the run allocated %d MiB on the host with a 1 MiB memory limit", used>>20)
			}
		})
	}
	// Growth within the bound still works.
	code, err := Run(context.Background(), Options{Name: "grow.wasm", Wasm: tableModule([]byte{1, 0x70, 0, 0}, 1000)})
	if err != nil || code != 1 {
		t.Errorf("growing the table by 1000 elements: exit %d, %v; want 1", code, err)
	}
}

func TestTablesOverLimitRefused(t *testing.T) {
	many := []byte{maxTables + 1}
	for range maxTables + 1 {
		many = append(many, 0x70, 0, 0)
	}
	for _, tc := range []struct {
		name, tables, want string
	}{
		{"minimum over", string(appendU32([]byte{1, 0x70, 0}, maxTableElements+1)), "table 0: minimum of 1048577 elements, over the limit of 1048576"},
		{"too many", string(many), "table section: 9 tables, over the limit of 8"},
		{"table64", "\x01\x70\x04\x00", "table 0: limits flags 0x04 are not supported"},
		{"unknown type", "\x01\x7f\x00\x00", "table 0: unknown table type 0x7f"},
		{"trailing bytes", "\x01\x70\x00\x00\x00", "table section: 1 bytes after the tables"},
	} {
		err := Check(context.Background(), "t.wasm", tableModule([]byte(tc.tables), 1), "")
		if err == nil || err.Error() != "t.wasm: tables over the limit: "+tc.want {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

func TestBoundTablesRewrite(t *testing.T) {
	// A table within the bound is left as it is, bytes and all.
	m := tableModule([]byte{1, 0x70, 1, 1, 5}, 1)
	if got, changed, err := boundTables(m); err != nil || changed || !bytes.Equal(got, m) {
		t.Errorf("a bounded table was rewritten: changed %v, err %v", changed, err)
	}
	// A table without a maximum gets one; the rest of the module is kept.
	m = tableModule([]byte{2, 0x70, 0, 3, 0x6f, 0, 0}, 1)
	got, changed, err := boundTables(m)
	if err != nil || !changed {
		t.Fatalf("changed %v, err %v", changed, err)
	}
	tables := []byte{2, 0x70, 1, 3}
	tables = appendU32(tables, maxTableElements)
	tables = append(tables, 0x6f, 1, 0)
	tables = appendU32(tables, maxTableElements)
	if !bytes.Equal(got, tableModule(tables, 1)) {
		t.Errorf("rewritten module:\n%x\nwant\n%x", got, tableModule(tables, 1))
	}
	// Real modules keep passing, and Go's (no maximum) is bounded.
	for _, p := range []string{fixtures.Go(t, "hello"), fixtures.C(t, "hello")} {
		if _, _, err := boundTables(readWasm(t, p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// TestOneMemory: the memory limit is per memory, and wasmtime accepts
// multi-memory modules: with 100 memories a guest would have 100 times
// the limit. Both engines refuse a second memory, with the same error.
func TestOneMemory(t *testing.T) {
	sec := wasmSection
	body := []byte{0, 0x3f, 2, 0x1a, 0x0b} // memory.size 2; drop
	m := []byte("\x00asm\x01\x00\x00\x00")
	m = append(m, sec(1, []byte{1, 0x60, 0, 0})...)
	m = append(m, sec(3, []byte{1, 0})...)
	m = append(m, sec(5, []byte{3, 0, 1, 0, 16, 0, 16})...)
	m = append(m, startAndMemory(0)...)
	m = append(m, sec(10, append([]byte{1, byte(len(body))}, body...))...)
	_, err := Run(context.Background(), Options{Name: "mm.wasm", Wasm: m, MemoryPages: 16})
	want := "mm.wasm: truncated or malformed module: section 5: at most one memory allowed in module, but read 3"
	if err == nil || err.Error() != want {
		t.Errorf("a module with 3 memories: %v", err)
	}
}

// TestBoundTablesCacheKey: when the caller gives the module's digest (as
// castellan run and a keep do), the engine's cache key for the rewritten
// module is derived from it and the rewrite's version, never the module's
// own digest: code an engine keyed by that digest compiled from the
// unbounded module (an earlier castellan's) is not served, on either
// engine.
func TestBoundTablesCacheKey(t *testing.T) {
	wasm := tableModule([]byte{1, 0x70, 0, 0}, 1<<24)
	digest := fmt.Sprintf("sha256:%x", sha256.Sum256(wasm))
	for _, name := range []string{engine.NameWazero, engine.NameWasmtime} {
		if engine.Available(name) != nil {
			continue
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			// The unbounded module compiled into the cache under its own
			// digest, as before tables were bounded.
			eng, err := engine.New(name, engine.Config{CacheDir: cacheFolder(dir, false)})
			if err != nil {
				t.Fatal(err)
			}
			ctx := engine.WithModuleSum(context.Background(), sha256.Sum256(wasm))
			mod, err := eng.Compile(ctx, wasm)
			if err != nil {
				t.Fatal(err)
			}
			mod.Close(ctx)
			eng.Close(ctx)
			for range 2 { // compiled, then from the cache
				code, err := Run(context.Background(), Options{Name: "grow.wasm", Wasm: wasm, Engine: name, CacheDir: dir, ModuleDigest: digest, MemoryPages: 16})
				if err != nil || code != 0 {
					t.Fatalf("exit %d, %v: the unbounded module's code ran (its growth was not refused)", code, err)
				}
			}
		})
	}
}
