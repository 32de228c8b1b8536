package packages

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/castellan-dev/castellan/internal/workload"
)

// goldenModule decodes testdata/golden/module.hex.
func goldenModule(t testing.TB) []byte {
	t.Helper()
	f, err := os.Open("testdata/golden/module.hex")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var digits strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		digits.WriteString(strings.Join(strings.Fields(line), ""))
	}
	b, err := hex.DecodeString(digits.String())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func goldenConfig(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/golden/Enarx.toml")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// module returns a distinct valid-looking module for each n.
func module(n int) []byte {
	return append(append([]byte{}, wasmMagic...), []byte(fmt.Sprintf("\x00\x04name%04d", n))...)
}

func newStore(t testing.TB, opts Options) *Store {
	t.Helper()
	opts.PlainHTTP = true
	s, err := Open(filepath.Join(t.TempDir(), "store"), opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// tamperBlobs is go-containerregistry's in-memory blob store with faults
// that tests switch on: corrupt bytes, missing blobs, and a count of reads.
type tamperBlobs struct {
	inner registry.BlobHandler
	mu    sync.Mutex
	bad   map[string]bool // digest -> serve with one byte flipped
	gone  map[string]bool // digest -> 404
	gets  map[string]int
}

func (b *tamperBlobs) Get(ctx context.Context, repo string, h v1.Hash) (io.ReadCloser, error) {
	b.mu.Lock()
	bad, gone := b.bad[h.String()], b.gone[h.String()]
	b.gets[h.String()]++
	b.mu.Unlock()
	if gone {
		return nil, registry.ErrNotFound
	}
	rc, err := b.inner.Get(ctx, repo, h)
	if err != nil || !bad {
		return rc, err
	}
	defer rc.Close()
	all, err := io.ReadAll(rc)
	if err != nil {
		return nil, err
	}
	all[len(all)-1] ^= 0xff
	return io.NopCloser(bytes.NewReader(all)), nil
}

func (b *tamperBlobs) Stat(ctx context.Context, repo string, h v1.Hash) (int64, error) {
	b.mu.Lock()
	gone := b.gone[h.String()]
	b.mu.Unlock()
	if gone {
		return 0, registry.ErrNotFound
	}
	return b.inner.(registry.BlobStatHandler).Stat(ctx, repo, h)
}

func (b *tamperBlobs) Put(ctx context.Context, repo string, h v1.Hash, rc io.ReadCloser) error {
	return b.inner.(registry.BlobPutHandler).Put(ctx, repo, h, rc)
}

func (b *tamperBlobs) set(m map[string]bool, d digest.Digest) {
	b.mu.Lock()
	m[d.String()] = true
	b.mu.Unlock()
}

func (b *tamperBlobs) reads(d digest.Digest) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.gets[d.String()]
}

type testRegistry struct {
	host  string
	close func()
	blobs *tamperBlobs
	// swapManifest, when set, replaces manifest bodies served by GET.
	mu           sync.Mutex
	swapManifest func([]byte) []byte
	// intercept, when set, sees each request first and may answer it
	// (returning true).
	intercept func(w http.ResponseWriter, r *http.Request) bool
}

// newRegistry starts go-containerregistry's registry on 127.0.0.1.
func newRegistry(t testing.TB) *testRegistry {
	t.Helper()
	tr := &testRegistry{blobs: &tamperBlobs{inner: registry.NewInMemoryBlobHandler(), bad: map[string]bool{}, gone: map[string]bool{}, gets: map[string]int{}}}
	h := registry.New(registry.WithBlobHandler(tr.blobs), registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr.mu.Lock()
		swap, intercept := tr.swapManifest, tr.intercept
		tr.mu.Unlock()
		if intercept != nil && intercept(w, r) {
			return
		}
		if swap == nil || r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/manifests/") {
			h.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		body := swap(rec.Body.Bytes())
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.WriteHeader(rec.Code)
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	tr.close = srv.Close
	tr.host = strings.TrimPrefix(srv.URL, "http://")
	t.Setenv("DOCKER_CONFIG", t.TempDir()) // no credentials from the host
	return tr
}

// publish builds wasm+config in a fresh store and pushes it as ref.
func publish(t testing.TB, ref string, wasm, cfg []byte) *workload.Artifact {
	t.Helper()
	s := newStore(t, Options{})
	art, err := s.Build(wasm, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Tag(art.Digest, ref); err != nil {
		t.Fatal(err)
	}
	pushed, err := s.Push(context.Background(), ref, "")
	if err != nil {
		t.Fatal(err)
	}
	if pushed.Digest != art.Digest {
		t.Fatalf("push changed the digest: %s -> %s", art.Digest, pushed.Digest)
	}
	return art
}

func TestBuildDeterministicAndGolden(t *testing.T) {
	wasm, cfg := goldenModule(t), goldenConfig(t)
	// The same files under two paths with different modification times.
	var digests []digest.Digest
	for i, when := range []time.Time{time.Unix(1e9, 0), time.Unix(1.7e9, 0)} {
		dir := t.TempDir()
		wp, cp := filepath.Join(dir, fmt.Sprintf("app%d.wasm", i)), filepath.Join(dir, "sub", "Enarx.toml")
		os.MkdirAll(filepath.Dir(cp), 0o755)
		if err := os.WriteFile(wp, wasm, 0o600+os.FileMode(i)*0o44); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cp, cfg, 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(wp, when, when)
		os.Chtimes(cp, when, when)
		w, _ := os.ReadFile(wp)
		c, _ := os.ReadFile(cp)
		s := newStore(t, Options{})
		art, err := s.Build(w, c)
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, art.Digest)
		if _, err := os.Stat(filepath.Join(s.Dir(), "blobs", "sha256", art.Digest.Encoded())); err != nil {
			t.Errorf("manifest blob not stored: %v", err)
		}
	}
	if digests[0] != digests[1] {
		t.Fatalf("two builds of the same files differ: %s, %s", digests[0], digests[1])
	}
	want, err := os.ReadFile("testdata/golden/digest.txt")
	if err != nil {
		t.Fatal(err)
	}
	if got := digests[0].String(); got != strings.TrimSpace(string(want)) {
		t.Errorf("golden digest changed: got %s, want %s (the workload digest scheme must not change)", got, want)
	}
	if art, _ := workload.New(wasm, cfg); art.Digest != digests[0] {
		t.Errorf("package digest %s differs from workload.New's %s", digests[0], art.Digest)
	}
}

func TestBuildRejectsNonWasm(t *testing.T) {
	s := newStore(t, Options{})
	for _, b := range [][]byte{nil, []byte("#!/bin/sh\n"), []byte("\x00asm\x02\x00\x00\x00")} {
		if _, err := s.Build(b, nil); err == nil {
			t.Errorf("Build(%q) succeeded", b)
		}
	}
}

func TestPushPullRoundTrip(t *testing.T) {
	reg := newRegistry(t)
	ref := reg.host + "/apps/hello:v1"
	art := publish(t, ref, goldenModule(t), goldenConfig(t))

	s := newStore(t, Options{})
	got, err := s.Pull(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != art.Digest || !bytes.Equal(got.Wasm, art.Wasm) || !bytes.Equal(got.Config, art.Config) || !bytes.Equal(got.Manifest, art.Manifest) {
		t.Fatalf("round trip changed the package: %s -> %s", art.Digest, got.Digest)
	}
	// Now in the local store under the registry name, and by digest.
	for _, r := range []string{ref, reg.host + "/apps/hello@" + art.Digest.String()} {
		a, err := s.fetchLocal(context.Background(), r)
		if err != nil || a.Digest != art.Digest {
			t.Errorf("local fetch of %s: %v", r, err)
		}
	}
	// Fetch of a pinned registry reference works from the registry too.
	s2 := newStore(t, Options{})
	if a, err := s2.Fetch(context.Background(), reg.host+"/apps/hello:v1@"+art.Digest.String()); err != nil || a.Digest != art.Digest {
		t.Errorf("pinned fetch: %v", err)
	}
	// A pinned digest already in the store is served from it, offline.
	reg.close()
	if a, err := s.Fetch(context.Background(), reg.host+"/apps/hello@"+art.Digest.String()); err != nil || a.Digest != art.Digest {
		t.Errorf("offline pinned fetch: %v", err)
	}
	if _, err := s.Fetch(context.Background(), ref); err == nil {
		t.Error("a tag was resolved without its registry")
	}
}

func TestBareRoundTrip(t *testing.T) {
	reg := newRegistry(t)
	s := newStore(t, Options{})
	// A package without a config round-trips as well.
	ref2 := reg.host + "/apps/bare:v1"
	art2 := publish(t, ref2, module(2), nil)
	got2, err := s.Fetch(context.Background(), ref2)
	if err != nil || got2.Digest != art2.Digest || got2.Config != nil {
		t.Errorf("bare package: %v", err)
	}
}

// storeFiles lists every file under the store but the lock, for checking
// that a failed pull wrote nothing.
func storeFiles(t *testing.T, s *Store) []string {
	var out []string
	filepath.Walk(s.Dir(), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && filepath.Base(p) != ".lock" {
			rel, _ := filepath.Rel(s.Dir(), p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

func TestFetchCatchesBadRegistries(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t)
	wasm, cfg := goldenModule(t), goldenConfig(t)

	t.Run("tampered wasm", func(t *testing.T) {
		art := publish(t, reg.host+"/t/wasm:v1", wasm, cfg)
		reg.blobs.set(reg.blobs.bad, art.WasmDesc.Digest)
		s := newStore(t, Options{})
		before := storeFiles(t, s)
		_, err := s.Fetch(ctx, reg.host+"/t/wasm:v1")
		if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "wasm "+art.WasmDesc.Digest.String()) {
			t.Fatalf("tampered wasm layer: %v", err)
		}
		if after := storeFiles(t, s); strings.Join(after, ",") != strings.Join(before, ",") {
			t.Errorf("a failed pull wrote to the store: %v -> %v", before, after)
		}
	})
	t.Run("tampered config layer", func(t *testing.T) {
		art := publish(t, reg.host+"/t/toml:v1", module(10), []byte("args = [\"a\"]\n"))
		reg.blobs.set(reg.blobs.bad, art.TOMLDesc.Digest)
		_, err := newStore(t, Options{}).Fetch(ctx, reg.host+"/t/toml:v1")
		if !errors.Is(err, ErrMismatch) {
			t.Fatalf("tampered TOML layer: %v", err)
		}
	})
	t.Run("missing layer", func(t *testing.T) {
		art := publish(t, reg.host+"/t/missing:v1", module(11), nil)
		reg.blobs.set(reg.blobs.gone, art.WasmDesc.Digest)
		_, err := newStore(t, Options{}).Fetch(ctx, reg.host+"/t/missing:v1")
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "is missing from registry") {
			t.Fatalf("missing layer: %v", err)
		}
	})
	t.Run("tampered manifest", func(t *testing.T) {
		publish(t, reg.host+"/t/manifest:v1", module(12), nil)
		reg.mu.Lock()
		reg.swapManifest = func(b []byte) []byte {
			return bytes.Replace(b, []byte(`"schemaVersion":2`), []byte(`"schemaVersion":2 `), 1)
		}
		reg.mu.Unlock()
		defer func() { reg.mu.Lock(); reg.swapManifest = nil; reg.mu.Unlock() }()
		_, err := newStore(t, Options{}).Fetch(ctx, reg.host+"/t/manifest:v1")
		if err == nil {
			t.Fatal("a manifest whose bytes do not match its digest was accepted")
		}
	})
	t.Run("oversized layer refused before download", func(t *testing.T) {
		big := append(module(13), make([]byte, 4096)...)
		art := publish(t, reg.host+"/t/big:v1", big, nil)
		s := newStore(t, Options{MaxLayerSize: 1024})
		_, err := s.Fetch(ctx, reg.host+"/t/big:v1")
		var se *SizeError
		if !errors.Is(err, ErrTooLarge) || !errors.As(err, &se) || se.Limit != LimitLayer || se.Max != 1024 {
			t.Fatalf("oversized layer: %v", err)
		}
		if n := reg.blobs.reads(art.WasmDesc.Digest); n != 0 {
			t.Errorf("the oversized layer was downloaded %d times", n)
		}
	})
}

// pushRaw pushes a hand-made manifest and its blobs, as another tool would.
func pushRaw(t *testing.T, reg *testRegistry, repoName, tag string, m ocispec.Manifest, blobs map[digest.Digest][]byte) {
	t.Helper()
	ctx := context.Background()
	repo, err := remote.NewRepository(reg.host + "/" + repoName)
	if err != nil {
		t.Fatal(err)
	}
	repo.PlainHTTP = true
	for _, d := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		b, ok := blobs[d.Digest]
		if !ok {
			continue
		}
		if err := repo.Push(ctx, ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: int64(len(b))}, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	mb, _ := json.Marshal(m)
	md := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(mb), Size: int64(len(mb))}
	if err := repo.PushReference(ctx, md, bytes.NewReader(mb), tag); err != nil {
		t.Fatal(err)
	}
}

func desc(mt string, b []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
}

func TestFetchRejectsOtherArtifacts(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t)
	wasm := module(20)
	art, _ := workload.New(wasm, nil)
	cfgBlob := art.ConfigBlob
	tar := []byte("not a tar, but a container layer all the same")
	base := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest}
	blobs := map[digest.Digest][]byte{digest.FromBytes(wasm): wasm, digest.FromBytes(cfgBlob): cfgBlob, digest.FromBytes(tar): tar, digest.FromBytes([]byte("{}")): []byte("{}")}

	cases := []struct {
		name string
		edit func(m *ocispec.Manifest)
		want error
		msg  string
	}{
		{"container image", func(m *ocispec.Manifest) {
			m.Config = desc(ocispec.MediaTypeImageConfig, []byte("{}"))
			m.Layers = []ocispec.Descriptor{desc(ocispec.MediaTypeImageLayerGzip, tar)}
		}, ErrNotWorkload, "config media type"},
		{"extra layer", func(m *ocispec.Manifest) {
			m.Config = desc(workload.MediaTypeConfig, cfgBlob)
			m.Layers = []ocispec.Descriptor{desc(workload.MediaTypeWasm, wasm), desc(ocispec.MediaTypeImageLayer, tar)}
		}, ErrNotWorkload, "layer 1 has media type"},
		{"two wasm layers", func(m *ocispec.Manifest) {
			m.Config = desc(workload.MediaTypeConfig, cfgBlob)
			m.Layers = []ocispec.Descriptor{desc(workload.MediaTypeWasm, wasm), desc(workload.MediaTypeWasm, wasm)}
		}, ErrNotWorkload, "2 Wasm"},
		{"annotations (not canonical)", func(m *ocispec.Manifest) {
			m.Config = desc(workload.MediaTypeConfig, cfgBlob)
			m.Layers = []ocispec.Descriptor{desc(workload.MediaTypeWasm, wasm)}
			m.Annotations = map[string]string{"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}
		}, ErrNotWorkload, "canonical form"},
		{"layer claims to be huge", func(m *ocispec.Manifest) {
			m.Config = desc(workload.MediaTypeConfig, cfgBlob)
			d := desc(workload.MediaTypeWasm, wasm)
			d.Size = 1 << 40
			m.Layers = []ocispec.Descriptor{d}
		}, ErrTooLarge, "over the"},
		{"layer claims to be short", func(m *ocispec.Manifest) {
			m.Config = desc(workload.MediaTypeConfig, cfgBlob)
			d := desc(workload.MediaTypeWasm, wasm)
			d.Size -= 4
			m.Layers = []ocispec.Descriptor{d}
		}, nil, "wasm"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := base
			c.edit(&m)
			tag := fmt.Sprintf("v%d", i)
			pushRaw(t, reg, "other/app", tag, m, blobs)
			_, err := newStore(t, Options{}).Fetch(ctx, reg.host+"/other/app:"+tag)
			if err == nil || (c.want != nil && !errors.Is(err, c.want)) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("got %v, want %v containing %q", err, c.want, c.msg)
			}
		})
	}
}

func TestTagMoved(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t)
	ref := reg.host + "/moving/app:stable"
	a := publish(t, ref, module(30), nil)
	var warnings []string
	s := newStore(t, Options{Warnf: func(f string, x ...any) { warnings = append(warnings, fmt.Sprintf(f, x...)) }})
	if _, err := s.Pull(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pull(ctx, ref); err != nil || len(warnings) != 0 {
		t.Fatalf("pulling an unchanged tag: %v %q", err, warnings)
	}
	b := publish(t, ref, module(31), nil)
	got, err := s.Fetch(ctx, ref)
	if err != nil || got.Digest != b.Digest {
		t.Fatalf("fetch after the move: %v", err)
	}
	want := fmt.Sprintf("%s: tag moved from %s to %s", ref, a.Digest, b.Digest)
	if len(warnings) != 1 || warnings[0] != want {
		t.Errorf("warnings %q, want %q", warnings, want)
	}
	// The old digest can still be named by digest in the local store.
	if _, err := s.Fetch(ctx, "moving/app@"+a.Digest.String()); err != nil {
		t.Errorf("old digest by local name: %v", err)
	}
}

func TestPinnedDigestEnforced(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t)
	a := publish(t, reg.host+"/pin/app:v1", module(40), nil)
	b := publish(t, reg.host+"/pin/app:v2", module(41), nil)
	// The registry answers a request for digest a with the manifest of b.
	reg.mu.Lock()
	reg.swapManifest = func([]byte) []byte { return b.Manifest }
	reg.mu.Unlock()
	_, err := newStore(t, Options{}).Fetch(ctx, reg.host+"/pin/app@"+a.Digest.String())
	if err == nil {
		t.Fatal("a registry serving another manifest for a pinned digest was believed")
	}
	// Locally, a pinned digest that is not there is not found, whatever the tag.
	s := newStore(t, Options{})
	art, err := s.Build(module(42), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Tag(art.Digest, "app:v1")
	if _, err := s.Fetch(ctx, "app:v1@"+a.Digest.String()); !errors.Is(err, ErrNotFound) {
		t.Errorf("pinned digest not in the store: %v", err)
	}
	if got, err := s.Fetch(ctx, "app@"+art.Digest.String()); err != nil || got.Digest != art.Digest {
		t.Errorf("pinned digest in the store: %v", err)
	}
}

func TestOCILayoutOffline(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "out")
	art, err := WriteLayout(dir, goldenModule(t), goldenConfig(t), "hello:1.0")
	if err != nil {
		t.Fatal(err)
	}
	s := newStore(t, Options{})
	for _, r := range []string{LayoutPrefix + dir + "@" + art.Digest.String(), LayoutPrefix + dir + ":1.0"} {
		got, err := s.Fetch(ctx, r)
		if err != nil || got.Digest != art.Digest {
			t.Errorf("Fetch(%s): %v", r, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "ingest")); err == nil {
		t.Error("the layout keeps oras's temporary folder")
	}
	// Two names with the same tag make the bare tag ambiguous.
	other1, err := WriteLayout(dir, module(90), nil, "other:1.0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fetch(ctx, LayoutPrefix+dir+":1.0"); err == nil || !strings.Contains(err.Error(), "names 2 packages") {
		t.Errorf("ambiguous tag: %v", err)
	}
	if got, err := s.Fetch(ctx, LayoutPrefix+dir+"@"+other1.Digest.String()); err != nil || got.Digest != other1.Digest {
		t.Errorf("second package by digest: %v", err)
	}
	if len(storeFiles(t, s)) != 1 { // only oci-layout: nothing copied into the store
		t.Errorf("an oci-layout fetch wrote to the local store: %v", storeFiles(t, s))
	}
	other := digest.FromString("nothing")
	if _, err := s.Fetch(ctx, LayoutPrefix+dir+"@"+other.String()); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown digest: %v", err)
	}
	if _, err := s.Fetch(ctx, LayoutPrefix+t.TempDir()+"@"+art.Digest.String()); err == nil || !strings.Contains(err.Error(), "not an OCI image layout") {
		t.Errorf("folder without a layout: %v", err)
	}
	// Flip a byte of the Wasm blob on disk.
	p := filepath.Join(dir, "blobs", "sha256", art.WasmDesc.Digest.Encoded())
	os.Chmod(p, 0o644)
	b, _ := os.ReadFile(p)
	b[len(b)-1] ^= 1
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fetch(ctx, LayoutPrefix+dir+"@"+art.Digest.String()); !errors.Is(err, ErrMismatch) {
		t.Errorf("corrupted layout blob: %v", err)
	}
}

func TestListInspectTag(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, Options{})
	a, err := s.Build(goldenModule(t), goldenConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := s.Build(module(50), nil)
	if prev, err := s.Tag(a.Digest, "hello:1.0"); err != nil || prev != "" {
		t.Fatal(prev, err)
	}
	if prev, err := s.Tag(b.Digest, "hello:1.0"); err != nil || prev != a.Digest {
		t.Fatalf("retag: previous %q, %v", prev, err)
	}
	s.Tag(a.Digest, "hello:1.0")
	s.Tag(a.Digest, "hello:latest")
	if _, err := s.Tag(digest.FromString("x"), "ghost:1"); err == nil {
		t.Error("tagging a digest that is not in the store succeeded")
	}
	if _, err := s.Tag(a.Digest, "Bad Name"); err == nil {
		t.Error("tagging with a bad name succeeded")
	}
	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Digest != a.Digest || strings.Join(list[0].Names, ",") != "hello:1.0,hello:latest" || list[1].Digest != b.Digest || len(list[1].Names) != 0 {
		t.Fatalf("list: %+v", list)
	}
	if list[0].Size != totalSize(a) {
		t.Errorf("size %d, want %d", list[0].Size, totalSize(a))
	}
	info, _, err := s.Inspect(ctx, "hello")
	if err != nil {
		t.Fatal(err)
	}
	if info.Digest != a.Digest || info.TOML == nil || info.Workload == nil || len(info.Workload.Files) != 3 || strings.Join(info.Names, ",") != "hello:1.0,hello:latest" {
		t.Errorf("inspect: %+v", info)
	}
	if _, _, err := s.Inspect(ctx, "nope:1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("inspect of a missing name: %v", err)
	}
	// A damaged blob shows in the list instead of failing it.
	p := filepath.Join(s.Dir(), "blobs", "sha256", b.WasmDesc.Digest.Encoded())
	os.Chmod(p, 0o644)
	os.WriteFile(p, []byte("junk"), 0o644)
	list, err = s.List(ctx)
	if err != nil || list[1].Err == "" {
		t.Errorf("damaged entry: %+v %v", list, err)
	}
}

func TestIndexIsAValidLayoutForOtherTools(t *testing.T) {
	s := newStore(t, Options{})
	a, _ := s.Build(module(60), nil)
	s.Tag(a.Digest, "tool:1")
	b, err := os.ReadFile(filepath.Join(s.Dir(), "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(b, &idx); err != nil || idx.SchemaVersion != 2 || len(idx.Manifests) != 1 || idx.Manifests[0].Annotations[ocispec.AnnotationRefName] != "tool:1" {
		t.Errorf("index.json: %s", b)
	}
	lb, _ := os.ReadFile(filepath.Join(s.Dir(), "oci-layout"))
	if !strings.Contains(string(lb), ocispec.ImageLayoutVersion) {
		t.Errorf("oci-layout: %s", lb)
	}
	// Re-opening an existing store keeps it; a folder with a bad oci-layout is refused.
	if _, err := Open(s.Dir(), Options{}); err != nil {
		t.Error(err)
	}
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "oci-layout"), []byte("{"), 0o644)
	if _, err := Open(bad, Options{}); err == nil {
		t.Error("a folder with a broken oci-layout file was opened")
	}
}

func TestConcurrentTags(t *testing.T) {
	// Two stores on one folder (as two processes) must not lose tags.
	dir := filepath.Join(t.TempDir(), "store")
	s1, _ := Open(dir, Options{})
	s2, _ := Open(dir, Options{})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s := s1
			if i%2 == 1 {
				s = s2
			}
			a, err := s.Build(module(100+i), nil)
			if err == nil {
				_, err = s.Tag(a.Digest, fmt.Sprintf("c:%d", i))
			}
			if err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	list, _ := s1.List(context.Background())
	if len(list) != 20 {
		t.Errorf("%d packages after 20 concurrent builds", len(list))
	}
}

func TestProgressOnlyWhenAsked(t *testing.T) {
	reg := newRegistry(t)
	ref := reg.host + "/progress/app:v1"
	publish(t, ref, module(70), nil)
	var buf bytes.Buffer
	s := newStore(t, Options{Progress: &buf})
	if _, err := s.Pull(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "wasm") || !strings.Contains(buf.String(), "done") {
		t.Errorf("progress output %q", buf.String())
	}
}

func TestCredentialsFromDockerConfig(t *testing.T) {
	// A registry that wants basic auth gets the credentials of the Docker
	// config file.
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	var mu sync.Mutex
	var sawAuth bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != "alice" || p != "s3cret" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		mu.Lock()
		sawAuth = true
		mu.Unlock()
		inner.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	dc := t.TempDir()
	t.Setenv("DOCKER_CONFIG", dc)
	cfg := fmt.Sprintf(`{"auths":{%q:{"auth":"YWxpY2U6czNjcmV0"}}}`, host) // alice:s3cret
	if err := os.WriteFile(filepath.Join(dc, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s := newStore(t, Options{})
	a, _ := s.Build(module(80), nil)
	s.Tag(a.Digest, host+"/auth/app:v1")
	if _, err := s.Push(context.Background(), host+"/auth/app:v1", ""); err != nil {
		t.Fatal(err)
	}
	if !sawAuth {
		t.Error("the registry never saw the credentials")
	}
	os.WriteFile(filepath.Join(dc, "config.json"), []byte(`{"auths":{}}`), 0o600)
	if _, err := newStore(t, Options{}).Pull(context.Background(), host+"/auth/app:v1"); err == nil {
		t.Error("pull without credentials succeeded")
	}
}

func TestDefaultDir(t *testing.T) {
	t.Setenv("CASTELLAN_STORE", "/x/store")
	if d, _ := DefaultDir(); d != "/x/store" {
		t.Errorf("CASTELLAN_STORE: %s", d)
	}
	t.Setenv("CASTELLAN_STORE", "")
	t.Setenv("XDG_DATA_HOME", "/data")
	if d, _ := DefaultDir(); d != filepath.Join("/data", "castellan", "store") {
		t.Errorf("XDG_DATA_HOME: %s", d)
	}
	t.Setenv("XDG_DATA_HOME", "")
	t.Setenv("HOME", "/home/u")
	if d, _ := DefaultDir(); d != filepath.Join("/home/u", ".local", "share", "castellan", "store") {
		t.Errorf("HOME: %s", d)
	}
}

// TestPushImageForm: --image publishes the image form (the same layers
// under an OCI image config, the workload digest annotated); the registry
// serves it under the tag; a pull of it is refused as no workload (the
// form is for containerd), and the local store keeps the package as is.
func TestPushImageForm(t *testing.T) {
	reg := newRegistry(t)
	s := newStore(t, Options{})
	art, err := s.Build(goldenModule(t), goldenConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Tag(art.Digest, "hello:1"); err != nil {
		t.Fatal(err)
	}
	ref := reg.host + "/apps/hello:v1-image"
	got, img, err := s.PushImage(context.Background(), "hello:1", ref)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := art.Image()
	if got.Digest != art.Digest || img.ManifestDesc.Digest != want.ManifestDesc.Digest {
		t.Fatalf("pushed %s / %s, want %s / %s", got.Digest, img.ManifestDesc.Digest, art.Digest, want.ManifestDesc.Digest)
	}
	resp, err := http.Get("http://" + reg.host + "/v2/apps/hello/manifests/v1-image")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(body, img.Manifest) {
		t.Fatalf("registry serves %s, want the image form", body)
	}
	for _, l := range img.Layers {
		r, err := http.Get("http://" + reg.host + "/v2/apps/hello/blobs/" + l.Digest.String())
		if err != nil || r.StatusCode != http.StatusOK {
			t.Fatalf("layer %s not in the registry: %v %v", l.Digest, r.Status, err)
		}
		r.Body.Close()
	}
	if _, err := newStore(t, Options{}).Pull(context.Background(), ref); !errors.Is(err, ErrNotWorkload) || !strings.Contains(err.Error(), "the image form of workload "+art.Digest.String()) {
		t.Fatalf("pull of the image form: %v, want ErrNotWorkload naming the image form", err)
	}
	if _, _, err := s.PushImage(context.Background(), "hello:1", reg.host+"/apps/hello@"+art.Digest.String()); err == nil || !strings.Contains(err.Error(), "pushed to a tag") {
		t.Fatalf("image form to a digest reference: %v", err)
	}
}
