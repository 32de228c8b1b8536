package host

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
)

// TestKeepPreloadsKnownPackage: an insecure keep with the agent's
// compilation cache compiles, while it waits for its client, the module
// of the package it attested to when an earlier keep ran that package; a
// changed stored module is refused (and the run compiles the bytes it
// received); a TEE keep never reads the host's cache.
func TestKeepPreloadsKnownPackage(t *testing.T) {
	cacheDir := t.TempDir()
	h := newHarness(t, func(c *Config) { c.KeepCacheDir = cacheDir })
	art := artifact(t, fixtures.C(t, "hello"), []byte(stdio))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	deploy := func(backend string) string {
		t.Helper()
		v := &delivery.InsecureVerifier{SimRoots: simRoots(t)}
		k, res, out, errOut, err := h.deploy(ctx, backend, art, v, nil)
		if err != nil || res.ExitCode != 0 || !strings.Contains(out, "hello from C") {
			t.Fatalf("deploy: %v %+v %q %q", err, res, out, errOut)
		}
		h.waitEnded(k.ID)
		var log strings.Builder
		h.client.Events(ctx, k.ID, false, func(e Event) { log.WriteString(e.Message + "\n") })
		return log.String()
	}
	const ahead = "compiled the package's module ahead"
	if log := deploy("nil"); strings.Contains(log, ahead) {
		t.Fatalf("the first keep of a package found its module:\n%s", log)
	}
	if log := deploy("nil"); !strings.Contains(log, ahead) {
		t.Fatalf("the second keep of a package did not compile it ahead:\n%s", log)
	}
	if log := deploy("sim-snp"); strings.Contains(log, "ahead") {
		t.Fatalf("a TEE keep used the host's cache:\n%s", log)
	}
	// The host changes the stored module: the keep refuses it and runs
	// the bytes its client sent.
	mods, _ := filepath.Glob(filepath.Join(cacheDir, "castellan-modules", "*.wasm"))
	if len(mods) != 1 {
		t.Fatalf("stored modules: %v", mods)
	}
	if err := os.WriteFile(mods[0], []byte("\x00asm\x01\x00\x00\x00"), 0o600); err != nil {
		t.Fatal(err)
	}
	if log := deploy("nil"); !strings.Contains(log, "could not compile the package's module ahead: main.wasm: module digest mismatch") {
		t.Fatalf("a changed stored module was not refused:\n%s", log)
	}
}
