package runtime

import (
	"bytes"
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/castellan-dev/castellan/internal/atomicfile"
	"github.com/castellan-dev/castellan/internal/workload"
)

// Programs keeps compiled programs in memory for a long-running process
// (the console), keyed by the module's SHA-256 digest with the engine and
// the interruptible setting, so that a module run or checked again is not
// compiled or loaded from the disk cache again. It is bounded by a number
// of programs and by the sum of their modules' sizes (compiled code is a
// few times the module); the least recently used program is evicted
// first, and closed once the last run holding it ends.
//
// A Programs is safe for concurrent use; two callers asking for the same
// module at once compile it once.
type Programs struct {
	// MaxPrograms bounds the number of programs kept; 0 = 16.
	MaxPrograms int
	// MaxBytes bounds the sum of the kept modules' sizes; 0 = 256 MiB. A
	// module larger than MaxBytes is compiled for its caller and not kept.
	MaxBytes int64
	// CacheDir is the disk compilation cache under the memory one ("" =
	// none): only for code the host may change (see docs/host.md).
	CacheDir string

	mu      sync.Mutex
	entries map[programKey]*programEntry
	lru     list.List // of *programEntry, most recently used first
	bytes   int64
}

type programKey struct {
	sum           [sha256.Size]byte
	engine        string
	interruptible bool
}

type programEntry struct {
	key   programKey
	size  int64
	elem  *list.Element // nil once evicted (or never kept)
	ready chan struct{} // closed when p or err is set
	p     *Program
	err   error
	refs  int // leases not yet released
}

// Lease is a program lent by Programs; Release gives it back.
type Lease struct {
	*Program
	c    *Programs
	e    *programEntry
	once sync.Once
}

// Release gives the program back: an evicted program is closed when its
// last lease is released. Releasing twice is harmless.
func (l *Lease) Release() {
	l.once.Do(func() { l.c.release(l.e) })
}

const (
	defaultMaxPrograms = 16
	defaultMaxBytes    = 256 << 20
)

// ParseDigest reads an OCI digest of a module ("sha256:" and 64 hex
// digits).
func ParseDigest(digest string) ([sha256.Size]byte, error) {
	sum, err := workload.ParseDigest(digest)
	if err != nil {
		return sum, fmt.Errorf("module digest %q: %w", digest, err)
	}
	return sum, nil
}

// Get returns the compiled program of wasm, compiling it (or loading it
// from CacheDir) on a miss. digest is the module's digest as the caller
// knows it (the package's module layer, "sha256:..."); bytes whose SHA-256
// is another are refused, so that no program is ever filed under a digest
// it was not compiled from. engineName and interruptible are as in
// CompileEngine; name is the module's name in messages of this
// compilation. The caller runs the program and releases the lease.
func (c *Programs) Get(ctx context.Context, engineName, name, digest string, wasm []byte, interruptible bool) (*Lease, error) {
	want, err := ParseDigest(digest)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", nameOr(name), err)
	}
	if got := sha256.Sum256(wasm); got != want {
		return nil, fmt.Errorf("%s: module digest mismatch: the bytes have sha256:%x, not %s", nameOr(name), got, digest)
	}
	return c.get(ctx, engineName, name, want, wasm, interruptible)
}

// get is Get for a digest computed from wasm.
func (c *Programs) get(ctx context.Context, engineName, name string, want [sha256.Size]byte, wasm []byte, interruptible bool) (*Lease, error) {
	if engineName == "" {
		engineName = defaultEngine
	}
	key := programKey{sum: want, engine: engineName, interruptible: interruptible}
	c.mu.Lock()
	if c.entries == nil {
		c.entries = map[programKey]*programEntry{}
	}
	e, hit := c.entries[key]
	if hit {
		e.refs++
		c.lru.MoveToFront(e.elem)
	} else {
		e = &programEntry{key: key, size: int64(len(wasm)), ready: make(chan struct{}), refs: 1}
		if e.size <= c.maxBytes() {
			e.elem = c.lru.PushFront(e)
			c.entries[key] = e
			c.bytes += e.size
			c.evict()
		}
	}
	c.mu.Unlock()
	if !hit {
		e.p, e.err = compileSum(ctx, engineName, name, wasm, &want, c.CacheDir, interruptible)
		close(e.ready)
		if e.err != nil {
			c.mu.Lock()
			c.remove(e) // a failure is not kept: the next caller tries again
			c.mu.Unlock()
		}
	}
	select {
	case <-e.ready:
	case <-ctx.Done():
		c.release(e)
		return nil, ctx.Err()
	}
	if e.err != nil {
		c.release(e)
		return nil, e.err
	}
	return &Lease{Program: e.p, c: c, e: e}, nil
}

// Len returns how many programs are kept and the sum of their modules'
// sizes.
func (c *Programs) Len() (programs int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len(), c.bytes
}

// Close closes every kept program that no lease holds and forgets the
// others (closed when released).
func (c *Programs) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.lru.Len() > 0 {
		c.remove(c.lru.Back().Value.(*programEntry))
	}
}

func nameOr(name string) string {
	if name == "" {
		return "module"
	}
	return name
}

func (c *Programs) maxBytes() int64 {
	if c.MaxBytes > 0 {
		return c.MaxBytes
	}
	return defaultMaxBytes
}

func (c *Programs) maxPrograms() int {
	if c.MaxPrograms > 0 {
		return c.MaxPrograms
	}
	return defaultMaxPrograms
}

// evict removes least recently used programs past the bounds (c.mu held).
func (c *Programs) evict() {
	for c.lru.Len() > c.maxPrograms() || c.bytes > c.maxBytes() {
		c.remove(c.lru.Back().Value.(*programEntry))
	}
}

// remove takes e out of the cache and closes its program if no lease holds
// it (c.mu held).
func (c *Programs) remove(e *programEntry) {
	if e.elem == nil {
		return
	}
	c.lru.Remove(e.elem)
	e.elem = nil
	delete(c.entries, e.key)
	c.bytes -= e.size
	c.closeIfIdle(e)
}

func (c *Programs) release(e *programEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.refs--
	c.closeIfIdle(e)
}

// closeIfIdle closes the program of an entry no longer kept once no lease
// holds it and its compilation ended (c.mu held).
func (c *Programs) closeIfIdle(e *programEntry) {
	if e.elem != nil || e.refs > 0 {
		return
	}
	select {
	case <-e.ready:
		if e.p != nil {
			e.p.Close(context.Background())
			e.p = nil
		}
	default: // still compiling: its compiler holds a reference
	}
}

// run is Run with the program from c: o.Wasm's program is taken from
// memory (compiled on a miss) and, with o.Package, remembered as that
// package's module for Preload.
func (c *Programs) run(ctx context.Context, o Options) (int, error) {
	sum := o.moduleSum()
	if c.CacheDir != "" && o.Log != nil && !c.holds(sum, o.Engine, o.Interruptible) && !compiledSum(c.CacheDir, sum, o.Interruptible) {
		o.Log("compiling %s (first run; cached for next time)", o.Name)
	}
	l, err := c.get(ctx, o.Engine, o.Name, sum, o.Wasm, o.Interruptible)
	if err != nil {
		return 0, err
	}
	defer l.Release()
	if o.Package != "" {
		// A failure only costs the next keep of this package its head start.
		_ = c.remember(o.Package, sum, o.Wasm)
	}
	return l.Run(ctx, o)
}

// holds says whether the program of a module is in memory (or being
// compiled).
func (c *Programs) holds(sum [sha256.Size]byte, engineName string, interruptible bool) bool {
	if engineName == "" {
		engineName = defaultEngine
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.entries[programKey{sum: sum, engine: engineName, interruptible: interruptible}]
	return ok
}

// Folders of the package index inside CacheDir: which module a package
// holds (a file named by the package digest's hex, holding the module's
// digest), and the modules' bytes (named by their SHA-256), which wazero
// needs beside its compiled code.
const (
	packageIndex = "castellan-packages"
	moduleStore  = "castellan-modules"
)

// maxStoredModule bounds a module Preload reads back.
const maxStoredModule = 1 << 30

// remember notes in CacheDir that the package pkg holds wasm (of digest
// sum), and keeps wasm's bytes there, for Preload.
func (c *Programs) remember(pkg string, sum [sha256.Size]byte, wasm []byte) error {
	if c.CacheDir == "" {
		return nil
	}
	pkgSum, err := ParseDigest(pkg)
	if err != nil {
		return err
	}
	mod := filepath.Join(c.CacheDir, moduleStore, hex.EncodeToString(sum[:])+".wasm")
	if _, err := os.Stat(mod); err != nil {
		if err := writeFile(mod, wasm); err != nil {
			return err
		}
	}
	idx := filepath.Join(c.CacheDir, packageIndex, hex.EncodeToString(pkgSum[:]))
	line := fmt.Appendf(nil, "sha256:%x\n", sum)
	if b, err := os.ReadFile(idx); err == nil && bytes.Equal(b, line) {
		return nil // noted by an earlier run
	}
	return writeFile(idx, line)
}

// ErrNotRemembered is returned by Preload for a package whose module no
// earlier run noted in the cache.
var ErrNotRemembered = errors.New("no module noted for this package")

// Preload compiles (from the disk cache, as a rule) the module of the
// package pkg that an earlier run noted in CacheDir, and keeps it in
// memory, so that the run of that package, when its bytes arrive, does
// not wait for it: Run finds the program by the module's digest, which
// the bytes it is given must match (Get). Only for a CacheDir that the
// parties who may change it are trusted with (an insecure keep's; see
// docs/host.md): the index and the stored module only save time, and a
// stored module whose bytes do not match its name is refused.
func (c *Programs) Preload(ctx context.Context, engineName, pkg string, interruptible bool) error {
	if c.CacheDir == "" {
		return ErrNotRemembered
	}
	pkgSum, err := ParseDigest(pkg)
	if err != nil {
		return err
	}
	idx, err := os.ReadFile(filepath.Join(c.CacheDir, packageIndex, hex.EncodeToString(pkgSum[:])))
	if errors.Is(err, os.ErrNotExist) {
		return ErrNotRemembered
	}
	if err != nil {
		return err
	}
	digest := string(bytes.TrimSpace(idx))
	sum, err := ParseDigest(digest)
	if err != nil {
		return fmt.Errorf("package index of %s: %w", pkg, err)
	}
	f, err := os.Open(filepath.Join(c.CacheDir, moduleStore, hex.EncodeToString(sum[:])+".wasm"))
	if err != nil {
		return err
	}
	wasm, err := io.ReadAll(io.LimitReader(f, maxStoredModule))
	f.Close()
	if err != nil {
		return err
	}
	l, err := c.Get(ctx, engineName, "main.wasm", digest, wasm, interruptible)
	if err != nil {
		return err
	}
	l.Release()
	return nil
}

// writeFile writes b to path whole or not at all, making path's folder
// (mode 0700) if needed.
func writeFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, b, 0o600)
}
