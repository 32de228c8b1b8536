package packages

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/errdef"

	"github.com/castellan-dev/castellan/internal/workload"
)

const d1 = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"

func TestParseRef(t *testing.T) {
	cases := []struct {
		in   string
		want Ref
		name string
	}{
		{"hello", Ref{Repository: "hello", Tag: "latest"}, "hello:latest"},
		{"hello:1.0", Ref{Repository: "hello", Tag: "1.0"}, "hello:1.0"},
		{"org/hello:1.0", Ref{Repository: "org/hello", Tag: "1.0"}, "org/hello:1.0"},
		{"hello@" + d1, Ref{Repository: "hello", Digest: d1}, ""},
		{"hello:1.0@" + d1, Ref{Repository: "hello", Digest: d1}, ""},
		{"registry.example.com/org/hello:1.0", Ref{Registry: "registry.example.com", Repository: "org/hello", Tag: "1.0"}, "registry.example.com/org/hello:1.0"},
		{"127.0.0.1:5000/hello", Ref{Registry: "127.0.0.1:5000", Repository: "hello", Tag: "latest"}, "127.0.0.1:5000/hello:latest"},
		{"localhost/hello@" + d1, Ref{Registry: "localhost", Repository: "hello", Digest: d1}, ""},
		{"oci-layout:./out@" + d1, Ref{Layout: "./out", Digest: d1}, ""},
		{"oci-layout:/tmp/a:b/out:v2", Ref{Layout: "/tmp/a:b/out", Tag: "v2"}, "oci-layout:/tmp/a:b/out:v2"},
	}
	for _, c := range cases {
		got, err := ParseRef(c.in)
		if err != nil || got != c.want || got.Name() != c.name {
			t.Errorf("ParseRef(%q) = %+v (name %q), %v; want %+v (name %q)", c.in, got, got.Name(), err, c.want, c.name)
			continue
		}
		again, err := ParseRef(got.String())
		if err != nil || again != got {
			t.Errorf("ParseRef(%q).String() = %q does not parse back: %+v %v", c.in, got.String(), again, err)
		}
	}
	bad := []string{
		"", "Hello", "hello:", "hello:bad tag", "hello@sha256:abc", "hello@md5:" + strings.Repeat("0", 32),
		"hello@sha512:" + strings.Repeat("0", 128), "registry.example.com/", "oci-layout:", "oci-layout:dir",
		"oci-layout:@" + d1, "oci-layout:dir@sha256:zz", "a//b", "x\ny",
	}
	for _, s := range bad {
		if r, err := ParseRef(s); err == nil {
			t.Errorf("ParseRef(%q) = %+v, want an error", s, r)
		} else if strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseRef(%q): error on several lines: %q", s, err)
		}
	}
}

func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"hello:1", "a/b@" + d1, "127.0.0.1:1/x:y", "oci-layout:d@" + d1, "oci-layout:d:t"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRef(s)
		if err != nil {
			return
		}
		again, err := ParseRef(r.String())
		if err != nil || again != r {
			t.Fatalf("%q -> %+v -> %q -> %+v, %v", s, r, r.String(), again, err)
		}
	})
}

// mapFetcher serves blobs from memory, for fuzzing the manifest checks.
type mapFetcher map[digest.Digest][]byte

func (m mapFetcher) Fetch(_ context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	b, ok := m[d.Digest]
	if !ok {
		return nil, errdef.ErrNotFound
	}
	return nopCloser{strings.NewReader(string(b))}, nil
}

// FuzzFetchManifest feeds arbitrary manifest bytes (what an untrusted
// registry sends) to the checks: they must never panic, never allocate from
// an unchecked size, and accept only a manifest that is exactly
// workload.New's output for its layers.
func FuzzFetchManifest(f *testing.F) {
	wasm := module(1)
	art, _ := workload.New(wasm, []byte("args = []\n"))
	blobs := mapFetcher{art.WasmDesc.Digest: wasm, art.TOMLDesc.Digest: art.Config, art.ConfigDesc.Digest: art.ConfigBlob}
	f.Add(art.Manifest)
	var m ocispec.Manifest
	json.Unmarshal(art.Manifest, &m)
	m.Layers[0].Size = 1 << 62
	b, _ := json.Marshal(m)
	f.Add(b)
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}`))
	s := &Store{Options: Options{MaxLayerSize: 1 << 20}}
	f.Fuzz(func(t *testing.T, manifest []byte) {
		fetch := mapFetcher{}
		for k, v := range blobs {
			fetch[k] = v
		}
		d := digest.FromBytes(manifest)
		fetch[d] = manifest
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: int64(len(manifest))}
		got, err := s.fetchArtifact(context.Background(), fetch, "fuzz", Ref{Repository: "fuzz", Tag: "x"}, desc)
		if err != nil {
			if !errors.Is(err, ErrNotWorkload) && !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrMismatch) && !errors.Is(err, ErrNotFound) && !strings.Contains(err.Error(), "workload:") {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		if got.Digest != d || string(got.Manifest) != string(manifest) {
			t.Fatalf("accepted a manifest that is not canonical: %s", manifest)
		}
	})
}

type nopCloser struct{ *strings.Reader }

func (nopCloser) Close() error { return nil }
