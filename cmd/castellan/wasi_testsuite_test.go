package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/fixtures"
)

// suiteLanguages are the folders of the WASI test suite whose
// wasm32-wasip1 tests castellan runs, each under
// tests/LANG/testsuite/wasm32-wasip1.
var suiteLanguages = []string{"assemblyscript", "c", "rust"}

// suiteTest is one test's JSON, in the suite's "legacy" (preview 1) form:
// every field is optional.
type suiteTest struct {
	Args     []string          `json:"args"`
	Env      map[string]string `json:"env"`
	Root     string            `json:"root"` // preopened as "/"
	Dirs     []string          `json:"dirs"` // older suites: preopened under their own name
	ExitCode int               `json:"exit_code"`
	Stdout   *string           `json:"stdout"`
	Stderr   *string           `json:"stderr"`
}

// suiteDir finds the WASI test suite: $CASTELLAN_WASI_TESTSUITE, else
// testdata/wasi-testsuite, else wasi-testsuite in the shared/ folder beside
// the checkout (see testdata/wasi-testsuite/README.md). "" when it is in
// none of them.
func suiteDir(t *testing.T) string {
	if d := os.Getenv("CASTELLAN_WASI_TESTSUITE"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "tests")); err != nil {
			t.Fatalf("CASTELLAN_WASI_TESTSUITE=%s: %v", d, err)
		}
		return d
	}
	root, err := fixtures.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{
		filepath.Join(root, "testdata", "wasi-testsuite"),
		filepath.Join(root, "..", "shared", "wasi-testsuite"),
	} {
		if _, err := os.Stat(filepath.Join(d, "tests")); err == nil {
			return d
		}
	}
	return ""
}

// TestWASITestsuite runs the official WASI test suite's wasm32-wasip1
// tests (WebAssembly/wasi-testsuite) through the CLI as a user would:
// castellan run --dir ROOT::/ --env K=V app.wasm -- ARGS, with no config,
// and checks each test's exit status and stdout as its JSON says. A
// test's root folder is copied first, so that tests that write start
// from the suite's state and leave it as it was.
func TestWASITestsuite(t *testing.T) {
	dir := suiteDir(t)
	if dir == "" {
		t.Skip("the WASI test suite is not in testdata/wasi-testsuite or ../shared/wasi-testsuite, and CASTELLAN_WASI_TESTSUITE is not set (see testdata/wasi-testsuite/README.md)")
	}
	cache := t.TempDir()
	total, passed := 0, 0
	for _, lang := range suiteLanguages {
		d := filepath.Join(dir, "tests", lang, "testsuite", "wasm32-wasip1")
		wasms, err := filepath.Glob(filepath.Join(d, "*.wasm"))
		if err != nil {
			t.Fatal(err)
		}
		if len(wasms) == 0 {
			t.Fatalf("%s: no tests", d)
		}
		sort.Strings(wasms)
		for _, wasm := range wasms {
			name := strings.TrimSuffix(filepath.Base(wasm), ".wasm")
			total++
			if t.Run(lang+"/"+name, func(t *testing.T) { runSuiteTest(t, wasm, cache) }) {
				passed++
			}
		}
	}
	t.Logf("WASI test suite (wasm32-wasip1): %d/%d passed", passed, total)
}

func runSuiteTest(t *testing.T, wasm, cache string) {
	var spec suiteTest
	b, err := os.ReadFile(strings.TrimSuffix(wasm, ".wasm") + ".json")
	switch {
	case err == nil:
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&spec); err != nil {
			t.Fatalf("%s.json: %v", strings.TrimSuffix(wasm, ".wasm"), err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		t.Fatal(err)
	}
	args := []string{"run"}
	if spec.Root != "" {
		args = append(args, "--dir", copyTree(t, filepath.Join(filepath.Dir(wasm), spec.Root))+"::/")
	}
	for _, d := range spec.Dirs {
		args = append(args, "--dir", copyTree(t, filepath.Join(filepath.Dir(wasm), d))+"::"+d)
	}
	keys := make([]string, 0, len(spec.Env))
	for k := range spec.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "--env", k+"="+spec.Env[k])
	}
	args = append(args, wasm, "--")
	args = append(args, spec.Args...)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a hang, not speed
	defer cancel()
	cmd := exec.CommandContext(ctx, "castellan", args...)
	cmd.Env = append(os.Environ(), "CASTELLAN_CACHE_DIR="+cache)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("castellan %s: %v", strings.Join(args, " "), err)
	}
	if code != spec.ExitCode {
		t.Errorf("exit status %d, want %d", code, spec.ExitCode)
	}
	if spec.Stdout != nil && stdout.String() != *spec.Stdout {
		t.Errorf("stdout %q, want %q", stdout.String(), *spec.Stdout)
	}
	if spec.Stderr != nil && stderr.String() != *spec.Stderr {
		t.Errorf("stderr %q, want %q", stderr.String(), *spec.Stderr)
	}
	if t.Failed() {
		t.Logf("castellan %s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), stdout.String(), stderr.String())
	}
}

// copyTree copies the folder src (files, folders and symlinks) into a new
// temporary folder and returns its path.
func copyTree(t *testing.T, src string) string {
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(to, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, 0o644)
	})
	if err != nil {
		t.Fatalf("copying %s: %v", src, err)
	}
	return dst
}
