package workload

import (
	"bytes"
	"testing"
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
