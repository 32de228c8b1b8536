package packages

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Removed is what Store.Remove took out of the store.
type Removed struct {
	Names     []string        // names (NAME:TAG) removed
	Manifests []digest.Digest // manifests no name points at any more, removed
	Blobs     int             // blobs deleted: no manifest in the store uses them
	Bytes     int64           // their size
}

// Remove takes the packages refs name out of the local store: a NAME:TAG
// reference removes that name, and the manifest with it when no other name
// points at it; a pinned reference (NAME@sha256:... or @sha256:...) removes
// the manifest and every name of it. Then the blobs that no manifest in the
// store uses are deleted. Every reference must name something in the store,
// or nothing is removed. Both steps hold the store's lock; a build or pull
// that wrote blobs before taking the lock writes again what went missing.
func (s *Store) Remove(ctx context.Context, refs []string) (*Removed, error) {
	parsed := make([]Ref, 0, len(refs))
	for _, r := range refs {
		ref, err := ParseRef(r)
		if err != nil {
			return nil, err
		}
		if ref.Layout != "" {
			return nil, fmt.Errorf("%s: package rm removes from the local store, not from an oci-layout folder", r)
		}
		parsed = append(parsed, ref)
	}
	out := &Removed{}
	err := s.updateIndex(func(idx *ocispec.Index) error {
		names := map[string]bool{}          // names to remove
		digests := map[digest.Digest]bool{} // manifests to remove whole
		for _, ref := range parsed {
			found := false
			for _, m := range idx.Manifests {
				switch {
				case ref.Digest != "" && m.Digest == ref.Digest:
					found, digests[m.Digest] = true, true
				case ref.Digest == "" && m.Annotations[ocispec.AnnotationRefName] == ref.Name():
					found, names[ref.Name()] = true, true
				}
			}
			if !found {
				return fmt.Errorf("%s: no such package in %s: %w", ref, s.where(), ErrNotFound)
			}
		}
		// A manifest goes with its last name; untagged manifests that no
		// reference named stay (they can still be named by digest).
		named, lostName := map[digest.Digest]bool{}, map[digest.Digest]bool{}
		for _, m := range idx.Manifests {
			switch n := m.Annotations[ocispec.AnnotationRefName]; {
			case names[n]:
				lostName[m.Digest] = true
			case n != "":
				named[m.Digest] = true
			}
		}
		for d := range lostName {
			if !named[d] {
				digests[d] = true
			}
		}
		var kept []ocispec.Descriptor
		for _, m := range idx.Manifests {
			n := m.Annotations[ocispec.AnnotationRefName]
			if !digests[m.Digest] && !names[n] {
				kept = append(kept, m)
				continue
			}
			if n != "" {
				out.Names = append(out.Names, n)
			}
		}
		for d := range digests {
			out.Manifests = append(out.Manifests, d)
		}
		slices.Sort(out.Manifests)
		idx.Manifests = kept
		return nil
	})
	if err != nil {
		return nil, err
	}
	out.Blobs, out.Bytes, err = s.collect(ctx)
	return out, err
}

// collect deletes, under the store's lock, the blobs that no manifest
// listed in index.json uses. A manifest that cannot be read leaves every
// blob in place.
func (s *Store) collect(ctx context.Context) (int, int64, error) {
	unlock, err := lockDir(s.dir)
	if err != nil {
		return 0, 0, fmt.Errorf("package store %s: lock: %w", s.dir, err)
	}
	defer unlock()
	idx, err := s.readIndex()
	if err != nil {
		return 0, 0, err
	}
	used := map[digest.Digest]bool{}
	for _, m := range idx.Manifests {
		used[m.Digest] = true
		b, err := s.readBlob(ctx, s.blobs, s.where(), "manifest", plain(m), LimitManifest, MaxManifestSize)
		if err != nil {
			return 0, 0, fmt.Errorf("package store %s: manifest %s: %w (no blob was deleted)", s.dir, m.Digest, err)
		}
		var man ocispec.Manifest
		if err := json.Unmarshal(b, &man); err != nil {
			return 0, 0, fmt.Errorf("package store %s: manifest %s: %w (no blob was deleted)", s.dir, m.Digest, err)
		}
		used[man.Config.Digest] = true
		for _, l := range man.Layers {
			used[l.Digest] = true
		}
	}
	dir := filepath.Join(s.dir, ocispec.ImageBlobsDir, string(digest.SHA256))
	ents, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return 0, 0, nil
		}
		return 0, 0, fmt.Errorf("package store %s: %w", s.dir, err)
	}
	n, size := 0, int64(0)
	for _, ent := range ents {
		d := digest.NewDigestFromEncoded(digest.SHA256, ent.Name())
		if d.Validate() != nil || !ent.Type().IsRegular() || used[d] {
			continue // not a blob (a temporary file of a write), or in use
		}
		info, err := ent.Info()
		if err != nil {
			continue
		}
		if err := os.Remove(filepath.Join(dir, ent.Name())); err != nil {
			return n, size, fmt.Errorf("package store %s: %w", s.dir, err)
		}
		n++
		size += info.Size()
	}
	return n, size, nil
}
