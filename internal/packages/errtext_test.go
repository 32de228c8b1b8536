package packages

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"unicode"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/castellan-dev/castellan/internal/workload"
)

// hostileText is what a hostile registry puts in its error messages: a
// line that erases the terminal's line and prints a fake success, a bell,
// a C1 CSI, a right-to-left override and invalid UTF-8, then much more.
var hostileText = "denied\r\x1b[2K\x1b[1Gpulled OK\n\x07\u009b31m\u202etxt.exe\xff" + strings.Repeat("A", 6000)

// checkClean fails unless msg is safe to print on a terminal: no control
// character, no bidi mark, bounded.
func checkClean(t *testing.T, what, msg string) {
	t.Helper()
	for _, r := range msg {
		if unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) {
			t.Fatalf("%s: the error carries %U from the registry: %.300q", what, r, msg)
		}
	}
	if len(msg) > maxErrorText+1024 {
		t.Fatalf("%s: the error is %d bytes long", what, len(msg))
	}
}

// TestRegistryErrorTextIsCleaned: the words of a registry's error responses
// reach the user's terminal escaped and bounded, whether a pull or a push
// fails; errors.Is still sees the wrapped errors.
func TestRegistryErrorTextIsCleaned(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t)
	art := publish(t, reg.host+"/t/words:v1", module(50), nil)
	body, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": "DENIED", "message": hostileText}}})
	deny := func(match func(r *http.Request) bool) {
		reg.mu.Lock()
		reg.intercept = func(w http.ResponseWriter, r *http.Request) bool {
			if !match(r) {
				return false
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			w.Write(body)
			return true
		}
		reg.mu.Unlock()
	}
	t.Cleanup(func() { reg.mu.Lock(); reg.intercept = nil; reg.mu.Unlock() })

	t.Run("pull", func(t *testing.T) {
		deny(func(r *http.Request) bool {
			return strings.HasSuffix(r.URL.Path, "/blobs/"+art.WasmDesc.Digest.String())
		})
		_, err := newStore(t, Options{}).Fetch(ctx, reg.host+"/t/words:v1")
		if err == nil {
			t.Fatal("a denied blob was fetched")
		}
		checkClean(t, "pull", err.Error())
		if !strings.Contains(err.Error(), `pulled OK\x0a`) || !strings.Contains(err.Error(), "wasm "+art.WasmDesc.Digest.String()) {
			t.Errorf("the error lost its content: %.300s", err)
		}
	})
	t.Run("token server", func(t *testing.T) {
		// The registry asks for a token from a realm whose answer is
		// hostile: the token server's words reach the error too.
		reg.mu.Lock()
		reg.intercept = func(w http.ResponseWriter, r *http.Request) bool {
			switch {
			case r.URL.Path == "/token":
				w.WriteHeader(http.StatusForbidden)
				w.Write(body)
			case strings.Contains(r.URL.Path, "/manifests/"):
				w.Header().Set("Www-Authenticate", `Bearer realm="http://`+reg.host+`/token",service="reg"`)
				w.WriteHeader(http.StatusUnauthorized)
			default:
				return false
			}
			return true
		}
		reg.mu.Unlock()
		_, err := newStore(t, Options{}).Fetch(ctx, reg.host+"/t/words:v1")
		if err == nil {
			t.Fatal("a denied manifest was resolved")
		}
		checkClean(t, "token server", err.Error())
		if !strings.Contains(err.Error(), `pulled OK\x0a`) {
			t.Errorf("the error lost its content: %.300s", err)
		}
	})
	t.Run("push", func(t *testing.T) {
		deny(func(r *http.Request) bool { return r.Method == http.MethodPost || r.Method == http.MethodPut })
		s := newStore(t, Options{})
		a, err := s.Build(module(51), nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Tag(a.Digest, reg.host+"/t/pushed:v1"); err != nil {
			t.Fatal(err)
		}
		_, err = s.Push(ctx, reg.host+"/t/pushed:v1", "")
		if err == nil {
			t.Fatal("a denied push succeeded")
		}
		checkClean(t, "push", err.Error())
	})
	t.Run("annotation of an image form", func(t *testing.T) {
		reg.mu.Lock()
		reg.intercept = nil
		reg.mu.Unlock()
		cfg := []byte("{}")
		m := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
			Config:      desc(ocispec.MediaTypeImageConfig, cfg),
			Layers:      []ocispec.Descriptor{desc(workload.MediaTypeWasm, module(52))},
			Annotations: map[string]string{workload.AnnotationWorkloadDigest: hostileText}}
		pushRaw(t, reg, "t/form", "v1", m, map[digest.Digest][]byte{digest.FromBytes(cfg): cfg, digest.FromBytes(module(52)): module(52)})
		_, err := newStore(t, Options{}).Fetch(ctx, reg.host+"/t/form:v1")
		if !errors.Is(err, ErrNotWorkload) {
			t.Fatalf("an image form was taken for a package: %v", err)
		}
		checkClean(t, "annotation", err.Error())
	})
}

func TestCleanText(t *testing.T) {
	for _, c := range []struct {
		in   string
		max  int
		want string
	}{
		{"plain text: ok", 100, "plain text: ok"},
		{"a\nb\tc\x1b[0m", 100, `a\x0ab\x09c\x1b[0m`},
		{"\u009b\u202e\u2066x", 100, `\x9b\u202e\u2066x`},
		{"bad \xff\xfe utf8, real \uFFFD", 100, `bad \xff\xfe utf8, real ` + "\uFFFD"},
		{"héllo", 100, "héllo"},
		{strings.Repeat("x", 20), 10, strings.Repeat("x", 10) + "... (cut)"},
	} {
		if got := cleanText(c.in, c.max); got != c.want {
			t.Errorf("cleanText(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
