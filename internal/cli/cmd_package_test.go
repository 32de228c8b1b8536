package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/castellan-dev/castellan/internal/fixtures"
)

// pkgRun runs the castellan command line in-process.
func pkgRun(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Main(args, strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), code
}

func pkgMustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errs, code := pkgRun(t, args...)
	if code != 0 {
		t.Fatalf("castellan %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// pkgWantFail checks the exit code and that stderr has one error line matching re.
func pkgWantFail(t *testing.T, code int, re string, args ...string) string {
	t.Helper()
	out, errs, got := pkgRun(t, args...)
	if got != code {
		t.Fatalf("castellan %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), got, code, out, errs)
	}
	first, _, _ := strings.Cut(errs, "\n")
	if !regexp.MustCompile(re).MatchString(first) || !strings.HasPrefix(first, "castellan: error: ") {
		t.Fatalf("castellan %s: stderr %q does not match %q", strings.Join(args, " "), errs, re)
	}
	if strings.Contains(errs, "goroutine") {
		t.Fatalf("castellan %s: panic: %s", strings.Join(args, " "), errs)
	}
	return errs
}

// pkgCorruptible is the in-memory blob store of the test registry, with
// blobs that can be made to serve wrong bytes.
type pkgCorruptible struct {
	inner registry.BlobHandler
	mu    sync.Mutex
	bad   map[string]bool
}

func (c *pkgCorruptible) Get(ctx context.Context, repo string, h v1.Hash) (io.ReadCloser, error) {
	rc, err := c.inner.Get(ctx, repo, h)
	c.mu.Lock()
	bad := c.bad[h.String()]
	c.mu.Unlock()
	if err != nil || !bad {
		return rc, err
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return nil, err
	}
	b[len(b)/2] ^= 0x55
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (c *pkgCorruptible) Stat(ctx context.Context, repo string, h v1.Hash) (int64, error) {
	return c.inner.(registry.BlobStatHandler).Stat(ctx, repo, h)
}

func (c *pkgCorruptible) Put(ctx context.Context, repo string, h v1.Hash, rc io.ReadCloser) error {
	return c.inner.(registry.BlobPutHandler).Put(ctx, repo, h, rc)
}

type pkgWorkdir struct {
	dir, wasm, cfg string
}

func pkgSetup(t *testing.T) pkgWorkdir {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("CASTELLAN_STORE", filepath.Join(dir, "store"))
	t.Setenv("DOCKER_CONFIG", filepath.Join(dir, "docker"))
	t.Setenv("CASTELLAN_CACHE_DIR", filepath.Join(dir, "cache"))
	wasm := filepath.Join(dir, "hello.wasm")
	b, err := os.ReadFile(fixtures.Go(t, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wasm, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "app.toml")
	toml := "args = [\"from-config\"]\n\n[env]\nGREETING = \"hi\"\n\n[[files]]\nkind = \"stdin\"\n\n[[files]]\nkind = \"stdout\"\n\n[[files]]\nkind = \"stderr\"\n"
	if err := os.WriteFile(cfg, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return pkgWorkdir{dir: dir, wasm: wasm, cfg: cfg}
}

var pkgDigestLine = regexp.MustCompile(`^sha256:[0-9a-f]{64}\n$`)

func TestPackageBuildInspectLs(t *testing.T) {
	w := pkgSetup(t)
	out := pkgMustRun(t, "package", "build", "-c", w.cfg, "-t", "hello:1.0", w.wasm)
	if !pkgDigestLine.MatchString(out) {
		t.Fatalf("build printed %q", out)
	}
	dig := strings.TrimSpace(out)
	// pkgRun, package build and deploy agree on the digest.
	if got := strings.TrimSpace(pkgMustRun(t, "run", "--digest", "-c", w.cfg, w.wasm)); got != dig {
		t.Errorf("run --digest %s, package build %s", got, dig)
	}
	if got := strings.TrimSpace(pkgMustRun(t, "deploy", "--digest", "hello:1.0")); got != dig {
		t.Errorf("deploy --digest %s, package build %s", got, dig)
	}
	// A second build of the same files gives the same digest.
	if again := strings.TrimSpace(pkgMustRun(t, "package", "build", "-c", w.cfg, w.wasm)); again != dig {
		t.Errorf("rebuild gave %s, first %s", again, dig)
	}

	out = pkgMustRun(t, "package", "inspect", "hello:1.0")
	for _, want := range []string{"digest:    " + dig, "names:     hello:1.0", "  wasm ", "  toml ", "args:      main.wasm from-config", "env:       GREETING=hi", "  1  stdout"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	var js struct {
		Digest      string
		Wasm        struct{ Size int64 }
		Descriptors []struct{ Kind string }
	}
	if err := json.Unmarshal([]byte(pkgMustRun(t, "package", "inspect", "--json", "hello:1.0")), &js); err != nil || js.Digest != dig || js.Wasm.Size == 0 || len(js.Descriptors) != 3 {
		t.Errorf("inspect --json: %+v %v", js, err)
	}

	out = pkgMustRun(t, "package", "ls")
	if !strings.Contains(out, "hello:1.0") || !strings.Contains(out, dig[:19]) {
		t.Errorf("ls:\n%s", out)
	}
	var list []struct{ Digest string }
	if err := json.Unmarshal([]byte(pkgMustRun(t, "package", "ls", "--json")), &list); err != nil || len(list) != 1 || list[0].Digest != dig {
		t.Errorf("ls --json: %+v %v", list, err)
	}
	// An empty or missing store lists nothing.
	if out := pkgMustRun(t, "package", "ls", "--store", filepath.Join(w.dir, "none")); strings.Count(out, "\n") != 1 {
		t.Errorf("ls of a missing store:\n%s", out)
	}
}

func TestPackageBadInput(t *testing.T) {
	w := pkgSetup(t)
	bad := filepath.Join(w.dir, "bad.toml")
	os.WriteFile(bad, []byte("[[files]]\nkind = \"teleport\"\n"), 0o644)
	notwasm := filepath.Join(w.dir, "x.wasm")
	os.WriteFile(notwasm, []byte("#!/bin/sh\n"), 0o644)
	junk := filepath.Join(w.dir, "junk")
	os.MkdirAll(junk, 0o755)
	os.WriteFile(filepath.Join(junk, "notes.txt"), []byte("mine"), 0o644)

	pkgWantFail(t, 2, `package build: want one module file, got 0`, "package", "build")
	pkgWantFail(t, 1, `missing.wasm: no such file`, "package", "build", filepath.Join(w.dir, "missing.wasm"))
	pkgWantFail(t, 1, `not a WebAssembly module`, "package", "build", notwasm)
	pkgWantFail(t, 1, `bad.toml:2: `, "package", "build", "-c", bad, w.wasm)
	pkgWantFail(t, 2, `^castellan: error: -t: `, "package", "build", "-t", "Bad Name", w.wasm)
	pkgWantFail(t, 2, `--max-layer-size`, "package", "build", "--max-layer-size", "huge", w.wasm)
	errs := pkgWantFail(t, 1, `is over the Wasm layer limit of 1024 bytes`, "package", "build", "--max-layer-size", "1KiB", w.wasm)
	if !strings.Contains(errs, "castellan: hint: raise the Wasm layer limit with --max-layer-size") {
		t.Errorf("no hint naming --max-layer-size: %s", errs)
	}
	pkgWantFail(t, 1, `not empty and not an OCI image layout`, "package", "build", "-o", junk, w.wasm)
	pkgWantFail(t, 2, `flag provided but not defined`, "package", "build", "--frob", w.wasm)

	errs = pkgWantFail(t, 1, `hello:9: no such package`, "package", "inspect", "hello:9")
	if !strings.Contains(errs, "castellan: hint: ") {
		t.Errorf("no hint for a missing package: %s", errs)
	}
	pkgWantFail(t, 2, `package inspect: want one package reference, got 0`, "package", "inspect")
	pkgWantFail(t, 2, `invalid digest|not a valid digest`, "package", "inspect", "hello@sha256:1234")
	pkgWantFail(t, 2, `takes no arguments`, "package", "ls", "extra")
	pkgWantFail(t, 2, `not a registry reference`, "package", "push", "hello:1")
	pkgWantFail(t, 2, `want REF`, "package", "push")
	pkgWantFail(t, 2, `not a registry reference`, "package", "pull", "hello:1")
	pkgWantFail(t, 2, `package pull: want one registry reference, got 2`, "package", "pull", "a", "b")
	pkgWantFail(t, 2, `deploy: want one package reference, got 0`, "deploy")
	pkgWantFail(t, 2, `-c does not apply`, "deploy", "-c", w.cfg, "hello:1")
	pkgWantFail(t, 2, `want oci-layout:DIR@sha256`, "deploy", "oci-layout:"+w.dir)
	pkgWantFail(t, 1, `not an OCI image layout`, "deploy", "oci-layout:"+w.dir+"@sha256:"+strings.Repeat("ab", 32))
	pkgWantFail(t, 1, `no such package`, "deploy", "nothing:here")
}

func TestPackageRegistryRoundTripAndDeploy(t *testing.T) {
	w := pkgSetup(t)
	blobs := &pkgCorruptible{inner: registry.NewInMemoryBlobHandler(), bad: map[string]bool{}}
	srv := httptest.NewServer(registry.New(registry.WithBlobHandler(blobs), registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ref := host + "/apps/hello:v1"

	dig := strings.TrimSpace(pkgMustRun(t, "package", "build", "-c", w.cfg, "-t", ref, w.wasm))
	// Without --plain-http the client speaks https to an http registry.
	errs := pkgWantFail(t, 1, `push`, "package", "push", ref)
	t.Logf("https to http: %s", errs)
	if !strings.Contains(errs, "--plain-http") {
		t.Errorf("no --plain-http hint: %s", errs)
	}
	if got := strings.TrimSpace(pkgMustRun(t, "package", "push", "--plain-http", ref)); got != dig {
		t.Errorf("push printed %s, build %s", got, dig)
	}
	// Push of a local name to a registry name.
	pkgMustRun(t, "package", "build", "-c", w.cfg, "-t", "local:1", w.wasm)
	if got := strings.TrimSpace(pkgMustRun(t, "package", "push", "--plain-http", "local:1", host+"/apps/other:v1")); got != dig {
		t.Errorf("push local:1 printed %s", got)
	}

	// A fresh store pulls the same digest.
	t.Setenv("CASTELLAN_STORE", filepath.Join(w.dir, "store2"))
	if got := strings.TrimSpace(pkgMustRun(t, "package", "pull", "--plain-http", ref)); got != dig {
		t.Errorf("pull printed %s, push %s", got, dig)
	}
	if out := pkgMustRun(t, "package", "inspect", "--plain-http", host+"/apps/other:v1"); !strings.Contains(out, "source:    registry "+host) {
		t.Errorf("remote inspect:\n%s", out)
	}

	// deploy runs it, with arguments after --.
	t.Setenv("CASTELLAN_STORE", filepath.Join(w.dir, "store3"))
	out, errs, code := pkgRun(t, "deploy", "--plain-http", ref, "--", "extra")
	if code != 0 || !strings.Contains(out, "hello from a keep") || !strings.Contains(out, "arg[1]=from-config") || !strings.Contains(out, "arg[2]=extra") || !strings.Contains(out, "env GREETING=hi") {
		t.Fatalf("deploy: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	// Pinned digest.
	if got := strings.TrimSpace(pkgMustRun(t, "deploy", "--digest", "--plain-http", host+"/apps/hello@"+dig)); got != dig {
		t.Errorf("pinned deploy digest %s", got)
	}
	pkgWantFail(t, 1, `not found|no such|missing`, "deploy", "--plain-http", host+"/apps/hello@sha256:"+strings.Repeat("0", 64))

	// A blob changed in the registry is caught at deploy, and nothing runs.
	t.Setenv("CASTELLAN_STORE", filepath.Join(w.dir, "store4"))
	var info struct{ Wasm struct{ Digest string } }
	if err := json.Unmarshal([]byte(pkgMustRun(t, "package", "inspect", "--json", "--plain-http", ref)), &info); err != nil || info.Wasm.Digest == "" {
		t.Fatalf("inspect --json: %v", err)
	}
	blobs.mu.Lock()
	blobs.bad[info.Wasm.Digest] = true
	blobs.mu.Unlock()
	out, errs, code = pkgRun(t, "deploy", "--plain-http", ref)
	t.Logf("tampered deploy: %s", errs)
	if code != 1 || strings.Contains(out, "hello from a keep") || !strings.Contains(errs, "does not match its digest") || !strings.Contains(errs, info.Wasm.Digest) {
		t.Errorf("tampered deploy: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
}

func TestDeployOCILayoutOffline(t *testing.T) {
	w := pkgSetup(t)
	out := filepath.Join(w.dir, "out")
	dig := strings.TrimSpace(pkgMustRun(t, "package", "build", "-c", w.cfg, "-o", out, w.wasm))
	// The local store is not needed, nor created.
	t.Setenv("CASTELLAN_STORE", filepath.Join(w.dir, "never"))
	stdout := pkgMustRun(t, "deploy", "oci-layout:"+out+"@"+dig)
	if !strings.Contains(stdout, "hello from a keep") {
		t.Errorf("deploy oci-layout: %s", stdout)
	}
	if _, err := os.Stat(filepath.Join(w.dir, "never")); err == nil {
		t.Error("an offline deploy created the local store")
	}
	pkgWantFail(t, 1, `no such package|not in`, "deploy", "oci-layout:"+out+"@sha256:"+strings.Repeat("1", 64))
}

func TestTagMovedIsReported(t *testing.T) {
	w := pkgSetup(t)
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/moving/app:stable"
	pkgMustRun(t, "package", "build", "-t", ref, w.wasm)
	pkgMustRun(t, "package", "push", "--plain-http", ref)
	t.Setenv("CASTELLAN_STORE", filepath.Join(w.dir, "puller"))
	old := strings.TrimSpace(pkgMustRun(t, "package", "pull", "--plain-http", ref))

	t.Setenv("CASTELLAN_STORE", filepath.Join(w.dir, "store"))
	next := strings.TrimSpace(pkgMustRun(t, "package", "build", "-c", w.cfg, "-t", ref, w.wasm))
	pkgMustRun(t, "package", "push", "--plain-http", ref)

	t.Setenv("CASTELLAN_STORE", filepath.Join(w.dir, "puller"))
	_, errs, code := pkgRun(t, "package", "pull", "--plain-http", ref)
	want := "castellan: warning: " + ref + ": tag moved from " + old + " to " + next
	if code != 0 || !strings.Contains(errs, want) {
		t.Errorf("exit %d, stderr %q, want %q", code, errs, want)
	}
}

func TestDeployRefusesHostFoldersUnlessAllowed(t *testing.T) {
	w := pkgSetup(t)
	data := filepath.Join(w.dir, "data")
	os.MkdirAll(data, 0o755)
	cfg := filepath.Join(w.dir, "dir.toml")
	toml := "[[files]]\nkind = \"stdin\"\n[[files]]\nkind = \"stdout\"\n[[files]]\nkind = \"stderr\"\n[[files]]\nkind = \"dir\"\nname = \"/data\"\npath = " + pkgQuote(data) + "\n"
	if err := os.WriteFile(cfg, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	pkgMustRun(t, "package", "build", "-c", cfg, "-t", "withdir:1", w.wasm)
	errs := pkgWantFail(t, 1, `maps host folders that were not allowed: `+regexp.QuoteMeta(data)+` \(as /data\)`, "deploy", "withdir:1")
	if !strings.Contains(errs, "--allow-dir") {
		t.Errorf("no hint: %s", errs)
	}
	pkgWantFail(t, 1, `not allowed`, "deploy", "--allow-dir", "/elsewhere", "withdir:1")
	for _, allow := range []string{data, "all"} {
		out, errs, code := pkgRun(t, "deploy", "--allow-dir", allow, "withdir:1")
		if code != 0 || !strings.Contains(out, "env FD_NAMES=stdin:stdout:stderr:/data") {
			t.Errorf("--allow-dir %s: exit %d\nstdout: %s\nstderr: %s", allow, code, out, errs)
		}
	}
}

func pkgQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
