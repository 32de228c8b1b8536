package console

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// The examples' sources are embedded in the binary and compiled on first
// use into the user's cache folder: no Wasm binary is committed, and a
// console without a Go toolchain (or clang for the C example) says which
// examples it cannot offer and why.
//
//go:embed examples/go examples/c
var exampleSources embed.FS

// Example is one built-in workload.
type Example struct {
	ID          string `json:"id"`
	Title       string `json:"title"`
	Description string `json:"description"`
	Language    string `json:"language"` // "Go" or "C"
	// Listen is true when the example serves on a listen descriptor; the
	// console gives each run a free loopback port.
	Listen bool `json:"listen"`
	// src is the folder (Go) or file (C) under examples/.
	src string
}

// Examples are the built-in workloads, in the order the page shows them.
var Examples = []Example{
	{ID: "hello-go", Title: "Hello, world (Go)", Language: "Go", src: "examples/go/hello",
		Description: "Prints a greeting, its arguments and its descriptors, and a line on standard error."},
	{ID: "fib-c", Title: "Fibonacci (C)", Language: "C", src: "examples/c/fib.c",
		Description: "Prints the Fibonacci numbers that fit in 64 bits."},
	{ID: "fib-go", Title: "Fibonacci (Go)", Language: "Go", src: "examples/go/fib",
		Description: "Prints the first 101 Fibonacci numbers with exact big integers."},
	{ID: "http-go", Title: "HTTP server (Go)", Language: "Go", src: "examples/go/httpserver", Listen: true,
		Description: "Serves web pages on a port of this machine until the time limit; the page shows the address to open."},
	{ID: "ticker-go", Title: "Ticker (Go)", Language: "Go", src: "examples/go/ticker",
		Description: "Prints a line every second until it is stopped: try the Stop button and the time limit."},
}

func exampleByID(id string) (Example, bool) {
	for _, e := range Examples {
		if e.ID == id {
			return e, true
		}
	}
	return Example{}, false
}

// ErrToolchain says the compiler an example needs is not installed.
var ErrToolchain = errors.New("compiler not installed")

// builder compiles examples once per source version into dir.
type builder struct {
	dir string // cache folder for built modules

	mu     sync.Mutex
	builds map[string]*build // by example ID
}

type build struct {
	done chan struct{}
	path string
	err  error
}

func newBuilder(dir string) *builder {
	return &builder{dir: dir, builds: map[string]*build{}}
}

// status says whether an example is ready, not built yet, or unavailable.
func (b *builder) status(ex Example) (state, reason string) {
	b.mu.Lock()
	bd := b.builds[ex.ID]
	b.mu.Unlock()
	if bd != nil {
		select {
		case <-bd.done:
			if bd.err != nil {
				return "unavailable", bd.err.Error()
			}
			return "ready", ""
		default:
			return "building", "being compiled from its source"
		}
	}
	if out, err := b.outPath(ex); err == nil {
		if _, err := os.Stat(out); err == nil {
			return "ready", ""
		}
	}
	tool := "go"
	if ex.Language == "C" {
		tool = "clang"
	}
	if _, err := exec.LookPath(tool); err != nil {
		return "unavailable", fmt.Sprintf("needs %s to be compiled from its source, and %s is not installed", tool, tool)
	}
	return "not-built", fmt.Sprintf("compiled from its source with %s on first run", tool)
}

// wasm returns the path of the example's module, building it if needed.
// Concurrent callers share one build; a failed build is remembered for the
// life of the process.
func (b *builder) wasm(ctx context.Context, ex Example) (string, error) {
	b.mu.Lock()
	bd := b.builds[ex.ID]
	if bd == nil {
		bd = &build{done: make(chan struct{})}
		b.builds[ex.ID] = bd
		go func() {
			bd.path, bd.err = b.build(ex)
			if bd.err != nil {
				bd.err = fmt.Errorf("example %s: %w", ex.ID, bd.err)
			}
			close(bd.done)
		}()
	}
	b.mu.Unlock()
	select {
	case <-bd.done:
		return bd.path, bd.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// sourceFiles returns the example's files (path relative to its folder,
// or the file's base name for C) and their contents, sorted.
func sourceFiles(ex Example) (map[string][]byte, error) {
	files := map[string][]byte{}
	if ex.Language == "C" {
		b, err := exampleSources.ReadFile(ex.src)
		if err != nil {
			return nil, err
		}
		files[path.Base(ex.src)] = b
		return files, nil
	}
	err := fs.WalkDir(exampleSources, ex.src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := exampleSources.ReadFile(p)
		if err != nil {
			return err
		}
		files[strings.TrimPrefix(p, ex.src+"/")] = b
		return nil
	})
	return files, err
}

// outPath names the built module by a hash of its sources and toolchain,
// so that a new console version or compiler rebuilds it.
func (b *builder) outPath(ex Example) (string, error) {
	files, err := sourceFiles(ex)
	if err != nil {
		return "", err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	h := sha256.New()
	fmt.Fprintf(h, "castellan console example v1\x00%s\x00", toolVersion(ex.Language))
	for _, n := range names {
		fmt.Fprintf(h, "%s\x00%d\x00", n, len(files[n]))
		h.Write(files[n])
	}
	return filepath.Join(b.dir, ex.ID+"-"+hex.EncodeToString(h.Sum(nil))[:16]+".wasm"), nil
}

var (
	toolVersionMu sync.Mutex
	toolVersions  = map[string]string{}
)

// toolVersion identifies the compiler for the cache key ("" when absent).
func toolVersion(lang string) string {
	toolVersionMu.Lock()
	defer toolVersionMu.Unlock()
	if v, ok := toolVersions[lang]; ok {
		return v
	}
	var out []byte
	if lang == "C" {
		out, _ = exec.Command("clang", "--version").Output()
	} else {
		out, _ = exec.Command("go", "env", "GOVERSION").Output()
	}
	v := strings.TrimSpace(string(out))
	if v != "" { // a missing compiler may be installed later
		toolVersions[lang] = v
	}
	return v
}

func (b *builder) build(ex Example) (string, error) {
	out, err := b.outPath(ex)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return "", err
	}
	src, err := os.MkdirTemp("", "castellan-example-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(src)
	files, err := sourceFiles(ex)
	if err != nil {
		return "", err
	}
	for n, data := range files {
		p := filepath.Join(src, filepath.FromSlash(n))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return "", err
		}
	}
	tmp, err := os.CreateTemp(b.dir, ex.ID+"-*.tmp")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())

	var cmd *exec.Cmd
	if ex.Language == "C" {
		clang, err := exec.LookPath("clang")
		if err != nil {
			return "", fmt.Errorf("%w: needs clang with wasi-libc (Debian: clang lld wasi-libc libclang-rt-dev-wasm32)", ErrToolchain)
		}
		cmd = exec.Command(clang, "--target=wasm32-wasi", "-O2", "-o", tmp.Name(), filepath.Join(src, path.Base(ex.src)))
	} else {
		goCmd, err := exec.LookPath("go")
		if err != nil {
			return "", fmt.Errorf("%w: needs the Go toolchain (go) on the PATH", ErrToolchain)
		}
		if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module example\n\ngo 1.21\n"), 0o644); err != nil {
			return "", err
		}
		cmd = exec.Command(goCmd, "build", "-trimpath", "-o", tmp.Name(), ".")
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=", "GOTOOLCHAIN=local")
	}
	cmd.Dir = src
	var msg bytes.Buffer
	cmd.Stdout, cmd.Stderr = &msg, &msg
	if err := cmd.Run(); err != nil {
		text := strings.TrimSpace(msg.String())
		if ex.Language == "C" && (strings.Contains(text, "file not found") || strings.Contains(text, "unable to find library")) {
			return "", fmt.Errorf("%w: clang cannot find wasi-libc (Debian: wasi-libc libclang-rt-dev-wasm32): %s", ErrToolchain, firstLine(text))
		}
		return "", fmt.Errorf("compiling %s: %v: %s", ex.src, err, firstLine(text))
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", err
	}
	return out, nil
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
