// Package packages keeps workloads as OCI artifacts: in a local OCI
// image-layout store (the embedded default), in any OCI registry, and in
// image-layout folders for offline use.
//
// A package is the artifact that workload.New builds from a module and its
// config: one deterministic image manifest whose digest is the workload
// digest that `castellan run`, `package build`, `deploy` and the keep's
// certificate report. Registries and the network are untrusted (see
// DESIGN.md): every fetch checks each blob against its digest and size,
// checks that the manifest has the shape of a Castellan workload, and
// rebuilds the artifact with workload.New to require the same digest. A
// layer larger than the limit is refused from its descriptor, before any
// byte is read.
//
// The local store writes blobs to a temporary file and renames them into
// place once verified, writes the manifest after its blobs, and rewrites
// index.json with write-then-rename, all under a file lock; a write that
// fails (a full disk) removes what it created, so a failed or interrupted
// build or pull leaves nothing half-written.
package packages

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/castellan-dev/castellan/internal/workload"
)

// Default limits.
const (
	DefaultMaxLayerSize = 256 << 20 // the Wasm layer
	MaxManifestSize     = 4 << 20   // the OCI distribution spec's suggested limit
	MaxConfigBlobSize   = 1 << 20   // the config JSON and the TOML layer
)

// Options tune a Store. The zero value is usable.
type Options struct {
	// MaxLayerSize bounds the Wasm layer (0: DefaultMaxLayerSize).
	MaxLayerSize int64
	// PlainHTTP talks to registries over http instead of https.
	PlainHTTP bool
	// Progress, when not nil, receives progress bars of pushes and pulls
	// (meant for a terminal).
	Progress io.Writer
	// Warnf receives warnings such as a tag that moved; nil drops them.
	Warnf func(format string, a ...any)
	// Client talks to registries; nil means an oras auth client with the
	// credentials of the Docker config file and its helpers, whose
	// connections are abandoned after StallTimeout without progress.
	Client remote.Client
	// StallTimeout is how long a registry connection may make no progress
	// (0: DefaultStallTimeout).
	StallTimeout time.Duration
}

func (o *Options) stallLimit() time.Duration {
	if o.StallTimeout > 0 {
		return o.StallTimeout
	}
	return DefaultStallTimeout
}

// Store is an OCI image-layout folder holding packages.
type Store struct {
	Options
	dir   string
	blobs dirBlobs
}

// DefaultDir is the local store's folder: $CASTELLAN_STORE, else
// $XDG_DATA_HOME/castellan/store, else ~/.local/share/castellan/store.
func DefaultDir() (string, error) {
	if d := os.Getenv("CASTELLAN_STORE"); d != "" {
		return d, nil
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "castellan", "store"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no folder for the package store (set CASTELLAN_STORE): %w", err)
	}
	return filepath.Join(home, ".local", "share", "castellan", "store"), nil
}

// Open opens the store in dir, creating an empty OCI image layout there if
// the folder does not exist or is empty; a folder that holds other files is
// refused.
func Open(dir string, opts Options) (*Store, error) {
	if dir == "" {
		return nil, fmt.Errorf("package store: no folder given")
	}
	layoutPath := filepath.Join(dir, ocispec.ImageLayoutFile)
	b, err := readRegular(layoutPath, maxLayoutFile)
	if errors.Is(err, os.ErrNotExist) {
		// Never turn a folder of other files into a layout.
		if ents, _ := os.ReadDir(dir); len(ents) > 0 {
			return nil, fmt.Errorf("%s is not empty and not an OCI image layout (no %s file)", dir, ocispec.ImageLayoutFile)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, ocispec.ImageBlobsDir), 0o755); err != nil {
		return nil, fmt.Errorf("package store %s: %w", dir, err)
	}
	switch {
	case errors.Is(err, os.ErrNotExist):
		lb, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
		if err := writeFileAtomic(layoutPath, lb); err != nil {
			return nil, fmt.Errorf("package store %s: %w", dir, err)
		}
	case err != nil:
		return nil, fmt.Errorf("package store %s: %w", dir, err)
	default:
		var l ocispec.ImageLayout
		if err := json.Unmarshal(b, &l); err != nil || l.Version != ocispec.ImageLayoutVersion {
			return nil, fmt.Errorf("package store %s: %s is not an OCI image layout version %s", dir, layoutPath, ocispec.ImageLayoutVersion)
		}
	}
	removeStaleIngest(dir)
	return openExisting(dir, opts)
}

// OpenLayout opens an existing OCI image-layout folder without creating
// anything, for oci-layout: references.
func OpenLayout(dir string, opts Options) (*Store, error) {
	b, err := readRegular(filepath.Join(dir, ocispec.ImageLayoutFile), maxLayoutFile)
	if err != nil {
		return nil, fmt.Errorf("%s: not an OCI image layout: %w", dir, err)
	}
	var l ocispec.ImageLayout
	if err := json.Unmarshal(b, &l); err != nil || l.Version != ocispec.ImageLayoutVersion {
		return nil, fmt.Errorf("%s: oci-layout file is not OCI image layout version %s", dir, ocispec.ImageLayoutVersion)
	}
	return openExisting(dir, opts)
}

func openExisting(dir string, opts Options) (*Store, error) {
	return &Store{Options: opts, dir: dir, blobs: dirBlobs{dir}}, nil
}

// Dir is the store's folder.
func (s *Store) Dir() string { return s.dir }

func (s *Store) maxLayer() int64 {
	if s.MaxLayerSize > 0 {
		return s.MaxLayerSize
	}
	return DefaultMaxLayerSize
}

func (s *Store) warnf(format string, a ...any) {
	if s.Warnf != nil {
		s.Warnf(format, a...)
	}
}

var wasmMagic = []byte("\x00asm\x01\x00\x00\x00")

// Build stores the package of a module and its config (nil for none) and
// returns its artifact; the manifest is untagged until Tag.
func (s *Store) Build(wasm, config []byte) (*workload.Artifact, error) {
	if !bytes.HasPrefix(wasm, wasmMagic) {
		return nil, fmt.Errorf("not a WebAssembly module (no \\0asm version 1 header)")
	}
	art, err := workload.New(wasm, config)
	if err != nil {
		return nil, err
	}
	if err := s.put(context.Background(), art); err != nil {
		return nil, err
	}
	return art, nil
}

// put writes an artifact's blobs, then its manifest, then records the
// manifest in index.json, all under the store's lock. Blobs are verified,
// written to a temporary file in ingest/ and renamed into place (writeBlob).
// When any step fails, the blobs this put created are removed again: a
// failed write leaves the store as it was (a full disk included).
func (s *Store) put(ctx context.Context, art *workload.Artifact) (err error) {
	unlock, err := lockDir(s.dir)
	if err != nil {
		return fmt.Errorf("package store %s: lock: %w", s.dir, err)
	}
	defer unlock()
	var created []string
	defer func() {
		if err != nil {
			// Under the lock no other writer can have referenced them.
			for _, p := range created {
				os.Remove(p)
			}
		}
	}()
	blobs := append(artifactBlobs(art), blob{"manifest", art.ManifestDesc, art.Manifest})
	for _, b := range blobs {
		if err := ctx.Err(); err != nil {
			return err
		}
		p, made, err := s.writeBlob(b.desc, b.data)
		if made {
			created = append(created, p)
		}
		if err != nil {
			return fmt.Errorf("package store %s: write %s %s: %w", s.dir, b.what, b.desc.Digest, err)
		}
	}
	return s.updateIndexLocked(func(idx *ocispec.Index) error {
		for _, m := range idx.Manifests {
			if m.Digest == art.Digest {
				return nil
			}
		}
		idx.Manifests = append(idx.Manifests, art.ManifestDesc)
		return nil
	})
}

// blob is one blob of an artifact with its bytes.
type blob struct {
	what string
	desc ocispec.Descriptor
	data []byte
}

// artifactBlobs lists the config and layers of an artifact, the order in
// which they must exist before the manifest.
func artifactBlobs(art *workload.Artifact) []blob {
	bs := []blob{{"config", art.ConfigDesc, art.ConfigBlob}, {"wasm", art.WasmDesc, art.Wasm}}
	if art.TOMLDesc != nil {
		bs = append(bs, blob{"config", *art.TOMLDesc, art.Config})
	}
	return bs
}

// Tag points name ("hello:1.0", "registry.example.com/hello:1.0") at the
// manifest with digest d, which must be in the store. It returns the digest
// the name pointed at before, or "" if none or the same.
func (s *Store) Tag(d digest.Digest, name string) (previous digest.Digest, err error) {
	ref, err := ParseRef(name)
	if err != nil {
		return "", err
	}
	if ref.Tag == "" || ref.Digest != "" || ref.Layout != "" {
		return "", fmt.Errorf("tag %q: want NAME:TAG", name)
	}
	key := ref.Name()
	err = s.updateIndex(func(idx *ocispec.Index) error {
		var desc *ocispec.Descriptor
		for i := range idx.Manifests {
			if idx.Manifests[i].Digest == d {
				desc = &idx.Manifests[i]
				break
			}
		}
		if desc == nil {
			return fmt.Errorf("tag %s: %s is not in the package store %s: %w", key, d, s.dir, ErrNotFound)
		}
		tagged := ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size,
			Annotations: map[string]string{ocispec.AnnotationRefName: key}}
		var kept []ocispec.Descriptor
		var prevDesc ocispec.Descriptor
		for _, m := range idx.Manifests {
			if m.Annotations[ocispec.AnnotationRefName] == key {
				if m.Digest != d {
					previous, prevDesc = m.Digest, plain(m)
				}
				continue
			}
			if m.Digest == d && m.Annotations[ocispec.AnnotationRefName] == "" {
				continue // the untagged entry gives way to the tagged one
			}
			kept = append(kept, m)
		}
		kept = append(kept, tagged)
		if previous != "" {
			// The old manifest stays in the store, untagged, so that it can
			// still be named by digest.
			found := false
			for _, m := range kept {
				found = found || m.Digest == previous
			}
			if !found {
				kept = append(kept, prevDesc)
			}
		}
		idx.Manifests = kept
		return nil
	})
	return previous, err
}

// resolve finds the manifest descriptor a store reference names.
func (s *Store) resolve(ref Ref) (ocispec.Descriptor, error) {
	idx, err := s.readIndex()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if ref.Digest != "" {
		for _, m := range idx.Manifests {
			if m.Digest == ref.Digest {
				return plain(m), nil
			}
		}
		return ocispec.Descriptor{}, fmt.Errorf("%s: %s is not in %s: %w", ref, ref.Digest, s.where(), errdef.ErrNotFound)
	}
	if ref.Layout == "" {
		for _, m := range idx.Manifests {
			if m.Annotations[ocispec.AnnotationRefName] == ref.Name() {
				return plain(m), nil
			}
		}
	} else {
		// In an image layout, oras and skopeo write the bare tag as the
		// ref.name; castellan's -o -t writes NAME:TAG. The bare tag wins;
		// NAME:TAG must be unambiguous.
		var found []ocispec.Descriptor
		for _, m := range idx.Manifests {
			n := m.Annotations[ocispec.AnnotationRefName]
			if n == ref.Tag {
				return plain(m), nil
			}
			if strings.HasSuffix(n, ":"+ref.Tag) {
				found = append(found, m)
			}
		}
		if len(found) == 1 {
			return plain(found[0]), nil
		}
		if len(found) > 1 {
			return ocispec.Descriptor{}, fmt.Errorf("%s: tag %s names %d packages in %s; use @sha256:DIGEST", ref, ref.Tag, len(found), ref.Layout)
		}
	}
	return ocispec.Descriptor{}, fmt.Errorf("%s: no such package in %s: %w", ref, s.where(), errdef.ErrNotFound)
}

func (s *Store) where() string { return "the package store " + s.dir }

func plain(d ocispec.Descriptor) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}
}

// readIndex reads index.json; a missing one is an empty index.
func (s *Store) readIndex() (*ocispec.Index, error) {
	p := filepath.Join(s.dir, ocispec.ImageIndexFile)
	f, err := openRegular(p)
	if errors.Is(err, os.ErrNotExist) {
		return newIndex(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("package store: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxManifestSize*4+1))
	if err != nil {
		return nil, fmt.Errorf("package store: %s: %w", p, err)
	}
	if len(b) > MaxManifestSize*4 {
		return nil, fmt.Errorf("package store: %s is larger than %d bytes", p, MaxManifestSize*4)
	}
	idx := newIndex()
	if err := json.Unmarshal(b, idx); err != nil {
		return nil, fmt.Errorf("package store: %s: %w", p, err)
	}
	return idx, nil
}

func newIndex() *ocispec.Index {
	return &ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
}

// updateIndex applies fn to index.json under the store's lock and writes
// the result atomically.
func (s *Store) updateIndex(fn func(*ocispec.Index) error) error {
	unlock, err := lockDir(s.dir)
	if err != nil {
		return fmt.Errorf("package store %s: lock: %w", s.dir, err)
	}
	defer unlock()
	return s.updateIndexLocked(fn)
}

// updateIndexLocked is updateIndex for a caller that holds the lock.
func (s *Store) updateIndexLocked(fn func(*ocispec.Index) error) error {
	idx, err := s.readIndex()
	if err != nil {
		return err
	}
	if err := fn(idx); err != nil {
		return err
	}
	sort.SliceStable(idx.Manifests, func(i, j int) bool {
		a, b := idx.Manifests[i], idx.Manifests[j]
		if an, bn := a.Annotations[ocispec.AnnotationRefName], b.Annotations[ocispec.AnnotationRefName]; an != bn {
			return an < bn
		}
		return a.Digest < b.Digest
	})
	b, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(s.dir, ocispec.ImageIndexFile), b); err != nil {
		return fmt.Errorf("package store %s: %w", s.dir, err)
	}
	return nil
}

// writeFileAtomic writes b to a temporary file beside path, syncs it and
// renames it over path.
func writeFileAtomic(path string, b []byte) error {
	return writeVia(filepath.Dir(path), "."+filepath.Base(path)+".*", path, b, 0o644)
}

// writeVia writes b to a new temporary file in tmpDir (named after
// pattern, as os.CreateTemp does), syncs it, gives it mode and renames it
// to path; on any error the temporary file is removed.
func writeVia(tmpDir, pattern, path string, b []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(tmpDir, pattern)
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, mode)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// Entry is one manifest in the store, with the names that point at it.
type Entry struct {
	Digest digest.Digest `json:"digest"`
	Names  []string      `json:"names"`
	Size   int64         `json:"size"` // manifest plus blobs, 0 if unreadable
	Err    string        `json:"error,omitempty"`
}

// List lists the store's manifests, sorted by first name then digest.
func (s *Store) List(ctx context.Context) ([]Entry, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	byDigest := map[digest.Digest]*Entry{}
	var order []digest.Digest
	for _, m := range idx.Manifests {
		e := byDigest[m.Digest]
		if e == nil {
			e = &Entry{Digest: m.Digest}
			byDigest[m.Digest] = e
			order = append(order, m.Digest)
			if art, err := s.fetchArtifact(ctx, s.blobs, s.where(), Ref{Digest: m.Digest}, plain(m)); err != nil {
				e.Err = err.Error()
			} else {
				e.Size = totalSize(art)
			}
		}
		if n := m.Annotations[ocispec.AnnotationRefName]; n != "" {
			e.Names = append(e.Names, n)
		}
	}
	out := make([]Entry, 0, len(order))
	for _, d := range order {
		e := byDigest[d]
		sort.Strings(e.Names)
		out = append(out, *e)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := strings.Join(out[i].Names, ","), strings.Join(out[j].Names, ",")
		if (a == "") != (b == "") {
			return a != "" // named packages first
		}
		if a != b {
			return a < b
		}
		return out[i].Digest < out[j].Digest
	})
	return out, nil
}

func totalSize(a *workload.Artifact) int64 {
	n := a.ManifestDesc.Size + a.ConfigDesc.Size + a.WasmDesc.Size
	if a.TOMLDesc != nil {
		n += a.TOMLDesc.Size
	}
	return n
}
