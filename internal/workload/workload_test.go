package workload

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The digest of a fixed input is pinned: changing the manifest layout
// changes every workload's identity, so it must be a deliberate act.
func TestGoldenDigest(t *testing.T) {
	wasm := []byte("\x00asm\x01\x00\x00\x00")
	tests := []struct {
		name   string
		config []byte
		want   string
	}{
		{"no config", nil, "sha256:81b5e3c266ef5da36063e7f98304b2fb02de5e23c5cb9ea3dadcf2f1f9de3f18"},
		{"config", []byte("args = [\"a\"]\n"), "sha256:2c72bc513ab08108cce697a6c23574e112a6b21cc4c740631aff293b8fc36e26"},
	}
	for _, tt := range tests {
		a, err := New(wasm, tt.config)
		if err != nil {
			t.Fatal(err)
		}
		if a.Digest.String() != tt.want {
			t.Errorf("%s: digest %s, want %s", tt.name, a.Digest, tt.want)
		}
	}
}

func TestDeterministicAndDistinct(t *testing.T) {
	wasm := []byte("\x00asm\x01\x00\x00\x00")
	a1, _ := New(wasm, []byte("x=1"))
	a2, _ := New(bytes.Clone(wasm), []byte("x=1"))
	if a1.Digest != a2.Digest || !bytes.Equal(a1.Manifest, a2.Manifest) {
		t.Fatal("same inputs gave different manifests")
	}
	a3, _ := New(wasm, []byte("x=2"))
	a4, _ := New(wasm, nil)
	a5, _ := New(wasm, []byte{})
	if a3.Digest == a1.Digest || a4.Digest == a1.Digest || a4.Digest == a5.Digest {
		t.Fatal("different inputs gave the same digest")
	}
	if _, err := New(nil, nil); err == nil {
		t.Fatal("empty module accepted")
	}
}

// TestImageForm: the image form holds the artifact's layers under an OCI
// image config with no root filesystem, names the workload digest, and is
// the same bytes every time.
func TestImageForm(t *testing.T) {
	a, err := New([]byte("\x00asm\x01\x00\x00\x00"), []byte("[[files]]\nkind = \"stdout\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := a.Image()
	if err != nil {
		t.Fatal(err)
	}
	again, _ := a.Image()
	if string(img.Manifest) != string(again.Manifest) || img.ManifestDesc.Digest == a.Digest {
		t.Fatalf("image form not deterministic, or its digest is the artifact's")
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(img.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	if m.MediaType != ocispec.MediaTypeImageManifest || m.Config.MediaType != ocispec.MediaTypeImageConfig ||
		len(m.Layers) != 2 || m.Layers[0].Digest != a.WasmDesc.Digest || m.Layers[1].Digest != a.TOMLDesc.Digest ||
		m.Annotations[AnnotationWorkloadDigest] != a.Digest.String() {
		t.Fatalf("image manifest %s", img.Manifest)
	}
	var c ocispec.Image
	if err := json.Unmarshal(img.Config, &c); err != nil {
		t.Fatal(err)
	}
	if c.OS != "wasip1" || c.Architecture != "wasm" || c.RootFS.Type != "layers" || c.RootFS.DiffIDs == nil || len(c.RootFS.DiffIDs) != 0 {
		t.Fatalf("image config %s", img.Config)
	}
	if !strings.Contains(string(img.Config), `"diff_ids":[]`) {
		t.Fatalf("image config %s: diff_ids must be an empty list, not absent", img.Config)
	}
}
