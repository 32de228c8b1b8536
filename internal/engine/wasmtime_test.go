//go:build wasmtime && unix

package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// cacheFile is where w keeps the compiled form of wasm.
func cacheFile(w *Wasmtime, wasm []byte) string {
	d := sha256.Sum256(wasm)
	return filepath.Join(w.cacheDir, hex.EncodeToString(d[:])+".cwasm")
}

func newCachedWasmtime(t *testing.T, dir string) *Wasmtime {
	t.Helper()
	w, err := NewWasmtime(Config{CacheDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	return w
}

// TestWasmtimeCacheTrust checks that a cached module is loaded only from a
// file of this user that nobody else can write, and that wasmtime accepts
// as its own for this engine; anything else is compiled again and the
// file replaced.
func TestWasmtimeCacheTrust(t *testing.T) {
	ctx := context.Background()
	w := newCachedWasmtime(t, t.TempDir())
	if _, err := w.Compile(ctx, exitModule); err != nil {
		t.Fatal(err)
	}
	path := cacheFile(w, exitModule)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no cache file after compile: %v", err)
	}
	if w.load(path) == nil {
		t.Fatal("a fresh cache file is not loaded")
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("cache file mode %v, want 0600", st.Mode().Perm())
	}

	attacks := map[string]func(t *testing.T){
		"broken header": func(t *testing.T) {
			b := append([]byte(nil), good...)
			b[1] ^= 0xff
			os.WriteFile(path, b, 0o600)
		},
		"truncated":    func(t *testing.T) { os.WriteFile(path, good[:len(good)/2], 0o600) },
		"not a module": func(t *testing.T) { os.WriteFile(path, exitModule, 0o600) },
		"other engine settings": func(t *testing.T) {
			// Code compiled with epoch checks, under the plain engine's name.
			iw, err := NewWasmtime(Config{CacheDir: filepath.Dir(w.cacheDir), Interruptible: true})
			if err != nil {
				t.Fatal(err)
			}
			defer iw.Close(ctx)
			if _, err := iw.Compile(ctx, exitModule); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(cacheFile(iw, exitModule))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(path, b, 0o600)
		},
		"writable by others": func(t *testing.T) {
			os.WriteFile(path, good, 0o600)
			os.Chmod(path, 0o622)
		},
		"symlink": func(t *testing.T) {
			other := filepath.Join(t.TempDir(), "x.cwasm")
			os.WriteFile(other, good, 0o600)
			os.Remove(path)
			if err := os.Symlink(other, path); err != nil {
				t.Fatal(err)
			}
		},
		"another user's file": func(t *testing.T) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to give the file away")
			}
			os.WriteFile(path, good, 0o600)
			if err := os.Chown(path, 4242, 4242); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, attack := range attacks {
		t.Run(name, func(t *testing.T) {
			os.Remove(path)
			attack(t)
			if w.load(path) != nil {
				t.Fatal("loaded an untrusted cache file")
			}
			// Compile still works, and replaces the file with a good one.
			mod, err := w.Compile(ctx, exitModule)
			if err != nil {
				t.Fatal(err)
			}
			mod.Close(ctx)
			if w.load(path) == nil {
				t.Error("the cache file was not replaced")
			}
		})
	}
}

// TestWasmtimeCacheDirTrust checks that a cache folder others can write to
// is refused in one line.
func TestWasmtimeCacheDirTrust(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, wasmtimeCacheName(Config{}))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o777)
	_, err := NewWasmtime(Config{CacheDir: base})
	if err == nil || !strings.Contains(err.Error(), "is writable by others") || strings.Contains(err.Error(), "\n") {
		t.Errorf("err %v", err)
	}
	// A file where the folder should be.
	base2 := t.TempDir()
	os.WriteFile(filepath.Join(base2, wasmtimeCacheName(Config{})), nil, 0o600)
	if _, err := NewWasmtime(Config{CacheDir: base2}); err == nil {
		t.Error("a file as cache folder was accepted")
	}
}

// TestWasmtimeCacheKey checks that interruptible code (epoch checks) is
// cached apart from plain code.
func TestWasmtimeCacheKey(t *testing.T) {
	if wasmtimeCacheName(Config{}) == wasmtimeCacheName(Config{Interruptible: true}) {
		t.Error("same cache folder with and without epoch interruption")
	}
	if !strings.HasPrefix(wasmtimeCacheName(Config{}), "wasmtime-v39.") {
		t.Errorf("cache folder %q does not name the wasmtime version", wasmtimeCacheName(Config{}))
	}
}

// TestWasmtimeVersionMatchesGoMod keeps the version that names the cache
// the one go.mod builds with.
func TestWasmtimeVersionMatchesGoMod(t *testing.T) {
	b, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "github.com/bytecodealliance/wasmtime-go/v39 "+wasmtimeVersion+"\n") {
		t.Errorf("go.mod does not require wasmtime-go %s: update wasmtimeVersion", wasmtimeVersion)
	}
}
