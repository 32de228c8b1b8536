package testvectors

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Module is a Go module version whose files some tests read as vectors.
// It comes through the Go module proxy like a dependency, into the Go
// module cache, and is never copied into this tree.
type Module struct {
	Path    string // module path
	Version string
	Sum     string // its go.sum hash (h1:), checked on every use
	Licence string
}

// Modules lists every module tests read vectors from (README.md says
// the same, with the files used).
var Modules = []Module{
	{
		Path:    "github.com/oasisprotocol/oasis-core/go",
		Version: "v0.2502.0",
		Sum:     "h1:B/qr+3HjCF8gN0MmY9Cw9hJ8Em/Lo5Ah8bIi9pgqgDY=",
		Licence: "Apache-2.0 (its LICENSE names no copyright holder; the oasis-core authors)",
	},
	{
		Path:    "github.com/veraison/ccatoken",
		Version: "v1.3.1",
		Sum:     "h1:zUHXr2mPprxMYv5Mm2mumxzQZ3I9wy7QGayXqa9Rv/E=",
		Licence: "Apache-2.0, Contributors to the Veraison project",
	},
}

// moduleDirs caches the module cache folder of each module, or the error
// that getting it gave, for the life of the test binary.
var moduleDirs sync.Map // module path -> moduleDir

type moduleDir struct {
	dir   string
	err   error
	wrong bool // err says the module is not the one recorded
}

// ModuleFile returns the bytes of file (a slash-separated path inside the
// module) of the known module modPath, read from the Go module cache.
// The module is brought there by `go mod download`, through the module
// proxy when it is not cached yet, and its hash must be the one recorded
// in Modules. When the go command cannot get it (no proxy and not cached)
// t is skipped, except under CI ($CI set), where the proxy is reachable
// and t fails. An unknown module, a wrong hash or a missing file fails t.
func ModuleFile(t testing.TB, modPath, file string) []byte {
	t.Helper()
	return moduleFile(t, modPath, file, false)
}

// OptionalModuleFile is ModuleFile for fuzz seeds, which must not skip
// their target: it returns nil where ModuleFile would skip.
func OptionalModuleFile(t testing.TB, modPath, file string) []byte {
	t.Helper()
	return moduleFile(t, modPath, file, true)
}

func moduleFile(t testing.TB, modPath, file string, optional bool) []byte {
	t.Helper()
	m, ok := lookupModule(modPath)
	if !ok {
		t.Fatalf("testvectors: %q is not a known module", modPath)
	}
	v, ok := moduleDirs.Load(m.Path)
	if !ok {
		v, _ = moduleDirs.LoadOrStore(m.Path, downloadModule(m))
	}
	md := v.(moduleDir)
	if md.err != nil {
		if !md.wrong && os.Getenv("CI") == "" {
			if optional {
				return nil
			}
			t.Skipf("test vector module %s@%s not available: %v", m.Path, m.Version, md.err)
		}
		t.Fatalf("testvectors: %v", md.err)
	}
	if !filepath.IsLocal(filepath.FromSlash(file)) || path.Clean(file) != file {
		t.Fatalf("testvectors: %q is not a path inside module %s", file, m.Path)
	}
	b, err := os.ReadFile(filepath.Join(md.dir, filepath.FromSlash(file)))
	if err != nil {
		t.Fatalf("testvectors: %s@%s: %v", m.Path, m.Version, err)
	}
	return b
}

func lookupModule(modPath string) (Module, bool) {
	for _, m := range Modules {
		if m.Path == modPath {
			return m, true
		}
	}
	return Module{}, false
}

// downloadModule runs `go mod download -json` for m outside any module
// (so that no go.mod or go.sum is touched) and checks the hash it reports.
func downloadModule(m Module) moduleDir {
	tmp, err := os.MkdirTemp("", "testvectors-")
	if err != nil {
		return moduleDir{err: err}
	}
	defer os.RemoveAll(tmp)
	// Two minutes only catch a hang: a cached module answers at once.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", m.Path+"@"+m.Version)
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, runErr := cmd.Output()
	return parseDownload(m, out, runErr, stderr.String())
}

// parseDownload reads the JSON `go mod download -json` printed for m.
func parseDownload(m Module, out []byte, runErr error, stderr string) moduleDir {
	var r struct{ Dir, Sum, Error string }
	if err := json.Unmarshal(out, &r); err != nil {
		if runErr != nil {
			return moduleDir{err: fmt.Errorf("go mod download %s@%s: %v: %s", m.Path, m.Version, runErr, strings.TrimSpace(stderr))}
		}
		return moduleDir{err: fmt.Errorf("go mod download %s@%s: %w", m.Path, m.Version, err)}
	}
	if r.Error != "" {
		return moduleDir{err: fmt.Errorf("go mod download %s@%s: %s", m.Path, m.Version, r.Error)}
	}
	if r.Sum != m.Sum {
		return moduleDir{err: fmt.Errorf("module %s@%s has hash %s, want %s", m.Path, m.Version, r.Sum, m.Sum), wrong: true}
	}
	if r.Dir == "" {
		return moduleDir{err: fmt.Errorf("go mod download %s@%s gave no folder", m.Path, m.Version)}
	}
	return moduleDir{dir: r.Dir}
}
