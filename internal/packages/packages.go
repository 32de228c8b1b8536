package packages

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/workload"
)

// Fetch returns the package a reference names, for deploy, with every
// check: "name:tag" and "name@sha256:..." come from the local store,
// "registry/repo:tag" is pulled into the local store first, and
// "oci-layout:DIR@sha256:..." is read from an image-layout folder offline.
// Every blob is verified against its digest and size, the manifest must be
// a Castellan workload in canonical form, and a pinned digest must match.
func (s *Store) Fetch(ctx context.Context, reference string) (*workload.Artifact, error) {
	ref, err := ParseRef(reference)
	if err != nil {
		return nil, err
	}
	if ref.Remote() {
		if ref.Digest != "" {
			// A pinned digest is immutable: a copy already in the local
			// store (checked again now) serves offline. A damaged copy is
			// fetched again, which repairs it (writeBlob).
			if desc, err := s.resolve(Ref{Digest: ref.Digest}); err == nil {
				art, err := s.fetchArtifact(ctx, s.blobs, s.where(), ref, desc)
				if err == nil || !(errors.Is(err, ErrMismatch) || errors.Is(err, ErrNotFound)) {
					return art, err
				}
				s.warnf("%v; fetching it again from registry %s", err, ref.Registry)
			}
		}
		return s.pull(ctx, ref)
	}
	return s.fetchLocal(ctx, reference)
}

// fetchLocal reads a package from the local store (any reference, by its
// name there) or from an oci-layout folder.
func (s *Store) fetchLocal(ctx context.Context, reference string) (*workload.Artifact, error) {
	ref, err := ParseRef(reference)
	if err != nil {
		return nil, err
	}
	st := s
	if ref.Layout != "" {
		if st, err = OpenLayout(ref.Layout, s.Options); err != nil {
			return nil, err
		}
	}
	desc, err := st.resolve(ref)
	if err != nil {
		return nil, err
	}
	from := st.where()
	if ref.Layout != "" {
		from = LayoutPrefix + ref.Layout
	}
	return st.fetchArtifact(ctx, st.blobs, from, ref, desc)
}

// BlobInfo describes one blob of a package.
type BlobInfo struct {
	MediaType string        `json:"mediaType"`
	Digest    digest.Digest `json:"digest"`
	Size      int64         `json:"size"`
}

// Info is what inspect shows of a package.
type Info struct {
	Reference string        `json:"reference"`
	Source    string        `json:"source"` // where it was read from
	Digest    digest.Digest `json:"digest"`
	Names     []string      `json:"names,omitempty"` // local store names pointing at it
	Size      int64         `json:"size"`            // all blobs
	Manifest  BlobInfo      `json:"manifest"`
	Config    BlobInfo      `json:"config"`
	Wasm      BlobInfo      `json:"wasm"`
	TOML      *BlobInfo     `json:"toml,omitempty"`
	// Workload is the parsed TOML config (nil when the package has none or
	// it does not parse; ConfigError then says why).
	Workload    *config.Config `json:"-"`
	ConfigError string         `json:"configError,omitempty"`
}

// Inspect fetches and verifies a package like Fetch, but a registry
// reference is read into memory without being stored.
func (s *Store) Inspect(ctx context.Context, reference string) (*Info, *workload.Artifact, error) {
	ref, err := ParseRef(reference)
	if err != nil {
		return nil, nil, err
	}
	var art *workload.Artifact
	source := s.where()
	switch {
	case ref.Remote():
		source = "registry " + ref.Registry
		art, err = s.fetchRemote(ctx, ref)
	case ref.Layout != "":
		source = LayoutPrefix + ref.Layout
		art, err = s.fetchLocal(ctx, reference)
	default:
		art, err = s.fetchLocal(ctx, reference)
	}
	if err != nil {
		return nil, nil, err
	}
	info := &Info{
		Reference: ref.String(),
		Source:    source,
		Digest:    art.Digest,
		Size:      totalSize(art),
		Manifest:  blobInfo(art.ManifestDesc),
		Config:    blobInfo(art.ConfigDesc),
		Wasm:      blobInfo(art.WasmDesc),
	}
	if !ref.Remote() && ref.Layout == "" {
		if idx, err := s.readIndex(); err == nil {
			for _, m := range idx.Manifests {
				if n := m.Annotations[ocispec.AnnotationRefName]; n != "" && m.Digest == art.Digest {
					info.Names = append(info.Names, n)
				}
			}
		}
	}
	if art.TOMLDesc != nil {
		b := blobInfo(*art.TOMLDesc)
		info.TOML = &b
		cfg, err := config.Parse("config of "+ref.String(), art.Config)
		if err != nil {
			info.ConfigError = err.Error()
		} else {
			info.Workload = cfg
		}
	}
	return info, art, nil
}

func blobInfo(d ocispec.Descriptor) BlobInfo {
	return BlobInfo{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}
}

// WriteLayout builds the package of a module and its config into the
// image-layout folder dir (created if needed), tagged with tag if not "".
func WriteLayout(dir string, wasm, cfg []byte, tag string) (*workload.Artifact, error) {
	st, err := Open(dir, Options{})
	if err != nil {
		return nil, err
	}
	art, err := st.Build(wasm, cfg)
	if err != nil {
		return nil, err
	}
	// The blob writer's temporary folder is empty now; an image layout
	// for others to read is tidier without it.
	os.Remove(filepath.Join(dir, "ingest"))
	if tag != "" {
		if _, err := st.Tag(art.Digest, tag); err != nil {
			return nil, err
		}
	}
	return art, nil
}

// String is a one-line summary of the source, for messages.
func (i *Info) String() string {
	return fmt.Sprintf("%s %s (%s)", i.Reference, i.Digest, FormatSize(i.Size))
}
