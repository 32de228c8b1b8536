// Package workload defines a workload's identity. A workload is a Wasm
// module plus its optional TOML config; its digest is the digest of a
// deterministic OCI image manifest built from those two blobs, with no
// timestamps or annotations. `castellan run`, `castellan package build`,
// `castellan deploy` and the keep's certificate all report this digest,
// and the keep computes it from the bytes it actually loaded.
package workload

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media types of a Castellan workload artifact. The config and Wasm layer
// types follow the CNCF Wasm OCI artifact layout.
const (
	MediaTypeConfig   = "application/vnd.wasm.config.v0+json"
	MediaTypeWasm     = "application/wasm"
	MediaTypeTOML     = "application/vnd.castellan.workload.config.v1+toml"
	MediaTypeManifest = ocispec.MediaTypeImageManifest
)

// WasmConfig is the OCI config blob of a Wasm artifact.
type WasmConfig struct {
	Architecture string   `json:"architecture"`
	OS           string   `json:"os"`
	LayerDigests []string `json:"layerDigests"`
}

// Artifact is a workload as OCI blobs: every byte that the digest covers.
type Artifact struct {
	Wasm   []byte // the module
	Config []byte // the TOML config; nil when the workload has none

	ConfigBlob []byte // the WasmConfig JSON
	Manifest   []byte // the image manifest JSON
	Digest     digest.Digest

	ManifestDesc, ConfigDesc, WasmDesc ocispec.Descriptor
	TOMLDesc                           *ocispec.Descriptor // nil when Config is nil
}

// New builds the artifact of a module and its config (nil for none). The
// same two inputs always give the same manifest bytes and digest.
func New(wasm, config []byte) (*Artifact, error) {
	return NewSummed(wasm, sha256.Sum256(wasm), config)
}

// NewSummed is New for a module whose SHA-256 the caller computed from
// these very bytes as they arrived (a keep hashes a delivered module while
// it receives it, instead of once more after). wasmSum must be
// sha256.Sum256(wasm).
func NewSummed(wasm []byte, wasmSum [sha256.Size]byte, config []byte) (*Artifact, error) {
	if len(wasm) == 0 {
		return nil, fmt.Errorf("workload: the Wasm module is empty")
	}
	a := &Artifact{Wasm: wasm, Config: config}
	a.WasmDesc = ocispec.Descriptor{MediaType: MediaTypeWasm, Digest: digest.NewDigestFromBytes(digest.SHA256, wasmSum[:]), Size: int64(len(wasm))}
	layers := []ocispec.Descriptor{a.WasmDesc}
	if config != nil {
		d := descriptor(MediaTypeTOML, config)
		a.TOMLDesc = &d
		layers = append(layers, d)
	}
	wc := WasmConfig{Architecture: "wasm", OS: "wasip1"}
	for _, l := range layers {
		wc.LayerDigests = append(wc.LayerDigests, l.Digest.String())
	}
	var err error
	if a.ConfigBlob, err = json.Marshal(wc); err != nil {
		return nil, err
	}
	a.ConfigDesc = descriptor(MediaTypeConfig, a.ConfigBlob)
	m := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: MediaTypeManifest,
		Config:    a.ConfigDesc,
		Layers:    layers,
	}
	if a.Manifest, err = json.Marshal(m); err != nil {
		return nil, err
	}
	a.ManifestDesc = descriptor(MediaTypeManifest, a.Manifest)
	a.Digest = a.ManifestDesc.Digest
	return a, nil
}

// ParseDigest reads a SHA-256 digest in the one form castellan makes and
// accepts: "sha256:" and 64 lowercase hex digits.
func ParseDigest(s string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	h, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(h) != 2*sha256.Size {
		return sum, errors.New("not sha256: and 64 hex digits")
	}
	if _, err := hex.Decode(sum[:], []byte(h)); err != nil || strings.ToLower(h) != h {
		return sum, errors.New("not sha256: and 64 lowercase hex digits")
	}
	return sum, nil
}

func descriptor(mediaType string, b []byte) ocispec.Descriptor {
	sum := sha256.Sum256(b)
	return ocispec.Descriptor{
		MediaType: mediaType,
		Digest:    digest.NewDigestFromBytes(digest.SHA256, sum[:]),
		Size:      int64(len(b)),
	}
}

// AnnotationWorkloadDigest names, on an image form's manifest, the digest
// of the workload it holds (the artifact's, which the image form's own
// digest is not).
const AnnotationWorkloadDigest = "dev.castellan.workload.digest"

// Image is a workload in the form containerd runs (runwasi's "OCI image
// with Wasm layers"): an OCI image manifest with an OCI image config
// (os wasip1, architecture wasm, no root filesystem) over the artifact's
// own layers. containerd 1.6.25+ and 1.7.7+ pull and start such an image
// and leave its Wasm layer to the runtime; their image code refuses the
// artifact's Wasm config media type. The workload's digest stays the
// artifact's: a runtime computes it from the layers (New), and the
// manifest names it in AnnotationWorkloadDigest.
type Image struct {
	Config, Manifest         []byte
	ConfigDesc, ManifestDesc ocispec.Descriptor
	Layers                   []ocispec.Descriptor
}

// Image builds the image form of a. The same artifact always gives the
// same bytes.
func (a *Artifact) Image() (*Image, error) {
	img := &Image{Layers: []ocispec.Descriptor{a.WasmDesc}}
	if a.TOMLDesc != nil {
		img.Layers = append(img.Layers, *a.TOMLDesc)
	}
	var err error
	cfg := ocispec.Image{
		Platform: ocispec.Platform{Architecture: "wasm", OS: "wasip1"},
		Config:   ocispec.ImageConfig{Entrypoint: []string{"main.wasm"}},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{}},
	}
	if img.Config, err = json.Marshal(cfg); err != nil {
		return nil, err
	}
	img.ConfigDesc = descriptor(ocispec.MediaTypeImageConfig, img.Config)
	m := ocispec.Manifest{
		Versioned:   specs.Versioned{SchemaVersion: 2},
		MediaType:   ocispec.MediaTypeImageManifest,
		Config:      img.ConfigDesc,
		Layers:      img.Layers,
		Annotations: map[string]string{AnnotationWorkloadDigest: a.Digest.String()},
	}
	if img.Manifest, err = json.Marshal(m); err != nil {
		return nil, err
	}
	img.ManifestDesc = descriptor(ocispec.MediaTypeImageManifest, img.Manifest)
	return img, nil
}
