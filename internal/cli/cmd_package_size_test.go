package cli

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/castellan-dev/castellan/internal/workload"
)

// TestPackageSizeErrors: each size refusal names the limit that applies,
// and the hint names the flag that raises it, or says that none does: a
// 100 MB manifest is not blamed on --max-layer-size.
func TestPackageSizeErrors(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	blob := func(mt string, size int64) ocispec.Descriptor {
		return ocispec.Descriptor{MediaType: mt, Digest: digest.FromString(fmt.Sprint(mt, size)), Size: size}
	}
	manifest := func(cfg, wasm ocispec.Descriptor) []byte {
		b, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
			Config: cfg, Layers: []ocispec.Descriptor{wasm}})
		return b
	}
	manifests := map[string][]byte{
		"config": manifest(blob(workload.MediaTypeConfig, 2<<20), blob(workload.MediaTypeWasm, 100)),
		"layer":  manifest(blob(workload.MediaTypeConfig, 100), blob(workload.MediaTypeWasm, 2048)),
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		name, _, ok := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v2/"), "/manifests/") // by tag or digest
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
		if name == "manifest" { // 100 MB, refused from its size
			w.Header().Set("Docker-Content-Digest", digest.FromString("big").String())
			w.Header().Set("Content-Length", "104857600")
			return
		}
		b := manifests[name]
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(b).String())
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		if r.Method == http.MethodGet {
			w.Write(b)
		}
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	store := t.TempDir()
	for _, c := range []struct {
		repo, err, hint string
	}{
		{"manifest", `manifest sha256:[0-9a-f]{64} is 104857600 bytes, over the manifest limit of 4194304 bytes`, "the manifest limit (4194304 bytes, the OCI distribution spec's) is fixed: no flag raises it"},
		{"config", `application/vnd.wasm.config.v0\+json blob sha256:[0-9a-f]{64} is 2097152 bytes, over the config limit of 1048576 bytes`, "the config limit (1048576 bytes, for the config JSON and the TOML layer) is fixed: no flag raises it"},
		{"layer", `application/wasm blob sha256:[0-9a-f]{64} is 2048 bytes, over the Wasm layer limit of 1024 bytes`, "raise the Wasm layer limit with --max-layer-size"},
	} {
		errs := pkgWantFail(t, 1, c.err, "package", "pull", "--plain-http", "--store", store, "--max-layer-size", "1KiB", host+"/"+c.repo+":v1")
		if !strings.Contains(errs, "castellan: hint: "+c.hint) {
			t.Errorf("%s: hint does not say %q:\n%s", c.repo, c.hint, errs)
		}
		if c.repo != "layer" && strings.Contains(errs, "--max-layer-size") {
			t.Errorf("%s: --max-layer-size named for a limit it cannot raise:\n%s", c.repo, errs)
		}
	}
}
