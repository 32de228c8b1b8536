package packages

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/errdef"

	"github.com/castellan-dev/castellan/internal/workload"
)

// Errors a fetch may wrap; test them with errors.Is.
var (
	// ErrNotWorkload: the manifest is not a Castellan workload.
	ErrNotWorkload = errors.New("not a Castellan workload")
	// ErrTooLarge: a blob is over its size limit.
	ErrTooLarge = errors.New("over the size limit")
	// ErrMismatch: bytes do not match their digest or size, or a tag
	// resolved to a digest other than the pinned one.
	ErrMismatch = errors.New("content does not match its digest")
	// ErrNotFound: no such package or blob.
	ErrNotFound = errdef.ErrNotFound
)

// Limit names a size limit of a package's parts.
type Limit string

// The size limits; only LimitLayer can be changed (Options.MaxLayerSize,
// `--max-layer-size`).
const (
	LimitManifest Limit = "manifest"   // MaxManifestSize
	LimitConfig   Limit = "config"     // MaxConfigBlobSize: the config JSON and the TOML layer
	LimitLayer    Limit = "Wasm layer" // Options.MaxLayerSize
)

// SizeError is a blob over the limit that applies to it; it wraps
// ErrTooLarge.
type SizeError struct {
	What   string // "manifest", "config", "wasm", or a media type
	Digest digest.Digest
	Size   int64
	Limit  Limit
	Max    int64 // the limit's value
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("%s %s is %d bytes, over the %s limit of %d bytes", e.What, e.Digest, e.Size, e.Limit, e.Max)
}

func (e *SizeError) Unwrap() error { return ErrTooLarge }

// limitFor returns the limit that applies to a blob of the given media
// type in a workload manifest.
func (s *Store) limitFor(mediaType string) (Limit, int64) {
	if mediaType == workload.MediaTypeWasm {
		return LimitLayer, s.maxLayer()
	}
	return LimitConfig, MaxConfigBlobSize
}

// fetchArtifact reads the package whose manifest is desc from src (a
// store's blobs, a registry, an image layout), verifying every blob, and
// requires the manifest to be exactly the one workload.New builds from the
// layers it lists.
func (s *Store) fetchArtifact(ctx context.Context, src content.Fetcher, from string, ref Ref, desc ocispec.Descriptor) (*workload.Artifact, error) {
	if ref.Digest != "" && desc.Digest != ref.Digest {
		return nil, fmt.Errorf("%s: %s resolved to %s, not the pinned digest: %w", ref, from, desc.Digest, ErrMismatch)
	}
	if desc.MediaType == "" {
		desc.MediaType = workload.MediaTypeManifest
	}
	if desc.MediaType != workload.MediaTypeManifest {
		return nil, fmt.Errorf("%s: manifest has media type %q, want %q: %w", ref, desc.MediaType, workload.MediaTypeManifest, ErrNotWorkload)
	}
	raw, err := s.readBlob(ctx, src, from, "manifest", desc, LimitManifest, MaxManifestSize)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%s: manifest %s is not valid JSON: %v: %w", ref, desc.Digest, err, ErrNotWorkload)
	}
	if err := s.checkShape(&m); err != nil {
		return nil, fmt.Errorf("%s: manifest %s: %w", ref, desc.Digest, err)
	}
	if _, err := s.readBlob(ctx, src, from, "config", m.Config, LimitConfig, MaxConfigBlobSize); err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	var wasm, toml []byte
	for _, l := range m.Layers {
		if l.MediaType == workload.MediaTypeWasm {
			if wasm, err = s.readBlob(ctx, src, from, "wasm", l, LimitLayer, s.maxLayer()); err != nil {
				return nil, fmt.Errorf("%s: %w", ref, err)
			}
		} else {
			if toml, err = s.readBlob(ctx, src, from, "config", l, LimitConfig, MaxConfigBlobSize); err != nil {
				return nil, fmt.Errorf("%s: %w", ref, err)
			}
		}
	}
	art, err := workload.New(wasm, toml)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	if art.Digest != desc.Digest {
		return nil, fmt.Errorf("%s: manifest %s is not in Castellan's canonical form (its layers give %s): %w", ref, desc.Digest, art.Digest, ErrNotWorkload)
	}
	return art, nil
}

// checkShape checks the manifest's media types and descriptor sizes before
// any blob is read: one Wasm layer, at most one TOML layer, nothing else.
func (s *Store) checkShape(m *ocispec.Manifest) error {
	if m.SchemaVersion != 2 {
		return fmt.Errorf("schema version %d, want 2: %w", m.SchemaVersion, ErrNotWorkload)
	}
	if m.MediaType != workload.MediaTypeManifest {
		return fmt.Errorf("media type %q, want %q: %w", m.MediaType, workload.MediaTypeManifest, ErrNotWorkload)
	}
	if m.Config.MediaType != workload.MediaTypeConfig {
		if d := m.Annotations[workload.AnnotationWorkloadDigest]; d != "" && m.Config.MediaType == ocispec.MediaTypeImageConfig {
			return fmt.Errorf("the image form of workload %s (package push --image, for containerd), not the package: pull the package's own push: %w", cleanText(d, 80), ErrNotWorkload)
		}
		return fmt.Errorf("config media type %q, want %q: %w", m.Config.MediaType, workload.MediaTypeConfig, ErrNotWorkload)
	}
	var nWasm, nTOML int
	for i, l := range m.Layers {
		switch l.MediaType {
		case workload.MediaTypeWasm:
			nWasm++
		case workload.MediaTypeTOML:
			nTOML++
		default:
			return fmt.Errorf("layer %d has media type %q (want %q or %q): %w", i, l.MediaType, workload.MediaTypeWasm, workload.MediaTypeTOML, ErrNotWorkload)
		}
	}
	if nWasm != 1 || nTOML > 1 {
		return fmt.Errorf("%d Wasm and %d config layers, want exactly one Wasm layer and at most one config layer: %w", nWasm, nTOML, ErrNotWorkload)
	}
	for _, d := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		if err := d.Digest.Validate(); err != nil || d.Digest.Algorithm() != digest.SHA256 {
			return fmt.Errorf("blob digest %q is not a sha256 digest: %w", d.Digest, ErrNotWorkload)
		}
		if d.Size < 0 {
			return fmt.Errorf("blob %s has negative size %d: %w", d.Digest, d.Size, ErrNotWorkload)
		}
		if name, limit := s.limitFor(d.MediaType); d.Size > limit {
			return &SizeError{What: d.MediaType + " blob", Digest: d.Digest, Size: d.Size, Limit: name, Max: limit}
		}
	}
	return nil
}

// readBlob reads one blob, refusing it from its descriptor if it is over
// limit, and verifies its size and digest while reading.
func (s *Store) readBlob(ctx context.Context, src content.Fetcher, from, what string, desc ocispec.Descriptor, name Limit, limit int64) ([]byte, error) {
	if desc.Size < 0 {
		return nil, fmt.Errorf("%s %s has negative size: %w", what, desc.Digest, ErrMismatch)
	}
	if desc.Size > limit {
		return nil, &SizeError{What: what, Digest: desc.Digest, Size: desc.Size, Limit: name, Max: limit}
	}
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("%s digest %q: %v: %w", what, desc.Digest, err, ErrMismatch)
	}
	rc, err := src.Fetch(ctx, desc)
	if err != nil {
		if errors.Is(err, errdef.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s %s is missing from %s: %w", what, desc.Digest, from, ErrNotFound)
		}
		return nil, fmt.Errorf("%s %s from %s: %w", what, desc.Digest, from, fromRegistry(err))
	}
	defer rc.Close()
	bar := s.newBar(what, desc)
	vr := content.NewVerifyReader(bar.wrap(rc), desc)
	buf := make([]byte, desc.Size)
	if _, err := io.ReadFull(vr, buf); err != nil {
		bar.done(false)
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s %s from %s is shorter than its %d bytes: %w", what, desc.Digest, from, desc.Size, ErrMismatch)
		}
		return nil, fmt.Errorf("%s %s from %s: %w", what, desc.Digest, from, fromRegistry(err))
	}
	if err := vr.Verify(); err != nil {
		bar.done(false)
		switch {
		case errors.Is(err, content.ErrTrailingData):
			return nil, fmt.Errorf("%s %s from %s is longer than its %d bytes: %w", what, desc.Digest, from, desc.Size, ErrMismatch)
		case errors.Is(err, content.ErrMismatchedDigest):
			return nil, fmt.Errorf("%s %s from %s: %w", what, desc.Digest, from, ErrMismatch)
		}
		return nil, fmt.Errorf("%s %s from %s: %w", what, desc.Digest, from, fromRegistry(err))
	}
	bar.done(true)
	return buf, nil
}
