package packages

import (
	"context"
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

	"github.com/google/go-containerregistry/pkg/registry"
)

// TestCredentialsStayWithTheirRegistry: a registry that needs credentials
// redirects a blob to another origin (as registries do, to a CDN). The other
// origin gets no credentials: not in the redirected request, not when it
// answers 401 asking for Basic credentials, not when it names itself as a
// token realm. The blob it serves is still verified.
func TestCredentialsStayWithTheirRegistry(t *testing.T) {
	var mu sync.Mutex
	var leaked []string
	var blob []byte
	mode := "serve"
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if a := r.Header.Get("Authorization"); a != "" {
			leaked = append(leaked, r.URL.Path+": "+a)
		}
		switch {
		case r.URL.Path == "/token":
			w.Write([]byte(`{"token":"t"}`))
		case mode == "basic":
			w.Header().Set("WWW-Authenticate", `Basic realm="cdn"`)
			w.WriteHeader(http.StatusUnauthorized)
		case mode == "bearer":
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="cdn"`, r.Host))
			w.WriteHeader(http.StatusUnauthorized)
		default:
			w.Write(blob)
		}
	}))
	defer other.Close()
	// Another port of the same host name is another origin: net/http alone
	// would forward credentials there (it compares host names only).
	otherURL := other.URL

	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	var redirect string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "alice" || p != "s3cret" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		mu.Lock()
		rd := redirect
		mu.Unlock()
		if rd != "" && r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, rd) {
			http.Redirect(w, r, otherURL+"/cdn"+rd, http.StatusTemporaryRedirect)
			return
		}
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
	ref := host + "/cdn/app:v1"
	art := publish(t, ref, module(90), nil)
	mu.Lock()
	redirect, blob = "/blobs/"+art.WasmDesc.Digest.String(), art.Wasm
	mu.Unlock()

	for _, m := range []string{"serve", "basic", "bearer"} {
		t.Run(m, func(t *testing.T) {
			mu.Lock()
			mode, leaked = m, nil
			mu.Unlock()
			_, err := newStore(t, Options{}).Pull(context.Background(), ref)
			if (err == nil) != (m == "serve") {
				t.Fatalf("pull through a redirect answered %q: %v", m, err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(leaked) > 0 {
				t.Fatalf("the other host got credentials: %q", leaked)
			}
		})
	}
	t.Run("tampered", func(t *testing.T) {
		mu.Lock()
		mode, blob = "serve", append([]byte{}, art.Wasm...)
		blob[len(blob)-1] ^= 1
		mu.Unlock()
		if _, err := newStore(t, Options{}).Pull(context.Background(), ref); err == nil || !strings.Contains(err.Error(), "does not match") {
			t.Fatalf("a tampered blob from the redirect target: %v", err)
		}
	})
}
